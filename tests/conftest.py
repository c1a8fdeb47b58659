"""Fixtures shared by several test modules."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from support import logging_restored

from trading_daemon.logs import setup_logging


@pytest.fixture
def log_sink() -> Iterator[io.StringIO]:
    """Route every log line into a string, as journald would get them."""
    with logging_restored():
        sink = io.StringIO()
        setup_logging("DEBUG", sink=sink, journal=True)
        yield sink
