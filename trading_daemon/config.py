"""Configuration: environment variables, optionally a TOML file, checked at startup.

Every setting has one environment variable. A TOML file named by
``TRADING_CONFIG_FILE`` may supply the same settings under their lower-case field
names; the environment wins over the file. A bad value stops startup with one
line that names the variable and shows the value (secrets are never shown).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import MIN_SECRET_LENGTH, parse_networks, signing_key
from .priority import Priority
from .risk import parse_hours

SECRET_MASK = "********"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The daemon's effective configuration."""

    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8080
    webhook_backlog: int = 1024
    max_body_bytes: int = 64 * 1024
    # Connections held at once; beyond it new ones wait in the listen backlog.
    max_connections: int = 256
    # A request must arrive in full this long after its first byte (or after
    # the connection opened), however slowly it trickles in.
    read_timeout: float = 10.0
    # Idle keep-alive connections close after this; keep it above the reverse
    # proxy's own idle timeout so the proxy, not the daemon, closes first.
    keep_alive_timeout: float = 75.0
    max_header_bytes: int = 16 * 1024

    # Who may post alerts (see auth.py): any one valid credential admits.
    webhook_secret: str = field(default="", repr=False)
    webhook_token: str = field(default="", repr=False)
    webhook_signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    allowed_sources: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    rate_limit: int = 120
    admin_token: str = field(default="", repr=False)
    # The daemon binds 127.0.0.1 and the documented proxies publish /webhook
    # only, so /status is readable without the admin token unless this is off.
    status_public: bool = True

    broker: str = "paper"
    state_dir: Path = Path("state")

    workers: int = 5
    max_concurrent: int = 20
    max_queue: int = 1000
    # Slots only CRITICAL work may use (fill checks, flatten): see scheduler.py.
    critical_reserve: int = 2
    # Seconds of waiting that lift a non-critical task one priority level.
    aging_interval: float = 30.0
    max_retries: int = 3
    retry_base_delay: float = 2.0
    retry_max_delay: float = 60.0
    retry_jitter: float = 0.5
    drain_timeout: float = 20.0
    # Identical bodies within this many seconds are one alert (see dedup.py).
    dedup_window: float = 10.0
    # Finished tasks, dead letters and alert ids are kept this long.
    retention_days: float = 30.0

    timeout_critical: float = 30.0
    timeout_high: float = 60.0
    timeout_normal: float = 120.0
    timeout_low: float = 300.0
    # 0 means no timeout: BACKGROUND work (journal cleanup) may take as long as
    # it needs, and is the first to be cancelled at shutdown anyway.
    timeout_background: float = 0.0

    fill_check_interval: float = 30.0
    risk_update_interval: float = 60.0
    metrics_interval: float = 60.0
    cleanup_interval: float = 3600.0

    # What an alert means (intent.py) and the limits entries must pass (risk.py).
    default_mode: str = "signal"
    pyramiding: bool = False
    max_pyramid: int = 3
    # 0 turns a limit off.
    max_order_size: int = 0
    max_position: int = 0
    max_daily_loss: float = 0.0
    trading_hours: str = "cme-globex"
    # (name, size multiplier) per account; empty: the broker's one account.
    accounts: tuple[tuple[str, float], ...] = ()

    paper_prices: Mapping[str, float] = field(default_factory=dict)
    paper_default_price: float = 100.0
    paper_balance: float = 50_000.0
    # Simulated broker latency per order, to rehearse timeouts and draining.
    paper_fill_delay: float = 0.0

    log_level: str = "INFO"

    project_x_base_url: str = "https://api.topstepx.com"
    project_x_username: str = ""
    project_x_api_key: str = field(default="", repr=False)
    project_x_account: str = ""
    # Seconds one gateway request may take before it counts as failed.
    project_x_timeout: float = 10.0
    # The gateway allows 200 requests per 60 s; stay a little under it.
    project_x_rate_limit: int = 190
    project_x_rate_window: float = 60.0
    # Alert roots whose ProjectX symbol differs, e.g. NQ=ENQ (see projectx_broker).
    project_x_symbols: Mapping[str, str] = field(default_factory=dict)

    def timeout_for(self, priority: Priority) -> float | None:
        """The run-time limit of one attempt at ``priority``; None means unlimited."""
        value: float = getattr(self, f"timeout_{priority.name.lower()}")
        return value if value > 0 else None

    def secret_values(self) -> list[str]:
        """Every secret as it could appear in text, for masking logs and answers."""
        values: list[str] = []
        for name in sorted(SECRET_FIELDS):
            value = getattr(self, name)
            for secret in value if isinstance(value, tuple) else (value,):
                if secret:
                    values.append(secret)
                    # A whsec_ key may be quoted without its prefix.
                    values.append(secret.removeprefix("whsec_"))
        return sorted(set(values))

    def masked(self) -> dict[str, Any]:
        """The settings as plain values, with every secret replaced by a mask."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = SECRET_MASK if value else ""
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


SECRET_FIELDS = frozenset(
    {
        "project_x_api_key",
        "webhook_secret",
        "webhook_token",
        "webhook_signing_secrets",
        "admin_token",
    }
)

# Variables outside the TRADING_ prefix: DESIGN.md names these exactly.
_ENV_NAMES = {
    "webhook_host": "WEBHOOK_HOST",
    "webhook_port": "WEBHOOK_PORT",
    "webhook_backlog": "WEBHOOK_BACKLOG",
    "max_body_bytes": "WEBHOOK_MAX_BODY_BYTES",
    "max_connections": "WEBHOOK_MAX_CONNECTIONS",
    "read_timeout": "WEBHOOK_READ_TIMEOUT",
    "keep_alive_timeout": "WEBHOOK_KEEP_ALIVE_TIMEOUT",
    "max_header_bytes": "WEBHOOK_MAX_HEADER_BYTES",
    "project_x_base_url": "PROJECT_X_BASE_URL",
    "project_x_username": "PROJECT_X_USERNAME",
    "project_x_api_key": "PROJECT_X_API_KEY",
    "project_x_account": "PROJECT_X_ACCOUNT",
    "project_x_timeout": "PROJECT_X_TIMEOUT",
    "project_x_rate_limit": "PROJECT_X_RATE_LIMIT",
    "project_x_rate_window": "PROJECT_X_RATE_WINDOW",
    "project_x_symbols": "PROJECT_X_SYMBOLS",
}

BROKERS = ("paper", "projectx")
MODES = ("signal", "target")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return _ENV_NAMES.get(field_name, "TRADING_" + field_name.upper())


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
) -> Settings:
    """Build settings from a TOML file (optional) overlaid by the environment.

    Raises ConfigError naming the first bad variable and its value.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, tuple[str, object]] = {}

    path = config_file or (
        Path(env["TRADING_CONFIG_FILE"]) if env.get("TRADING_CONFIG_FILE") else None
    )
    if path is not None:
        for key, value in _read_toml(path).items():
            raw[key] = (f"{path}:{key}", value)

    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")

    for name in known:
        var = env_name(name)
        if var in env:
            raw[name] = (var, env[var])

    # systemd's LoadCredential= hands secrets over as files, which keeps them
    # out of the unit's environment (visible in /proc and `systemctl show`).
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        for name in SECRET_FIELDS:
            cred = Path(cred_dir) / env_name(name)
            # The unit's SetCredential= fallback leaves an empty file when no
            # credential was provided; the environment file's value stands then.
            value = _read_credential(cred)
            if value:
                raw[name] = (str(cred), value)

    # StateDirectory= in the unit is the one place state may live under systemd.
    if env.get("STATE_DIRECTORY"):
        first = env["STATE_DIRECTORY"].split(":")[0]
        raw["state_dir"] = ("STATE_DIRECTORY", first)

    values: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(Settings):
            if f.name in raw:
                source, value = raw[f.name]
                values[f.name] = _convert(f.name, source, value)
        settings = Settings(**values)
        _check(settings)
    except ConfigError as exc:
        # A secret pasted into the wrong variable must not be echoed back.
        raise ConfigError(_without_secrets(str(exc), raw)) from None
    return settings


