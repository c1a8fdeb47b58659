"""Logging: one loguru sink on stderr that reads well on a terminal and in journald.

Lines are events with fields: ``INFO task.started task_id=ab12 priority=normal``.
Under systemd, stderr is the journal (``JOURNAL_STREAM`` names it); each line
then starts with its syslog priority (``<3>`` for errors) so ``journalctl -p err``
works, and carries no timestamp or colour, which journald adds or mangles.
Secrets registered with ``register_secret`` are masked wherever they appear.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from typing import IO, Any, TextIO

from loguru import logger

# loguru level -> syslog priority (sd-daemon(3) prefixes).
_SYSLOG = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}

_secrets: set[str] = set()
_MASK = "***"


def register_secret(value: str) -> None:
    """Mask ``value`` in every later log line (short values would mask too much)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def stderr_is_journal(stream: IO[str] | None = None) -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM)."""
    journal = os.environ.get("JOURNAL_STREAM", "")
    if not journal:
        return False
    try:
        device, inode = (int(part) for part in journal.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


_NEEDS_QUOTING = re.compile(r'[ "=\n\r\\]')


def _render_value(value: Any) -> str:
    # Mask before quoting: escaping could split a secret that holds a quote.
    text = _mask(str(value)) if _secrets else str(value)
    if not text or _NEEDS_QUOTING.search(text):
        # Newlines escaped: a value must never start a forged journal line.
        escaped = (
            text.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
        text = f'"{escaped}"'
    return text


def _mask(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _patch(record: Any) -> None:
    fields = " ".join(
        f"{key}={_render_value(value)}"
        for key, value in record["extra"].items()
        if not key.startswith("_")
    )
    record["extra"]["_fields"] = " " + fields if fields else ""
    record["message"] = _mask(record["message"])
    record["extra"]["_syslog"] = _SYSLOG.get(record["level"].name, 6)


def setup_logging(
    level: str = "INFO",
    *,
    sink: TextIO | None = None,
    journal: bool | None = None,
) -> None:
    """Send loguru's and the standard library's logs to one stderr sink."""
    stream = sink or sys.stderr
    if journal is None:
        journal = stderr_is_journal(stream)
    colour = not journal and hasattr(stream, "isatty") and stream.isatty()

    if journal:
        fmt = "<{extra[_syslog]}>{level} {message}{extra[_fields]}"
    else:
        fmt = (
            "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "{message}{extra[_fields]}"
        )

    logger.remove()
    logger.configure(patcher=_patch)
    # diagnose=False: loguru's default prints local variables in tracebacks,
    # which would include tokens and keys (loguru#954).
    logger.add(
        stream,
        level=level.upper(),
        format=fmt,
        colorize=colour,
        diagnose=False,
        backtrace=False,
    )
    _route_stdlib(level)


class _InterceptHandler(logging.Handler):
    """Forward standard-library records (hypercorn's) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno

        # Walk out of the logging module so loguru reports the real caller
        # (loguru#760's recipe).
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1

        logger.opt(depth=depth, exception=record.exc_info).bind(source=record.name).log(
            level, record.getMessage()
        )


def _route_stdlib(level: str) -> None:
    handler = _InterceptHandler()
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("hypercorn.error", "hypercorn.access"):
        named = logging.getLogger(name)
        named.handlers = [handler]
        named.propagate = False
        named.setLevel(level.upper() if name == "hypercorn.error" else logging.INFO)
