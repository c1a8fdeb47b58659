"""systemd notification: READY, WATCHDOG cadence, STATUS and STOPPING."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from systemd_watchdog.systemd_watchdog import WatchDog

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.notify import Notifier


class RecordingWatchDog(WatchDog):
    """A WatchDog that records messages with trio's clock instead of sending them."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock=sock, addr="/nonexistent/notify")
        self.sent: list[tuple[float, str]] = []

    def _send(self, msg: str) -> None:
        self.sent.append((trio.current_time(), msg.strip()))


async def test_notifier_pings_at_half_the_watchdog_timeout(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With WATCHDOG_USEC=30 s, WATCHDOG=1 and STATUS= go out every 15 s."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unused:
        wd = RecordingWatchDog(unused)
        notifier = Notifier(wd)
        with trio.move_on_after(61):
            await notifier.run(lambda: "3 queued")
        notifier.close()

    pings = [t for t, msg in wd.sent if msg == "WATCHDOG=1"]
    assert pings == [0.0, 15.0, 30.0, 45.0, 60.0]
    assert ("STATUS=3 queued") in [msg for _, msg in wd.sent]


def test_notifier_does_nothing_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET the notifier is disabled and sends nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()

    notifier.ready()
    notifier.stopping()
    notifier.close()

    assert not notifier.enabled
    assert notifier.watchdog_interval is None


async def test_daemon_notifies_ready_watchdog_status_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real NOTIFY_SOCKET: READY=1 after listening, pings, STATUS, STOPPING=1."""
    address = str(tmp_path / "notify.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await sock.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    received: list[str] = []

    async def listen() -> None:
        while True:
            data = await sock.recv(4096)
            received.extend(data.decode().strip().splitlines())

    daemon = Daemon(Settings(webhook_port=0, state_dir=tmp_path / "state"))
    async with trio.open_nursery() as outer:
        outer.start_soon(listen)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            assert port > 0
            # Several 0.1 s ping periods on the real clock; this test is about
            # the socket, so it cannot use the mock clock.
            await trio.sleep(0.45)
            daemon.request_stop("test")
        await trio.sleep(0.05)
        outer.cancel_scope.cancel()
    sock.close()

    assert received[0] == "READY=1"
    assert received.count("WATCHDOG=1") >= 3
    assert any(line.startswith("STATUS=") and "queued" in line for line in received)
    assert "STOPPING=1" in received
    assert received.index("STOPPING=1") > received.index("READY=1")
