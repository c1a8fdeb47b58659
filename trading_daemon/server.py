"""Serving the HTTP app with hypercorn's trio worker."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from loguru import logger

from .config import Settings
from .daemon import Daemon
from .http_app import create_app

# hypercorn's default: in-flight requests get this long after the trigger.
GRACEFUL_TIMEOUT_S = 3.0


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = settings.webhook_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    config.bind = [f"{host}:{settings.webhook_port}"]
    # The default backlog of 100 overflows silently under a burst of new
    # connections (PITFALLS.md).
    config.backlog = settings.webhook_backlog
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.keep_alive_timeout = 75
    # A logger we own, routed into loguru; hypercorn would replace the handlers
    # of loggers it creates itself (hypercorn#120).
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn's access log writes a second, empty record when the client
    # closes before the response is marked done; AccessLog writes exactly one.
    config.accesslog = None
    return config


async def serve_http(
    daemon: Daemon,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until the daemon's stop is requested; report the bound port."""
    app = AccessLog(create_app(daemon))
    config = hypercorn_config(daemon.settings)
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(
                    serve,
                    app,
                    config,
                    shutdown_trigger=daemon.wait_stop_requested,
                )
            )
            task_status.started(urlsplit(binds[0]).port or daemon.settings.webhook_port)
    finally:
        done.set()


class AccessLog:
    """ASGI wrapper that logs one ``http.access`` line per HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.bind(
                method=scope["method"],
                path=scope["path"],
                status=status,
                client=client[0],
                ms=round((time.perf_counter() - started) * 1000, 2),
            ).info("http.access")
