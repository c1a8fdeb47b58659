"""The command line: ``trading-daemon serve | send | status | halt | resume | ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .auth import sender_headers
from .config import ConfigError, Settings, load_settings

EXIT_CONFIG = 2
EXIT_CRASH = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG

    try:
        settings = load_settings(config_file=args.config)
    except ConfigError as exc:
        _fatal(f"configuration error: {exc}")
        return EXIT_CONFIG

    command: Any = args.handler
    try:
        result: int = command(settings, args)
    except BrokenPipeError:
        # `trading-daemon status --json | head`: the reader left; not an error.
        # Point stdout at /dev/null so the final flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


def _fatal(text: str) -> None:
    """Print why the daemon cannot start, as an error journald can filter on."""
    from .logs import stderr_is_journal

    # Under systemd stderr is the journal: "<3>" files the line at priority
    # err, so `journalctl -p err` shows why the service would not start.
    prefix = "<3>" if stderr_is_journal() else ""
    print(f"{prefix}trading-daemon: {text}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trading-daemon",
        description="Turn TradingView alerts into futures orders.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML configuration file (default: $TRADING_CONFIG_FILE)",
    )
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.set_defaults(handler=_serve)

    send = sub.add_parser("send", help="post a test alert to a running daemon")
    send.add_argument("--url", help="daemon base URL (default: from configuration)")
    send.add_argument("--action", default="buy")
    send.add_argument("--symbol", default="MNQ1!")
    send.add_argument("--quantity", default="1")
    send.add_argument("--id", dest="alert_id", default=None)
    send.add_argument("--body", help="send this raw text instead of a built alert")
    send.set_defaults(handler=_send)

    status = sub.add_parser("status", help="summarise a running daemon's /status")
    status.add_argument("--url", help="daemon base URL (default: from configuration)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(handler=_status)

    dead = sub.add_parser("dead-letters", help="list a running daemon's dead letters")
    dead.add_argument("--url", help="daemon base URL (default: from configuration)")
    dead.add_argument("--json", action="store_true", help="print the raw JSON")
    dead.set_defaults(handler=_dead_letters)

    replay = sub.add_parser("replay", help="queue a dead letter again")
    replay.add_argument("task_id")
    replay.add_argument("--url", help="daemon base URL (default: from configuration)")
    replay.set_defaults(handler=_replay)

    halt = sub.add_parser(
        "halt", help="kill switch: cancel orders, flatten, refuse entries"
    )
    halt.add_argument("--url", help="daemon base URL (default: from configuration)")
    halt.set_defaults(handler=_halt)

    resume = sub.add_parser("resume", help="accept entries again after a halt")
    resume.add_argument("--url", help="daemon base URL (default: from configuration)")
    resume.set_defaults(handler=_resume)

    sim = sub.add_parser(
        "simulate-projectx",
        help="run a local ProjectX Gateway simulator until SIGINT or SIGTERM",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--username", default="sim-user", help="login user name")
    sim.add_argument("--api-key", default="sim-api-key", help="login API key")
    sim.set_defaults(handler=_simulate_projectx)

    check = sub.add_parser("check-config", help="print the effective configuration")
    check.set_defaults(handler=_check_config)

    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import trio
    from loguru import logger

    from .broker import BrokerSetupError
    from .daemon import Daemon
    from .journal import JournalError
    from .logs import register_secret, setup_logging
    from .server import ListenError

    setup_logging(settings.log_level)
    for secret in settings.secret_values():
        register_secret(secret)
    try:
        daemon = Daemon(settings)
    except JournalError as exc:
        _fatal(f"startup error: {exc}")
        return EXIT_CONFIG
    try:
        trio.run(daemon.run)
    except BaseException as exc:  # the process boundary: report, never re-raise
        if isinstance(exc, KeyboardInterrupt):
            return 0
        listen = _find(exc, ListenError)
        if listen is not None:
            _fatal(f"startup error: {listen}")
            return EXIT_CONFIG
        # Bad credentials (projectx AuthenticationError is one) or an
        # unusable account.
        refused = _find(exc, BrokerSetupError)
        if refused is not None:
            # Bad credentials or an account that may not trade: a restart
            # will not fix it, so it exits like a configuration error.
            _fatal(f"broker error: {refused}")
            return EXIT_CONFIG
        logger.opt(exception=exc).bind(error=_reason(exc)).critical("daemon.crashed")
        return EXIT_CRASH
    return 0


def _find(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``kinds`` inside ``exc``, looking through groups."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(inner) for inner in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _base_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host = settings.webhook_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.webhook_port}"


def _send(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    if args.body is not None:
        body = args.body
    else:
        alert: dict[str, Any] = {
            "action": args.action,
            "symbol": args.symbol,
            "quantity": args.quantity,
        }
        if args.alert_id:
            alert["id"] = args.alert_id
        header_credential = settings.webhook_token or settings.webhook_signing_secrets
        if settings.webhook_secret and not header_credential:
            alert["passphrase"] = settings.webhook_secret
        body = json.dumps(alert)

    url = _base_url(settings, args.url) + "/webhook"
    # text/plain, as TradingView sends alerts it cannot recognise as JSON.
    headers = {"Content-Type": "text/plain", **sender_headers(settings, body.encode())}
    # The client is built before the clock starts: building one loads the
    # CA bundle (about 100 ms), which is no part of the daemon's answer.
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            print(f"trading-daemon send: cannot reach {url}: {exc}", file=sys.stderr)
            return EXIT_CRASH
        elapsed_ms = (time.perf_counter() - started) * 1000

    print(f"{response.status_code} {response.text.strip()}")
    print(f"round trip: {elapsed_ms:.1f} ms")
    return 0 if response.status_code < 400 else EXIT_CRASH


def _status(settings: Settings, args: argparse.Namespace) -> int:
    data = _request(settings, args.url, "GET", "/status")
    if data is None:
        return EXIT_CRASH

    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(format_status(data))
    return 0


def format_status(data: dict[str, Any]) -> str:
    """A readable summary of a /status document."""
    q = data.get("task_queue_stats", {})
    lines = [
        f"status    {data.get('status')}  (up {data.get('uptime_s', 0):.0f} s, "
        f"broker {data.get('broker')})",
        f"queue     {q.get('queue_size', 0)} waiting, {q.get('active_tasks', 0)} "
        f"running (max {q.get('max_concurrent')})",
        f"tasks     {q.get('tasks_submitted', 0)} submitted, "
        f"{q.get('tasks_completed', 0)} completed, {q.get('tasks_retried', 0)} "
        f"retried, {q.get('tasks_dead', 0)} dead, success "
        f"{100 * q.get('success_rate', 1):.1f}%",
    ]
    positions = data.get("positions") or []
    if not positions:
        lines.append("positions none")
    for p in positions:
        lines.append(
            f"position  {p['symbol']:<6} {p['side']:<5} {abs(p['size'])} "
            f"@ {p['average_price']:g}  realized {p['realized_pnl']:+.2f}"
        )
    if data.get("halted"):
        lines.append("halted    entries refused until `trading-daemon resume`")
    for r in (data.get("risk_refusals") or [])[:5]:
        lines.append(
            f"refused   {r['account']} {r['symbol']} {r['guard']}: {r['reason']}"
        )
    for t in data.get("dead_letters") or []:
        lines.append(f"dead      {t['id']} {t['kind']}: {t['last_error']}")
    return "\n".join(lines)


def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    data = _request(settings, args.url, "GET", "/dead-letters")
    if data is None:
        return EXIT_CRASH
    letters = data.get("dead_letters", [])
    if args.json:
        print(json.dumps(letters, indent=2))
        return 0
    if not letters:
        print("no dead letters")
    for t in letters:
        print(f"{t['id']}  {t['kind']}  attempts={t['attempts']}  {t['last_error']}")
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    path = f"/dead-letters/{args.task_id}/replay"
    data = _request(settings, args.url, "POST", path)
    if data is None:
        return EXIT_CRASH
    print(f"{data['id']} {data['status']}")
    return 0


def _halt(settings: Settings, args: argparse.Namespace) -> int:
    data = _request(settings, args.url, "POST", "/halt")
    if data is None:
        return EXIT_CRASH
    print(f"halted; flatten task {data.get('id', '-')} {data['status']}")
    return 0


def _resume(settings: Settings, args: argparse.Namespace) -> int:
    data = _request(settings, args.url, "POST", "/resume")
    if data is None:
        return EXIT_CRASH
    print("resumed: entries are accepted again")
    return 0


def _request(
    settings: Settings,
    url: str | None,
    method: str,
    path: str,
) -> dict[str, Any] | None:
    """One JSON request to a running daemon; None (after a message) on failure."""
    import httpx

    full = _base_url(settings, url) + path
    headers = {}
    if settings.admin_token:
        headers["Authorization"] = f"Bearer {settings.admin_token}"
    try:
        response = httpx.request(method, full, headers=headers, timeout=10)
        data: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"trading-daemon: cannot reach {full}: {exc}", file=sys.stderr)
        return None
    if response.status_code >= 400:
        print(
            f"trading-daemon: {response.status_code} {data.get('error')}",
            file=sys.stderr,
        )
        return None
    return data


def _simulate_projectx(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import trio

    from .logs import setup_logging
    from .projectx_simulator import SimulatorState, serve_until_signal

    setup_logging(settings.log_level)
    # The simulated clock starts now, so order searches by wall-clock time
    # (the daemon looks back from its own clock) find what it places.
    state = SimulatorState(
        user_name=args.username, api_key=args.api_key, start=datetime.now(UTC)
    )
    try:
        trio.run(serve_until_signal, args.host, args.port, state)
    except OSError as exc:
        print(
            f"trading-daemon: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return 0


def _check_config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2, sort_keys=True))
    return 0
