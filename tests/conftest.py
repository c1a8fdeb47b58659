"""Fixtures shared by several test modules."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from loguru import logger

from trading_daemon.logs import setup_logging


@pytest.fixture
def log_sink() -> Iterator[io.StringIO]:
    """Route every log line into a string, as journald would get them."""
    names = ("", "hypercorn.error", "hypercorn.access")
    saved = [
        (lg, list(lg.handlers), lg.level, lg.propagate)
        for lg in (logging.getLogger(name or None) for name in names)
    ]
    sink = io.StringIO()
    setup_logging("DEBUG", sink=sink, journal=True)

    yield sink

    logger.remove()
    logger.configure(patcher=lambda record: None)
    for lg, handlers, level, propagate in saved:
        lg.handlers = handlers
        lg.setLevel(level)
        lg.propagate = propagate
