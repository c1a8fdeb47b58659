"""The whole daemon over a real loopback socket, and as a process under SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trading_daemon.broker import OrderRequest, Side
from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon

ALERT = '{"action":"buy","symbol":"MNQ1!","quantity":"1"}'


async def poll_status(
    client: httpx.AsyncClient, limit_s: float = 5.0
) -> dict[str, Any]:
    """GET /status until it shows a position (real time: this test is about sockets)."""
    deadline = trio.current_time() + limit_s
    while True:
        data: dict[str, Any] = (await client.get("/status")).json()
        if data["positions"]:
            return data
        if trio.current_time() > deadline:
            raise AssertionError(f"no position within {limit_s} s; last: {data}")
        await trio.sleep(0.01)


async def test_daemon_end_to_end_over_loopback(tmp_path: Path) -> None:
    """A text/plain alert over TCP is acked 202 and its fill shows in /status."""
    settings = Settings(webhook_port=0, state_dir=tmp_path, paper_prices={"MNQ": 2e4})
    daemon = Daemon(settings)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.run)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            sent = trio.current_time()
            answer = await client.post(
                "/webhook", content=ALERT, headers={"Content-Type": "text/plain"}
            )
            assert answer.status_code == 202
            task_id = answer.json()["id"]

            state = await poll_status(client)
            visible_after = trio.current_time() - sent

            metrics = (await client.get("/metrics")).text
            health = (await client.get("/health")).json()

        daemon.request_stop("test over")

    assert state["positions"][0]["symbol"] == "MNQ"
    assert state["positions"][0]["size"] == 1
    assert any(
        t["id"] == task_id and t["state"] == "done" for t in state["recent_tasks"]
    )
    assert visible_after < 1.0
    assert re.search(
        r'trading_daemon_fills_total\{broker="paper",symbol="MNQ"\} 1\.0', metrics
    )
    assert health["status"] == "healthy"


async def test_daemon_refuses_chunked_body_over_limit(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) over 64 KiB still gets 413, no task."""
    daemon = Daemon(Settings(webhook_port=0, state_dir=tmp_path))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 4096

    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.run)
        async with httpx.AsyncClient() as client:
            big = client.build_request(
                "POST", f"http://127.0.0.1:{port}/webhook", content=chunks()
            )
            # httpx sends generator content chunked, without Content-Length.
            assert "Content-Length" not in big.headers
            response = await client.send(big)
        daemon.request_stop("test over")

    assert response.status_code == 413
    assert "byte limit" in response.json()["error"]
    assert daemon.scheduler.stats.submitted == 4  # the periodic jobs only


def _spawn(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    full_env = {
        **os.environ,
        "WEBHOOK_PORT": "0",
        "TRADING_STATE_DIR": str(tmp_path),
        "TRADING_PAPER_FILL_DELAY": "0.5",
        "TRADING_LOG_LEVEL": "INFO",
        "TRADING_TRADING_HOURS": "always",
        **env,
    }
    full_env.pop("JOURNAL_STREAM", None)
    return subprocess.Popen(
        [sys.executable, "-m", "trading_daemon", "serve"],
        env=full_env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(
    proc: subprocess.Popen[str], pattern: str, limit_s: float
) -> tuple[str, str]:
    """Read stderr lines until ``pattern`` matches; return its group and the text."""
    assert proc.stderr is not None
    deadline = time.monotonic() + limit_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match.group(1), "".join(seen)
    raise AssertionError(f"{pattern!r} not seen; output:\n{''.join(seen)}")


@pytest.mark.slow
def test_daemon_sigterm_during_work_drains_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM while orders are in flight: they finish, the queue drains, exit 0."""
    proc = _spawn(tmp_path)
    try:
        port, early = _read_until(proc, r"daemon\.ready .*port=(\d+)", 20)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            ids = []
            # Five contracts, five lanes: all five orders are in flight at once.
            for index, symbol in enumerate(
                ("MES1!", "MNQ1!", "M2K1!", "MGC1!", "MYM1!")
            ):
                body = json.dumps(
                    {"action": "buy", "symbol": symbol, "quantity": 1, "id": index}
                )
                answer = client.post("/webhook", content=body)
                assert answer.status_code == 202
                ids.append(answer.json()["id"])
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()
    out = early + rest

    assert proc.returncode == 0, out
    assert "daemon.stop_requested reason=SIGTERM" in out
    for task_id in ids:
        assert f"task.completed task_id={task_id}" in out
    stopped = re.search(r"daemon\.stopped completed=(\d+) cancelled=(\d+)", out)
    assert stopped is not None
    assert int(stopped.group(2)) == 0


@pytest.mark.slow
def test_daemon_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    """An invalid variable stops startup with one line naming it and its value."""
    proc = _spawn(tmp_path, TRADING_WORKERS="many")
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "trading-daemon: configuration error: "
        "TRADING_WORKERS must be a whole number, got 'many'"
    ]


async def test_daemon_answers_connection_close_while_stopping(tmp_path: Path) -> None:
    """After a stop request, kept-alive connections get Connection: close."""
    daemon = Daemon(Settings(webhook_port=0, state_dir=tmp_path))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            before = await client.get("/health")
            daemon.request_stop("test")
            during = await client.get("/health")

    assert before.status_code == 200
    assert "close" not in before.headers.get("connection", "")
    assert during.status_code == 503
    assert during.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [("999.1.1.1", "0", "Name or service not known"), ("127.0.0.1", "busy", "in use")],
)
def test_daemon_cannot_listen_is_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    host: str,
    port: str,
    reason: str,
) -> None:
    """A host that does not resolve or a port in use: one startup line, exit 2."""
    import socket

    from trading_daemon.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        if port == "busy":
            port = str(holder.getsockname()[1])
        monkeypatch.setenv("WEBHOOK_HOST", host)
        monkeypatch.setenv("WEBHOOK_PORT", port)
        monkeypatch.setenv("TRADING_STATE_DIR", str(tmp_path))
        code = main(["serve"])
    err = capsys.readouterr().err

    startup = [line for line in err.splitlines() if "startup error" in line]
    assert code == 2
    assert len(startup) == 1
    assert f"cannot listen on {host}:{port}" in startup[0]
    assert reason in startup[0]
    assert "Traceback" not in err


async def test_daemon_status_answers_while_broker_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/status shows the last known positions, marked stale, when the broker stalls."""
    monkeypatch.setattr("trading_daemon.daemon.STATUS_BROKER_WAIT_S", 0.05)
    daemon = Daemon(Settings(state_dir=tmp_path, trading_hours="always"))
    hang = trio.Event()

    async def stalled_positions(*args: Any, **kwargs: Any) -> list[Any]:
        await hang.wait()
        return []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.journal.run)
        daemon.brokers_ready.set()
        await daemon.broker.place_order(OrderRequest("MNQ", Side.BUY, 2, "td-stale"))
        fresh = await daemon.status()
        monkeypatch.setattr(daemon.broker, "positions", stalled_positions)
        with trio.fail_after(5):
            stalled = await daemon.status()
        daemon.journal.close()

    assert fresh["positions_stale"] is False
    assert stalled["positions_stale"] is True
    assert [p["size"] for p in fresh["positions"]] == [2]
    assert stalled["positions"] == fresh["positions"]
