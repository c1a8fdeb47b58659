"""Access lines: one ``http.access`` log line per HTTP request.

hypercorn's own access log writes a second, empty record when the client
closes before the response is marked done, so the daemon writes its own. An
accepted webhook gets none: its ``alert.accepted`` or ``alert.duplicate`` line
says more, and at full load one more line per alert is a measurable share of
the webhook's cost. POST /webhook passes through untouched for the same reason;
``WebhookRoute`` calls ``log_access`` for the answers that are not 2xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loguru import logger

# While shutting down: a client reusing the connection would get no answer
# once hypercorn's grace period ends.
CLOSE = (b"connection", b"close")


def log_access(scope: Any, status: int, seconds: float) -> None:
    client = scope.get("client") or ("-", 0)
    logger.info(
        "http.access",
        method=scope["method"],
        path=scope["path"],
        status=status,
        client=client[0],
        ms=round(seconds * 1000, 2),
    )


class AccessLog:
    """ASGI wrapper that logs one ``http.access`` line per HTTP request."""

    def __init__(self, app: Any, closing: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self._closing = closing

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (
            scope["path"] == "/webhook" and scope["method"] == "POST"
        ):
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self._closing():
                    headers = list(message.get("headers", []))
                    headers.append(CLOSE)
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log_access(scope, status, time.perf_counter() - started)
