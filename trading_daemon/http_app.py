"""The HTTP front end: quart-trio routes over the daemon.

Each route first screens the request (auth.py, ratelimit.py): the per-source
rate limit (429, before the body is read), then the webhook's source address
against the allowlist (403), then, on routes that change state or show more
than health, the admin token (401; 403 when none is configured). The rate limit
comes first so that no refusal, logged or not, can be had faster than it allows.
A new route that changes state starts with ``screen(needs_admin=True)``; a test
checks that every non-GET route but the webhook refuses a request without it.
"""

from __future__ import annotations

import time
from typing import Any

from loguru import logger
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .auth import Address, AdminAuth, AuthError, SourcePolicy, parse_address
from .daemon import Daemon
from .ratelimit import RateLimiter
from .scheduler import QueueFull, SchedulerClosed
from .webhook import Reply

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CREDENTIAL_HEADERS = (
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
# Peers whose X-Forwarded-For was ignored and reported; bounded.
_MAX_REPORTED_PEERS = 64


def create_app(daemon: Daemon) -> QuartTrio:
    app = QuartTrio("trading_daemon")
    # Quart's app-wide limit is the one that holds for chunked bodies too
    # (quart#425); hypercorn's h11 limit covers headers only.
    app.config["MAX_CONTENT_LENGTH"] = daemon.settings.max_body_bytes
    # A body still arriving after this is answered 408 (connections.py also
    # bounds the whole request).
    app.config["BODY_TIMEOUT"] = daemon.settings.read_timeout
    app.config["JSON_SORT_KEYS"] = False
    sources = SourcePolicy.from_settings(daemon.settings)
    limiter = RateLimiter(daemon.settings.rate_limit)
    admin = AdminAuth(daemon.settings.admin_token)
    details_public = daemon.settings.status_public
    reported_peers: set[str] = set()

    def reply(answer: Reply) -> Response:
        response = jsonify(answer.body)
        response.status_code = answer.status
        response.headers.update(answer.headers)
        return response

    def client_address() -> Address | None:
        peer_info = request.scope.get("client")
        peer = str(peer_info[0]) if peer_info else None
        forwarded = request.headers.getlist("X-Forwarded-For")
        if (
            forwarded
            and peer is not None
            and not sources.trusts(parse_address(peer))
            and peer not in reported_peers
            and len(reported_peers) < _MAX_REPORTED_PEERS
        ):
            # Most likely a reverse proxy missing from TRADING_TRUSTED_PROXIES:
            # every client then looks like the proxy.
            reported_peers.add(peer)
            logger.bind(peer=peer).warning("auth.forwarded_for_ignored")
        return sources.client(peer, forwarded)

    def screen(*, webhook: bool = False, needs_admin: bool = False) -> Reply | None:
        """The refusal this request gets before any work, or None to go on."""
        address = client_address()
        source = "unknown" if address is None else str(address)
        limited = limiter.check(source)
        if limited is not None:
            if limited.first:
                logger.bind(
                    client=source, retry_after_s=round(limited.retry_after_s, 1)
                ).warning("ratelimit.refused")
            return Reply(
                429,
                {
                    "error": f"more than {limiter.per_minute} requests a minute from"
                    f" {source}; retry later"
                },
                {"Retry-After": limited.retry_after_header},
            )

        if webhook and not sources.allows(address):
            return refused(AuthError(f"source {source} is not allowed", status=403))
        if needs_admin:
            try:
                admin.check(request.headers.get("Authorization"))
            except AuthError as exc:
                return refused(exc)
        return None

    def refused(exc: AuthError) -> Reply:
        logger.bind(status=exc.status, reason=str(exc), path=request.path).warning(
            "auth.rejected"
        )
        return Reply(exc.status, exc.as_json(), exc.headers)

    @app.before_request
    async def header_limit() -> Response | None:
        # hypercorn's h11_max_incomplete_size only bounds headers that arrive
        # in pieces; a head that comes in one read passes it whole.
        size = sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size <= daemon.settings.max_header_bytes:
            return None
        limit = daemon.settings.max_header_bytes
        error = f"request headers of {size} bytes exceed the {limit} byte limit"
        return reply(Reply(431, {"error": error}))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return reply(daemon.intake.too_large())
        return reply(Reply(exc.code or 500, {"error": exc.description or exc.name}))

    @app.post("/webhook")
    async def webhook() -> Response:
        started = time.perf_counter()
        answer = screen(webhook=True)
        if answer is None:
            body = await request.get_data(cache=False)
            assert isinstance(body, bytes)
            credentials = {
                name: value
                for name in CREDENTIAL_HEADERS
                if (value := request.headers.get(name)) is not None
            }
            answer = await daemon.intake.accept(body, headers=credentials)
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
    return {
        202: "accepted",
        400: "invalid",
        401: "unauthorized",
        403: "forbidden",
        413: "too_large",
        429: "rate_limited",
        503: "refused",
    }.get(status, str(status))
