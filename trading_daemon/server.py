"""Serving the HTTP app with hypercorn's trio worker."""

from __future__ import annotations

import logging
import socket
from functools import partial
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from loguru import logger

from .access import AccessLog
from .config import Settings
from .connections import serve
from .daemon import Daemon
from .http_app import create_app

# hypercorn's default: in-flight requests get this long after the trigger.
GRACEFUL_TIMEOUT_S = 3.0


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    # The default backlog of 100 overflows silently under a burst of new
    # connections (PITFALLS.md).
    config.backlog = settings.webhook_backlog
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    # Idle time between requests; the proxy's own idle timeout should be
    # shorter, so that it never reuses a connection the daemon is closing.
    config.keep_alive_timeout = settings.keep_alive_timeout
    # Request line plus headers; beyond it hypercorn answers 431 and closes.
    config.h11_max_incomplete_size = settings.max_header_bytes
    # read_timeout stays unset: it bounds every silent gap, idle keep-alive
    # ones included; connections.py bounds each request instead.
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
    methods = daemon.intake.auth.methods
    if methods:
        logger.bind(methods=",".join(methods)).info("auth.enabled")
    else:
        # Paper mode only: config.py refuses a live broker without any.
        logger.bind(broker=daemon.settings.broker).warning("auth.disabled")
    app = AccessLog(create_app(daemon), closing=lambda: daemon.stopping)
    config = hypercorn_config(daemon.settings)
    sock = bind_socket(daemon.settings.webhook_host, daemon.settings.webhook_port)
    # hypercorn adopts the bound socket (and closes it when done).
    config.bind = [f"fd://{sock.detach()}"]
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(
                    serve,
                    app,
                    config,
                    shutdown_trigger=daemon.wait_stop_requested,
                    max_connections=daemon.settings.max_connections,
                    read_timeout=daemon.settings.read_timeout,
                )
            )
            task_status.started(urlsplit(binds[0]).port or daemon.settings.webhook_port)
    finally:
        done.set()


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, or ListenError naming what went wrong.

    Bound here rather than by hypercorn so that a bad WEBHOOK_HOST or a port
    in use is one clear line, and no half-made socket is left open.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {host}:{port}: {exc} (check WEBHOOK_HOST and"
            " WEBHOOK_PORT)"
        ) from None
    return sock


class ListenError(Exception):
    """The HTTP socket could not be bound; the message names address and reason."""
