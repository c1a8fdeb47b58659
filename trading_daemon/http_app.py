"""The HTTP front end: quart-trio routes over the daemon.

Every route first passes the gate (gate.py: rate limit, source policy, admin
token). POST /webhook is served in front of quart by webhook_route.py. A new
route that changes state starts with ``screen(needs_admin=True)``; a test
checks that every non-GET route but the webhook refuses a request without it.
"""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .daemon import Daemon
from .gate import Gate
from .scheduler import QueueFull, SchedulerClosed
from .webhook import Reply
from .webhook_route import WebhookRoute

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(daemon: Daemon) -> QuartTrio:
    app = QuartTrio("trading_daemon")
    # Quart's app-wide limit is the one that holds for chunked bodies too
    # (quart#425); hypercorn's h11 limit covers headers only.
    app.config["MAX_CONTENT_LENGTH"] = daemon.settings.max_body_bytes
    # A body still arriving after this is answered 408 (connections.py also
    # bounds the whole request).
    app.config["BODY_TIMEOUT"] = daemon.settings.read_timeout
    app.config["JSON_SORT_KEYS"] = False
    gate = Gate(daemon.settings)
    details_public = daemon.settings.status_public
    # POST /webhook never reaches quart: see webhook_route.py.
    app.asgi_app = WebhookRoute(daemon, gate, app.asgi_app)  # type: ignore[method-assign]

    def reply(answer: Reply) -> Response:
        response = jsonify(answer.body)
        response.status_code = answer.status
        response.headers.update(answer.headers)
        return response

    def screen(*, needs_admin: bool = False) -> Reply | None:
        peer_info = request.scope.get("client")
        return gate.screen(
            peer=str(peer_info[0]) if peer_info else None,
            forwarded=request.headers.getlist("X-Forwarded-For"),
            authorization=request.headers.get("Authorization"),
            path=request.path,
            needs_admin=needs_admin,
        )

    @app.before_request
    async def header_limit() -> Response | None:
        size = sum(len(name) + len(value) + 4 for name, value in request.headers)
        too_large = gate.headers_too_large(size)
        return None if too_large is None else reply(too_large)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return reply(daemon.intake.too_large())
        return reply(Reply(exc.code or 500, {"error": exc.description or exc.name}))

    @app.get("/health")
    async def health() -> Response:
        return reply(Reply(503 if daemon.stopping else 200, daemon.health()))

    @app.get("/status")
    async def status() -> Response:
        refusal = screen(needs_admin=not details_public)
        if refusal is not None:
            return reply(refusal)
        return reply(Reply(200, await daemon.status()))

    @app.get("/dead-letters")
    async def dead_letters() -> Response:
        refusal = screen(needs_admin=not details_public)
        if refusal is not None:
            return reply(refusal)
        return reply(Reply(200, {"dead_letters": await daemon.journal.dead_letters()}))

    @app.post("/dead-letters/<task_id>/replay")
    async def replay(task_id: str) -> Response:
        refusal = screen(needs_admin=True)
        if refusal is not None:
            return reply(refusal)
        try:
            task = await daemon.replay(task_id)
        except LookupError as exc:
            return reply(Reply(404, {"error": str(exc)}))
        except ValueError as exc:
            return reply(Reply(409, {"error": str(exc)}))
        except (QueueFull, SchedulerClosed) as exc:
            return reply(
                Reply(503, {"error": f"cannot queue now: {exc}"}, {"Retry-After": "5"})
            )
        return reply(Reply(202, {"id": task.id, "status": "queued"}))

    @app.post("/halt")
    async def halt() -> Response:
        refusal = screen(needs_admin=True)
        if refusal is not None:
            return reply(refusal)
        try:
            task = await daemon.halt()
        except SchedulerClosed:
            # Halted and journaled: the flatten runs when the daemon starts.
            return reply(Reply(202, {"halted": True, "status": "flatten at restart"}))
        return reply(Reply(202, {"halted": True, "id": task.id, "status": "queued"}))

    @app.post("/resume")
    async def resume() -> Response:
        refusal = screen(needs_admin=True)
        if refusal is not None:
            return reply(refusal)
        await daemon.resume()
        return reply(Reply(200, {"halted": False}))

    @app.get("/metrics")
    async def metrics() -> Response:
        if request.args.get("format") == "json":
            body: dict[str, Any] = {
                "task_queue": daemon.scheduler.snapshot(),
                "uptime_s": round(daemon.uptime(), 3),
            }
            return reply(Reply(200, body))
        return Response(daemon.metrics.exposition(), content_type=PROMETHEUS_TEXT)

    return app
