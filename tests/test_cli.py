"""cli: check-config, configuration errors, help, and the status summary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from trading_daemon.cli import EXIT_CONFIG, format_status, main
from trading_daemon.config import SECRET_MASK

SECRET = "pxk-cli-Secret-Value-9731"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test without the caller's daemon configuration in the env."""
    for name in list(os.environ):
        if name.startswith(("TRADING_", "WEBHOOK_", "PROJECT_X_")) or name in (
            "STATE_DIRECTORY",
            "CREDENTIALS_DIRECTORY",
        ):
            monkeypatch.delenv(name)


def test_main_check_config_prints_masked_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints the effective settings as JSON with the API key masked."""
    monkeypatch.setenv("PROJECT_X_API_KEY", SECRET)
    monkeypatch.setenv("PROJECT_X_USERNAME", "trader")
    monkeypatch.setenv("WEBHOOK_PORT", "9443")
    monkeypatch.setenv("TRADING_PAPER_PRICES", "MNQ=21000")

    code = main(["check-config"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert SECRET not in out
    shown = json.loads(out)
    assert shown["project_x_api_key"] == SECRET_MASK
    assert shown["project_x_username"] == "trader"
    assert shown["webhook_port"] == 9443
    assert shown["webhook_host"] == "127.0.0.1"
    assert shown["paper_prices"] == {"MNQ": 21000.0}
    assert shown["state_dir"] == "state"


def test_main_check_config_reads_config_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config names a TOML file whose settings check-config shows."""
    path = tmp_path / "trading.toml"
    path.write_text("workers = 12\n")

    code = main(["--config", str(path), "check-config"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["workers"] == 12


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("WEBHOOK_PORT", "abc", "got 'abc'"),
        ("TRADING_WORKERS", "0", "got 0"),
        ("TRADING_LOG_LEVEL", "LOUD", "got 'LOUD'"),
    ],
)
def test_main_bad_env_value_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    shown: str,
) -> None:
    """A bad variable makes main return 2 with one stderr line naming it."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("PROJECT_X_API_KEY", SECRET)

    code = main(["check-config"])

    out, err = capsys.readouterr()
    assert code == EXIT_CONFIG == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trading-daemon: configuration error: ")
    assert variable in lines[0]
    assert lines[0].endswith(shown)
    assert SECRET not in err


def test_main_missing_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --config file that does not exist is a configuration error, exit 2."""
    code = main(["--config", str(tmp_path / "nope.toml"), "check-config"])

    err = capsys.readouterr().err
    assert code == 2
    assert "nope.toml" in err
    assert len(err.splitlines()) == 1


def test_main_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """main([]) prints the help, listing the commands, and returns 2."""
    code = main([])

    out = capsys.readouterr().out
    assert code == 2
    assert out.startswith("usage: trading-daemon")
    for command in ("serve", "send", "status", "check-config"):
        assert command in out


