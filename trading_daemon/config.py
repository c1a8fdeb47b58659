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

from .priority import Priority

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

    broker: str = "paper"
    state_dir: Path = Path("state")

    workers: int = 5
    max_concurrent: int = 20
    max_queue: int = 1000
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

    def timeout_for(self, priority: Priority) -> float | None:
        """The run-time limit of one attempt at ``priority``; None means unlimited."""
        value: float = getattr(self, f"timeout_{priority.name.lower()}")
        return value if value > 0 else None

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
            out[f.name] = value
        return out


SECRET_FIELDS = frozenset({"project_x_api_key"})

# Variables outside the TRADING_ prefix: DESIGN.md names these exactly.
_ENV_NAMES = {
    "webhook_host": "WEBHOOK_HOST",
    "webhook_port": "WEBHOOK_PORT",
    "webhook_backlog": "WEBHOOK_BACKLOG",
    "max_body_bytes": "WEBHOOK_MAX_BODY_BYTES",
    "project_x_base_url": "PROJECT_X_BASE_URL",
    "project_x_username": "PROJECT_X_USERNAME",
    "project_x_api_key": "PROJECT_X_API_KEY",
    "project_x_account": "PROJECT_X_ACCOUNT",
}

# The ProjectX adapter arrives with issue #4.
BROKERS = ("paper",)
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
    for f in dataclasses.fields(Settings):
        if f.name in raw:
            source, value = raw[f.name]
            values[f.name] = _convert(f.name, source, value)

    settings = Settings(**values)
    _check(settings)
    return settings


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
    except tomllib.TOMLDecodeError as exc:
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
    return str(value)


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


def _check(s: Settings) -> None:
    def fail(name: str, rule: str) -> ConfigError:
        return ConfigError(
            f"{env_name(name)} {rule}, got {_shown(name, getattr(s, name))}"
        )

    if not 0 <= s.webhook_port <= 65535:
        raise fail("webhook_port", "must be a port number from 0 to 65535")
    if not s.webhook_host:
        raise fail("webhook_host", "must not be empty")
    for name in ("webhook_backlog", "workers", "max_concurrent", "max_queue"):
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
    ):
        if getattr(s, name) <= 0:
            raise fail(name, "must be greater than 0")
    if s.broker not in BROKERS:
        raise fail("broker", f"must be one of {', '.join(BROKERS)}")
    if s.log_level.upper() not in LOG_LEVELS:
        raise fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if s.broker == "projectx":
        for name in ("project_x_username", "project_x_api_key"):
            if not getattr(s, name):
                raise ConfigError(
                    f"{env_name(name)} is required when TRADING_BROKER=projectx"
                )
