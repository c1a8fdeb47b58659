"""logs: journald prefixes, no colour off a terminal, fields, secrets, stdlib."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from support import logging_restored

from trading_daemon import logs
from trading_daemon.logs import register_secret, setup_logging, stderr_is_journal

ANSI = re.compile(r"\x1b\[")
SECRET = "pxk-logs-Secret-Value-5510"


class TtyStringIO(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give each test fresh secrets; undo setup_logging's global changes after."""
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with logging_restored():
        yield


def journal_sink(level: str = "DEBUG") -> io.StringIO:
    sink = io.StringIO()
    setup_logging(level, sink=sink, journal=True)
    return sink


@pytest.mark.parametrize(
    ("method", "prefix"),
    [
        ("debug", "<7>DEBUG"),
        ("info", "<6>INFO"),
        ("success", "<5>SUCCESS"),
        ("warning", "<4>WARNING"),
        ("error", "<3>ERROR"),
        ("critical", "<2>CRITICAL"),
    ],
)
def test_setup_logging_journal_priority_prefix(method: str, prefix: str) -> None:
    """Under journald each line starts with its syslog priority and level."""
    sink = journal_sink()

    getattr(logger, method)("task.started")

    assert sink.getvalue() == f"{prefix} task.started\n"


def test_setup_logging_journal_no_colour_or_timestamp() -> None:
    """Journal lines carry no ANSI codes and no timestamp, even for a tty."""
    sink = TtyStringIO()
    setup_logging("INFO", sink=sink, journal=True)

    logger.bind(task_id="ab12").info("task.started")
    logger.error("task.failed")

    assert not ANSI.search(sink.getvalue())
    assert sink.getvalue().splitlines() == [
        "<6>INFO task.started task_id=ab12",
        "<3>ERROR task.failed",
    ]


def test_setup_logging_plain_non_tty_has_no_ansi() -> None:
    """Off the journal and off a terminal, lines are timestamped without colour."""
    sink = io.StringIO()
    setup_logging("INFO", sink=sink, journal=False)

    logger.bind(task_id="ab12").info("task.started")
    logger.error("task.failed")

    text = sink.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO    task\.started task_id=ab12",
        lines[0],
    )
    assert lines[1].endswith(" ERROR   task.failed")


def test_setup_logging_plain_tty_is_coloured() -> None:
    """On a terminal the same format is coloured."""
    sink = TtyStringIO()
    setup_logging("INFO", sink=sink, journal=False)

    logger.info("task.started")

    assert ANSI.search(sink.getvalue())


def test_setup_logging_level_filters() -> None:
    """Records below the configured level are dropped."""
    sink = journal_sink("warning")

    logger.info("task.started")
    logger.warning("task.retry_scheduled")

    assert sink.getvalue() == "<4>WARNING task.retry_scheduled\n"


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("ab12", "key=ab12"),
        (3, "key=3"),
        (0.25, "key=0.25"),
        (None, "key=None"),
        ("two words", 'key="two words"'),
        ("", 'key=""'),
        ('say "hi"', 'key="say \\"hi\\""'),
        ("a=b", 'key="a=b"'),
        ("C:\\dir name", 'key="C:\\\\dir name"'),
    ],
)
def test_setup_logging_fields_key_value(value: object, rendered: str) -> None:
    """Bound fields render as key=value, quoted when they hold spaces, quotes or '='."""
    sink = journal_sink()

    logger.bind(key=value).info("event")

    assert sink.getvalue() == f"<6>INFO event {rendered}\n"


def test_setup_logging_fields_keep_order_and_hide_private() -> None:
    """Fields appear in bind order; names starting with '_' are not shown."""
    sink = journal_sink()

    logger.bind(task_id="t1", priority="normal", _internal="x", attempt=2).info(
        "task.retry_scheduled"
    )

    assert sink.getvalue() == (
        "<6>INFO task.retry_scheduled task_id=t1 priority=normal attempt=2\n"
    )


def test_setup_logging_braces_in_message_kept() -> None:
    """Braces in a message (an alert's placeholder) are written as they are."""
    sink = journal_sink()

    logger.info("{{strategy.order.action}}")

    assert sink.getvalue() == "<6>INFO {{strategy.order.action}}\n"