def test_main_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is an argparse usage error with exit status 2."""
    with pytest.raises(SystemExit) as info:
        main(["launch"])

    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def status_document() -> dict[str, Any]:
    """A /status document as the daemon serves it."""
    return {
        "status": "healthy",
        "uptime_s": 3725.4,
        "version": "0.1.0",
        "broker": "paper",
        "task_queue_stats": {
            "queue_size": 3,
            "active_tasks": 2,
            "max_concurrent": 20,
            "workers": 5,
            "tasks_submitted": 120,
            "tasks_completed": 110,
            "tasks_retried": 4,
            "tasks_dead": 1,
            "success_rate": 0.9565,
        },
        "positions": [
            {
                "symbol": "MNQ",
                "size": 2,
                "side": "long",
                "average_price": 21000.25,
                "realized_pnl": 40.0,
            },
            {
                "symbol": "ES",
                "size": -1,
                "side": "short",
                "average_price": 6000.0,
                "realized_pnl": -12.5,
            },
        ],
        "dead_letters": [
            {
                "id": "t-0042",
                "kind": "execute_signal",
                "priority": "normal",
                "state": "dead",
                "attempts": 4,
                "last_error": "BrokerError: gateway timeout",
            }
        ],
    }


def test_format_status_renders_sample() -> None:
    """format_status summarises queue, positions and dead letters, one per line."""
    text = format_status(status_document())

    lines = text.splitlines()
    assert lines[0] == "status    healthy  (up 3725 s, broker paper)"
    assert lines[1] == "queue     3 waiting, 2 running (max 20)"
    assert lines[2] == (
        "tasks     120 submitted, 110 completed, 4 retried, 1 dead, success 95.7%"
    )
    assert lines[3] == "position  MNQ    long  2 @ 21000.2  realized +40.00"
    assert lines[4] == "position  ES     short 1 @ 6000  realized -12.50"
    assert lines[5] == "dead      t-0042 execute_signal: BrokerError: gateway timeout"
    assert len(lines) == 6


def test_format_status_empty_document() -> None:
    """A minimal document renders with zeros and 'positions none'."""
    text = format_status({"status": "stopping"})

    assert "status    stopping" in text
    assert "0 waiting, 0 running" in text
    assert "success 100.0%" in text
    assert text.splitlines()[-1] == "positions none"


@pytest.mark.slow
def test_main_simulate_projectx_serves_until_sigint() -> None:
    """simulate-projectx answers a login on its port and exits 0 on SIGINT."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    command = [sys.executable, "-m", "trading_daemon", "simulate-projectx"]
    options = ["--port", "0", "--username", "dry", "--api-key", "dry-run-key-01"]
    proc = subprocess.Popen(
        command + options, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"projectx_simulator\.listening .*port=(\d+)", line)
            port = match.group(1) if match else None
        assert port is not None, "the simulator never reported its port"
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/Auth/loginKey",
            json={"userName": "dry", "apiKey": "dry-run-key-01"},
            timeout=5,
        )
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()

    assert login.json()["success"] is True
    assert proc.returncode == 0, rest
    assert "projectx_simulator.stopping signal=SIGINT" in rest


def test_serve_broker_setup_error_found_inside_groups() -> None:
    """A refused login or unusable account inside the daemon's group exits 2."""
    from trading_daemon.broker import BrokerSetupError
    from trading_daemon.cli import _find

    refused = BrokerSetupError("account 'PRAC' may not trade (canTrade is false)")
    nested = ExceptionGroup("daemon", [ExceptionGroup("start", [refused])])

    assert _find(nested, BrokerSetupError) is refused
    assert _find(ExceptionGroup("x", [ValueError()]), BrokerSetupError) is None


@pytest.mark.parametrize(
    ("command", "answer", "printed"),
    [
        (
            "halt",
            {"halted": True, "id": "f1", "status": "queued"},
            "halted; flatten task f1 queued",
        ),
        ("resume", {"halted": False}, "resumed: entries are accepted again"),
    ],
)
def test_main_halt_and_resume_post_with_the_admin_token(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    answer: dict[str, Any],
    printed: str,
) -> None:
    """halt and resume POST to the daemon with the admin token, like replay (#5)."""
    sent: list[tuple[str, str, dict[str, str]]] = []

    def fake(method: str, url: str, **kwargs: Any) -> httpx.Response:
        sent.append((method, url, kwargs["headers"]))
        return httpx.Response(202, json=answer)

    monkeypatch.setattr(httpx, "request", fake)
    monkeypatch.setenv("TRADING_ADMIN_TOKEN", "admin-token-0123456789")

    code = main([command, "--url", "http://127.0.0.1:9000"])

    assert code == 0
    assert capsys.readouterr().out.strip() == printed
    assert sent == [
        (
            "POST",
            f"http://127.0.0.1:9000/{command}",
            {"Authorization": "Bearer admin-token-0123456789"},
        )
    ]


def test_format_status_shows_halt_and_refusals() -> None:
    """A halted daemon and its refusals are in the summary."""
    document = {
        **status_document(),
        "halted": True,
        "risk_refusals": [
            {
                "account": "main",
                "symbol": "MNQ",
                "guard": "max_daily_loss",
                "reason": "realised P&L today -600.00 has reached ...",
            }
        ],
    }

    lines = format_status(document).splitlines()

    assert "halted    entries refused until `trading-daemon resume`" in lines
    assert (
        "refused   main MNQ max_daily_loss: realised P&L today -600.00 has reached ..."
        in lines
    )


def test_cli_startup_errors_carry_err_priority_under_journald(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With stderr on the journal, a configuration error line starts with <3>."""
    monkeypatch.setattr("trading_daemon.logs.stderr_is_journal", lambda: True)
    monkeypatch.setenv("TRADING_WORKERS", "zero")

    code = main(["check-config"])
    err = capsys.readouterr().err

    assert code == 2
    assert err.startswith("<3>trading-daemon: configuration error: TRADING_WORKERS")
