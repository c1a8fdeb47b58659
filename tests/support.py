"""Helpers shared by tests that cannot use the mock clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
from loguru import logger

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Wait on the real clock until ``condition()`` holds, failing after ``limit_s``.

    For outcomes that finish on worker threads (journal commits), which the
    autojump clock would treat as idle time and skip past.
    """
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110 - the change happens on a thread
            await trio.sleep(0.002)


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo setup_logging's global changes (loguru sinks, stdlib handlers) after."""
    names = ("", "hypercorn.error", "hypercorn.access")
    saved = [
        (lg, list(lg.handlers), lg.level, lg.propagate)
        for lg in (logging.getLogger(name or None) for name in names)
    ]
    try:
        yield
    finally:
        logger.remove()
        # loguru cannot unset a patcher; a no-op keeps _fields/_syslog out of
        # records that later tests' sinks may inspect.
        logger.configure(patcher=lambda record: None)
        for lg, handlers, level, propagate in saved:
            lg.handlers = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Daemon, int]]:
    """The whole daemon serving on a loopback port; stopped on the way out."""
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(daemon.run)
        try:
            yield daemon, port
        finally:
            daemon.request_stop("test over")