@pytest.mark.parametrize("journal", [True, False])
def test_register_secret_masked_in_message_and_fields(journal: bool) -> None:
    """A registered secret is masked in the message and in every field."""
    sink = io.StringIO()
    setup_logging("INFO", sink=sink, journal=journal)
    register_secret(SECRET)

    logger.bind(token=SECRET, header=f"Bearer {SECRET}").warning(
        f"auth.refused key={SECRET}"
    )

    text = sink.getvalue()
    assert SECRET not in text
    assert "auth.refused key=***" in text
    assert "token=***" in text
    assert 'header="Bearer ***"' in text


def test_register_secret_ignores_short_values() -> None:
    """Empty or very short values are not registered: they would mask too much."""
    sink = journal_sink()
    register_secret("")
    register_secret("abc")

    logger.bind(kind="abc").info("abc")

    assert sink.getvalue() == "<6>INFO abc kind=abc\n"


def test_setup_logging_traceback_hides_locals() -> None:
    """An exception's traceback does not print local variables (loguru#954)."""
    sink = journal_sink()
    token = SECRET

    try:
        # token appears on the failing line, so diagnose=True would print it.
        raise RuntimeError("gateway refused" + token[:0])
    except RuntimeError:
        logger.exception("broker.login_failed")

    text = sink.getvalue()
    assert text.startswith("<3>ERROR broker.login_failed")
    assert "RuntimeError: gateway refused" in text
    assert token not in text


@pytest.mark.parametrize(
    ("name", "method", "line"),
    [
        ("hypercorn.error", "info", "<6>INFO Running on http://127.0.0.1:8080"),
        ("hypercorn.error", "error", "<3>ERROR Running on http://127.0.0.1:8080"),
        ("hypercorn.access", "info", "<6>INFO Running on http://127.0.0.1:8080"),
        ("some.library", "warning", "<4>WARNING Running on http://127.0.0.1:8080"),
    ],
)
def test_setup_logging_routes_stdlib(name: str, method: str, line: str) -> None:
    """Standard-library records (hypercorn's) go through the same sink and format."""
    sink = journal_sink("INFO")

    getattr(logging.getLogger(name), method)("Running on %s", "http://127.0.0.1:8080")

    assert sink.getvalue() == f"{line} source={name}\n"


def test_setup_logging_stdlib_masks_secret() -> None:
    """A secret in a standard-library record is masked as well."""
    sink = journal_sink("INFO")
    register_secret(SECRET)

    logging.getLogger("hypercorn.error").error("bad header %s", SECRET)

    assert sink.getvalue() == "<3>ERROR bad header *** source=hypercorn.error\n"


def test_setup_logging_stdlib_root_info_dropped() -> None:
    """Other libraries' INFO chatter is dropped; the root logger stays at WARNING."""
    sink = journal_sink("DEBUG")

    logging.getLogger("some.library").info("connected")

    assert sink.getvalue() == ""


def test_setup_logging_stdlib_one_record_each() -> None:
    """One hypercorn access record gives exactly one line (no propagation twice)."""
    sink = journal_sink("INFO")

    logging.getLogger("hypercorn.access").info("GET /health 200")

    assert sink.getvalue().count("GET /health 200") == 1


def test_stderr_is_journal_matches_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOURNAL_STREAM naming the stream's device:inode means the journal."""
    with (tmp_path / "stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")

        assert stderr_is_journal(stream) is True


@pytest.mark.parametrize("value", ["", "garbage", "1:2:3", "0:0"])
def test_stderr_is_journal_other_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A missing, malformed or non-matching JOURNAL_STREAM is not the journal."""
    monkeypatch.setenv("JOURNAL_STREAM", value)

    with (tmp_path / "stream").open("w") as stream:
        assert stderr_is_journal(stream) is False


def test_stderr_is_journal_stream_without_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream without a file descriptor (StringIO) is not the journal."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")

    assert stderr_is_journal(io.StringIO()) is False


def test_setup_logging_detects_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With journal unset, a sink that is the journal stream gets priority prefixes."""
    with (tmp_path / "stream").open("w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("INFO", sink=stream)

        logger.info("daemon.started")
        stream.seek(0)

        assert stream.read() == "<6>INFO daemon.started\n"


def test_setup_logging_field_newline_stays_on_one_line() -> None:
    """A field value with a newline (an alert id) cannot start a second line."""
    sink = journal_sink()

    logger.bind(alert_id="x\n<0>EMERG").info("alert.accepted")

    assert len(sink.getvalue().splitlines()) == 1


def test_register_secret_with_quote_masked_in_fields() -> None:
    """A secret holding a double quote is still masked in a field."""
    sink = journal_sink()
    register_secret('pw"with-quote')

    logger.bind(password='pw"with-quote').info("login")

    assert "with-quote" not in sink.getvalue()
