"""The HTTP front end: quart-trio routes over the daemon."""

from __future__ import annotations

import time
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .daemon import Daemon
from .scheduler import QueueFull, SchedulerClosed
from .webhook import Reply

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(daemon: Daemon) -> QuartTrio:
    app = QuartTrio("trading_daemon")
    # Quart's app-wide limit is the one that holds for chunked bodies too
    # (quart#425); hypercorn's h11 limit covers headers only.
    app.config["MAX_CONTENT_LENGTH"] = daemon.settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False

    def reply(answer: Reply) -> Response:
        response = jsonify(answer.body)
        response.status_code = answer.status
        response.headers.update(answer.headers)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return reply(daemon.intake.too_large())
        return reply(Reply(exc.code or 500, {"error": exc.description or exc.name}))

    @app.post("/webhook")
    async def webhook() -> Response:
        started = time.perf_counter()
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        answer = await daemon.intake.accept(
            body, webhook_id=request.headers.get("webhook-id")
        )
        daemon.metrics.alerts.labels(_result(answer.status)).inc()
        daemon.metrics.webhook_ack.labels(str(answer.status)).observe(
            time.perf_counter() - started
        )
        return reply(answer)

    @app.get("/health")
    async def health() -> Response:
        return reply(Reply(503 if daemon.stopping else 200, daemon.health()))

    @app.get("/status")
    async def status() -> Response:
        return reply(Reply(200, await daemon.status()))

    @app.get("/dead-letters")
    async def dead_letters() -> Response:
        return reply(Reply(200, {"dead_letters": await daemon.journal.dead_letters()}))

    @app.post("/dead-letters/<task_id>/replay")
    async def replay(task_id: str) -> Response:
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


def _result(status: int) -> str:
    return {202: "accepted", 400: "invalid", 413: "too_large", 503: "refused"}.get(
        status, str(status)
    )
