"""systemd notification: READY, STATUS, WATCHDOG and STOPPING messages.

Under a ``Type=notify`` unit, systemd waits for READY=1 before it counts the
service as started, so it is sent only once the HTTP socket listens and
recovery is done. With ``WatchdogSec=`` set, systemd restarts the service when
WATCHDOG=1 stops arriving; the pings come from a task in the daemon's own
nursery, so a stalled event loop stops them, which is the point. Outside
systemd (no NOTIFY_SOCKET) every call here does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio
from loguru import logger
from systemd_watchdog.systemd_watchdog import WatchDog

# How often STATUS= is refreshed when there is no watchdog to pace it.
STATUS_INTERVAL_S = 10.0


class Notifier:
    """Talks to systemd's notification socket, if there is one."""

    def __init__(self, watchdog: WatchDog | None = None) -> None:
        self._socket: socket.socket | None = None
        if watchdog is None and os.environ.get("NOTIFY_SOCKET"):
            # Our own socket, so that close() can release it.
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            watchdog = WatchDog(sock=self._socket)
        self._wd = watchdog

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    @property
    def enabled(self) -> bool:
        return self._wd is not None and self._wd.is_enabled

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the watchdog timeout), or None if off."""
        if self._wd is None or not self._wd.is_enabled or self._wd.timeout_td.days >= 1:
            # The package reports 24 h when WATCHDOG_USEC is unset.
            return None
        return self._wd.timeout / 1e6 / 2

    def _send(self, message: str) -> None:
        if self._wd is None or not self._wd.is_enabled:
            return
        try:
            self._wd._send(message)  # the package has no STOPPING helper
        except OSError as exc:
            # systemd gone or socket full: never a reason to stop trading.
            logger.bind(error=str(exc)).warning("notify.failed")

    def ready(self) -> None:
        self._send("READY=1\n")

    def stopping(self) -> None:
        self._send("STOPPING=1\n")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}\n")

    def ping(self) -> None:
        self._send("WATCHDOG=1\n")

    async def run(self, status: Callable[[], str]) -> None:
        """Ping the watchdog and refresh STATUS= until cancelled."""
        if not self.enabled:
            return
        interval = self.watchdog_interval
        while True:
            if interval is not None:
                self.ping()
            self.status(status())
            await trio.sleep(interval or STATUS_INTERVAL_S)
