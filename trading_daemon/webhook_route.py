"""POST /webhook as a bare ASGI endpoint, in front of the quart-trio app.

The webhook is the one route that must answer within TradingView's 3 s under
load, and a framework's per-request machinery (request context, routing,
response objects) costs more than the route's own work. So this endpoint reads
the ASGI messages itself and hands the body to the same gate and intake the
rest of the app uses; every other path and method goes on to quart-trio, which
also answers 405 for other methods on /webhook.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .access import CLOSE, log_access
from .daemon import Daemon
from .gate import Gate
from .webhook import Reply

ASGIApp = Any
CREDENTIAL_HEADERS = (
    b"authorization",
    b"webhook-id",
    b"webhook-timestamp",
    b"webhook-signature",
)
_RESULTS = {
    202: "accepted",
    200: "duplicate",
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    429: "rate_limited",
    431: "headers_too_large",
    503: "refused",
}


class WebhookRoute:
    """ASGI app: POST /webhook here, everything else to ``fallback``."""

    def __init__(self, daemon: Daemon, gate: Gate, fallback: ASGIApp) -> None:
        self._daemon = daemon
        self._gate = gate
        self._fallback = fallback
        self._limit = daemon.settings.max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/webhook":
            await self._fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            error = f"method {scope['method']} is not allowed on /webhook; use POST"
            await _send(send, Reply(405, {"error": error}, {"Allow": "POST"}))
            return

        started = time.perf_counter()
        answer = await self._answer(scope, receive)
        metrics = self._daemon.metrics
        metrics.alerts.labels(_RESULTS.get(answer.status, str(answer.status))).inc()
        elapsed = time.perf_counter() - started
        metrics.webhook_ack.labels(str(answer.status)).observe(elapsed)
        # AccessLog lets this route through; an accepted alert has its own line.
        # Logged before sending: a client that hangs up as soon as it has read
        # the answer would otherwise cancel this task before the line.
        if answer.status >= 300:
            log_access(scope, answer.status, elapsed)
        await _send(send, answer, close=self._daemon.stopping)

    async def _answer(self, scope: Any, receive: Any) -> Reply:
        header_bytes = 0
        forwarded: list[str] = []
        credentials: dict[str, str] = {}
        declared: int | None = None
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value) + 4
            if name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif name in CREDENTIAL_HEADERS:
                credentials[name.decode()] = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None

        too_large = self._gate.headers_too_large(header_bytes)
        if too_large is not None:
            return too_large
        client = scope.get("client")
        refusal = self._gate.screen(
            peer=str(client[0]) if client else None,
            forwarded=forwarded,
            authorization=credentials.get("authorization"),
            path="/webhook",
            webhook=True,
        )
        if refusal is not None:
            return refusal

        # A declared length over the limit is refused before reading; a
        # chunked body is counted as it arrives (hypercorn's h11 limit covers
        # headers only).
        if declared is not None and declared > self._limit:
            return self._daemon.intake.too_large(declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Reply(400, {"error": "client went away before the body ended"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                return self._daemon.intake.too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        return await self._daemon.intake.accept(b"".join(chunks), headers=credentials)


async def _send(send: Any, answer: Reply, *, close: bool = False) -> None:
    body = json.dumps(answer.body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
    if close:
        headers.append(CLOSE)
    start = {"type": "http.response.start", "status": answer.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