def _without_secrets(message: str, raw: Mapping[str, tuple[str, object]]) -> str:
    secrets: set[str] = set()
    for name in SECRET_FIELDS & raw.keys():
        value = raw[name][1]
        parts = (
            value if isinstance(value, list) else str(value).replace(",", " ").split()
        )
        secrets.update(str(part) for part in [*parts, value] if len(str(part)) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, SECRET_MASK)
    return message


def _read_credential(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The message names the file, never its content.
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"credential {str(path)!r} cannot be read: {reason}"
        ) from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(
            f"TRADING_CONFIG_FILE: cannot read {str(path)!r}: {exc.strerror}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"TRADING_CONFIG_FILE: {str(path)!r} is not valid TOML: {exc}"
        ) from None


def _shown(name: str, value: object) -> str:
    return SECRET_MASK if name in SECRET_FIELDS else repr(value)


def _convert(name: str, source: str, value: object) -> Any:
    default = next(f for f in dataclasses.fields(Settings) if f.name == name)
    kind = default.type
    shown = _shown(name, value)

    if kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{source} must be a whole number, got {shown}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{source} must be a whole number, got {shown}") from None
    if kind == "float":
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{source} must be a number, got {shown}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{source} must be a finite number, got {shown}")
        return number
    if kind == "Path":
        return Path(str(value))
    if kind == "Mapping[str, float]":
        return _parse_prices(source, value)
    if kind == "Mapping[str, str]":
        return _parse_symbols(source, value)
    if kind == "bool":
        return _parse_bool(source, value, shown)
    if kind == "tuple[str, ...]":
        return _parse_list(value)
    if kind == "tuple[tuple[str, float], ...]":
        return _parse_accounts(source, value)
    return str(value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_bool(source: str, value: object, shown: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ConfigError(f"{source} must be true or false, got {shown}")
    return text in _TRUE


def _parse_list(value: object) -> tuple[str, ...]:
    """A comma- or whitespace-separated string (or a TOML array) as a tuple."""
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    return tuple(str(item).strip() for item in items if str(item).strip())


def _parse_prices(source: str, value: object) -> dict[str, float]:
    """Parse ``MNQ=21000,ES=6000`` (or a TOML table) into root -> price."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            root, sep, price = part.partition("=")
            if not sep:
                raise ConfigError(
                    f"{source} entries must look like ROOT=PRICE, got {part.strip()!r}"
                )
            items.append((root, price))
    prices: dict[str, float] = {}
    for root, price in items:
        try:
            number = float(str(price).strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(
                f"{source} price for {root.strip()!r} must be a positive number,"
                f" got {price!r}"
            )
        if not root.strip():
            raise ConfigError(f"{source} entries need a root symbol, got {price!r}")
        prices[root.strip().upper()] = number
    return prices


def _parse_accounts(source: str, value: object) -> tuple[tuple[str, float], ...]:
    """Parse ``main=1.0,eval2=0.5`` (or a TOML table) into (name, multiplier)."""
    if isinstance(value, dict):
        entries = [(str(k), v) for k, v in value.items()]
    else:
        entries = []
        for part in (p.strip() for p in str(value).split(",")):
            if part:
                name, sep, multiplier = part.partition("=")
                entries.append((name, multiplier if sep else "1"))
    accounts: dict[str, float] = {}
    for name, multiplier in entries:
        name = name.strip()
        try:
            number = float(str(multiplier).strip())
        except ValueError:
            number = math.nan
        if not name:
            raise ConfigError(f"{source} entries need an account name, got {value!r}")
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(
                f"{source} multiplier for {name!r} must be a positive number,"
                f" got {multiplier!r}"
            )
        if name.casefold() in (known.casefold() for known in accounts):
            raise ConfigError(f"{source} names account {name!r} twice")
        accounts[name] = number
    return tuple(accounts.items())


def _parse_symbols(source: str, value: object) -> dict[str, str]:
    """Parse ``NQ=ENQ,ES=EP`` (or a TOML table) into alert root -> gateway root."""
    if isinstance(value, dict):
        entries = [f"{k}={v}" for k, v in value.items()]
    else:
        entries = [part.strip() for part in str(value).split(",") if part.strip()]
    symbols: dict[str, str] = {}
    for entry in entries:
        root, _, gateway = (text.strip() for text in entry.partition("="))
        if not root.isalnum() or not gateway.isalnum():
            raise ConfigError(
                f"{source} entries must look like ROOT=GATEWAYROOT, got {entry!r}"
            )
        symbols[root.upper()] = gateway.upper()
    return symbols


def _check(s: Settings) -> None:
    def fail(name: str, rule: str) -> ConfigError:
        return ConfigError(
            f"{env_name(name)} {rule}, got {_shown(name, getattr(s, name))}"
        )

    if not 0 <= s.webhook_port <= 65535:
        raise fail("webhook_port", "must be a port number from 0 to 65535")
    if not s.webhook_host:
        raise fail("webhook_host", "must not be empty")
    for name in (
        "webhook_backlog",
        "workers",
        "max_concurrent",
        "max_queue",
        "project_x_rate_limit",
    ):
        if getattr(s, name) < 1:
            raise fail(name, "must be at least 1")
    if s.max_body_bytes < 1024:
        raise fail("max_body_bytes", "must be at least 1024")
    if s.max_retries < 0:
        raise fail("max_retries", "must be 0 or more")
    for name in (
        "retry_base_delay",
        "retry_max_delay",
        "retry_jitter",
        "drain_timeout",
        "dedup_window",
        "paper_fill_delay",
        "timeout_critical",
        "timeout_high",
        "timeout_normal",
        "timeout_low",
        "timeout_background",
    ):
        if getattr(s, name) < 0:
            raise fail(name, "must not be negative")
    for name in (
        "fill_check_interval",
        "risk_update_interval",
        "metrics_interval",
        "cleanup_interval",
        "retention_days",
        "paper_default_price",
        "paper_balance",
        "project_x_timeout",
        "project_x_rate_window",
    ):
        if getattr(s, name) <= 0:
            raise fail(name, "must be greater than 0")
    if not 0 <= s.critical_reserve < s.max_concurrent:
        raise fail(
            "critical_reserve",
            f"must be from 0 to TRADING_MAX_CONCURRENT - 1 ({s.max_concurrent - 1})",
        )
    if s.aging_interval < 0:
        raise fail("aging_interval", "must not be negative")
    if s.retry_max_delay < s.retry_base_delay:
        raise fail(
            "retry_max_delay",
            f"must be at least TRADING_RETRY_BASE_DELAY ({s.retry_base_delay:g})",
        )
    if s.broker not in BROKERS:
        raise fail("broker", f"must be one of {', '.join(BROKERS)}")
    if s.log_level.upper() not in LOG_LEVELS:
        raise fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    _check_trading(s)
    if s.broker == "projectx":
        for name in ("project_x_username", "project_x_api_key"):
            if not getattr(s, name):
                raise ConfigError(
                    f"{env_name(name)} is required when TRADING_BROKER=projectx"
                )
    _check_http(s)


def _check_trading(s: Settings) -> None:
    """Order intent and risk limits (intent.py, risk.py)."""

    def fail(name: str, rule: str) -> ConfigError:
        return ConfigError(
            f"{env_name(name)} {rule}, got {_shown(name, getattr(s, name))}"
        )

    if s.default_mode not in MODES:
        raise fail("default_mode", f"must be one of {', '.join(MODES)}")
    if s.max_pyramid < 1:
        raise fail("max_pyramid", "must be at least 1")
    for name in ("max_order_size", "max_position", "max_daily_loss"):
        if getattr(s, name) < 0:
            raise fail(name, "must be 0 (off) or more")
    try:
        parse_hours(s.trading_hours)
    except ValueError as exc:
        raise ConfigError(f"{env_name('trading_hours')} {exc}") from None


def _check_http(s: Settings) -> None:
    """The listener's limits and who may talk to it (see auth.py)."""

    def fail(name: str, rule: str) -> ConfigError:
        return ConfigError(
            f"{env_name(name)} {rule}, got {_shown(name, getattr(s, name))}"
        )

    if s.max_connections < 1:
        raise fail("max_connections", "must be at least 1")
    if s.max_header_bytes < 1024:
        raise fail("max_header_bytes", "must be at least 1024")
    for name in ("read_timeout", "keep_alive_timeout"):
        if getattr(s, name) <= 0:
            raise fail(name, "must be greater than 0")
    if s.rate_limit < 0:
        raise fail("rate_limit", "must be 0 (off) or more")
    for name, presets in (("allowed_sources", True), ("trusted_proxies", False)):
        try:
            parse_networks(getattr(s, name), presets=presets)
        except ValueError as exc:
            raise ConfigError(f"{env_name(name)} {exc}") from None

    for name in ("webhook_secret", "webhook_token", "admin_token"):
        length = len(getattr(s, name))
        if 0 < length < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{env_name(name)} must be at least {MIN_SECRET_LENGTH} characters,"
                f" got {length}"
            )
    for index, secret in enumerate(s.webhook_signing_secrets, 1):
        try:
            signing_key(secret)
        except ValueError as exc:
            raise ConfigError(
                f"TRADING_WEBHOOK_SIGNING_SECRETS entry {index} {exc}"
            ) from None
    if s.admin_token and s.admin_token in (s.webhook_secret, s.webhook_token):
        # The webhook secret sits in every TradingView alert template; it must
        # not also unlock /dead-letters replays.
        raise ConfigError(
            "TRADING_ADMIN_TOKEN must differ from TRADING_WEBHOOK_SECRET and"
            " TRADING_WEBHOOK_TOKEN"
        )
    if not s.status_public and not s.admin_token:
        raise ConfigError("TRADING_STATUS_PUBLIC=false needs TRADING_ADMIN_TOKEN")
    # An address allowlist does not count: TradingView posts for anyone who
    # has an account, from the same four addresses.
    if s.broker != "paper" and not (
        s.webhook_secret or s.webhook_token or s.webhook_signing_secrets
    ):
        raise ConfigError(
            f"TRADING_BROKER={s.broker} places real orders, so webhook"
            " authentication is required: set TRADING_WEBHOOK_SECRET,"
            " TRADING_WEBHOOK_TOKEN or TRADING_WEBHOOK_SIGNING_SECRETS"
        )
