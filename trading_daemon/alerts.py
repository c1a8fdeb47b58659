"""Alerts: turn the body a provider POSTed into a validated, normalised signal.

TradingView sends the alert text as the body and labels it text/plain whenever
the text is not valid JSON to it, so the body is parsed as JSON whatever the
Content-Type says. Placeholders are plain text substitution: quantities arrive
as "1" or "1.0", tickers as ``MNQ1!``, ``MNQZ2025`` or ``CME_MINI:MNQ1!``.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_QUANTITY = 10_000
MAX_ID_LENGTH = 128


class AlertError(ValueError):
    """The alert is unusable; ``field`` and ``value`` say where and what."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None):
        super().__init__(message)
        self.field = field
        self.value = value

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            body["field"] = self.field
        return body


class Action(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"
    CLOSE = "close"


_ACTIONS = {
    "buy": Action.BUY,
    "long": Action.BUY,
    "sell": Action.SELL,
    "short": Action.SELL,
    "close": Action.CLOSE,
    "exit": Action.CLOSE,
    "flat": Action.CLOSE,
}

# Roots this daemon knows by name; other roots still parse by pattern.
KNOWN_ROOTS = frozenset(
    {
        "MNQ", "NQ", "MES", "ES", "M2K", "RTY", "MYM", "YM", "MGC", "GC", "SI",
        "SIL", "MCL", "CL", "QM", "NG", "HG", "ZB", "ZN", "ZF", "ZT", "UB", "6E",
        "6J", "6B", "6A", "6C", "M6E", "MBT", "MET", "ZC", "ZS", "ZW", "HE", "LE",
    }
)  # fmt: skip

# CME month codes; a dated contract is ROOT + month + 1, 2 or 4 year digits.
_DATED = re.compile(r"^(?P<root>[A-Z0-9]+?)[FGHJKMNQUVXZ](?:\d|\d{2}|\d{4})$")
_CONTINUOUS = re.compile(r"^(?P<root>[A-Z0-9]+?)\d+!$")
_ROOT = re.compile(r"^(?=.*[A-Z])[A-Z0-9]{1,6}$")


@dataclass(frozen=True)
class Signal:
    """A validated alert: what to do, on which root symbol, how many contracts."""

    action: Action
    symbol: str
    quantity: int | None
    alert_id: str | None = None
    raw_symbol: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "symbol": self.symbol,
            "quantity": self.quantity,
            "alert_id": self.alert_id,
            "raw_symbol": self.raw_symbol,
            "extra": self.extra,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Signal:
        return cls(
            action=Action(payload["action"]),
            symbol=payload["symbol"],
            quantity=payload["quantity"],
            alert_id=payload.get("alert_id"),
            raw_symbol=payload.get("raw_symbol", ""),
            extra=dict(payload.get("extra") or {}),
        )


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode a webhook body into a JSON object, or raise AlertError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AlertError("body must be UTF-8 text") from None
    if not text.strip():
        raise AlertError("body is empty; expected a JSON object")

    try:
        data = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as exc:
        raise AlertError(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except AlertError:
        raise
    except RecursionError:
        raise AlertError("body is nested too deeply") from None
    except ValueError as exc:
        # Out-of-range integers and NaN/Infinity land here.
        raise AlertError(f"body is not acceptable JSON: {exc}") from None

    if not isinstance(data, dict):
        raise AlertError(f"body must be a JSON object, got a JSON {_json_type(data)}")
    return data


def parse_signal(data: dict[str, Any]) -> Signal:
    """Validate a decoded alert into a Signal, or raise AlertError."""
    action = _action(data.get("action"))
    symbol, raw_symbol = _symbol(data.get("symbol", data.get("ticker")))
    quantity = _quantity(data.get("quantity", data.get("qty")), required=action)
    alert_id = _alert_id(data.get("id"))
    known = {"action", "symbol", "ticker", "quantity", "qty", "id"}
    extra = {k: v for k, v in data.items() if k not in known}

    return Signal(
        action=action,
        symbol=symbol,
        quantity=quantity,
        alert_id=alert_id,
        raw_symbol=raw_symbol,
        extra=extra,
    )


def parse_alert(body: bytes) -> Signal:
    return parse_signal(parse_body(body))


def normalise_symbol(raw: str) -> str:
    """The root symbol of a ticker: ``CME_MINI:MNQ1!`` and ``MNQZ2025`` give MNQ."""
    text = raw.strip().upper()
    if ":" in text:
        text = text.rsplit(":", 1)[1]
    # A known root followed by digits is a continuous contract with its "!"
    # dropped (MNQ1); only then try month-and-year codes, which would read
    # MNQ1 as root MN, month Q, year 1.
    bare = text.rstrip("!").rstrip("0123456789")
    if bare in KNOWN_ROOTS and text.rstrip("!") != bare:
        return bare
    for pattern in (_CONTINUOUS, _DATED):
        match = pattern.match(text)
        if match:
            text = match.group("root")
            break
    if not _ROOT.match(text):
        raise AlertError(
            f"symbol must be a futures ticker such as MNQ, MNQ1! or MNQZ2025, "
            f"got {raw!r}",
            field="symbol",
            value=raw,
        )
    return text


def _action(value: Any) -> Action:
    if value is None:
        raise AlertError("action is required", field="action")
    if not isinstance(value, str):
        raise AlertError(
            f"action must be a string, got {_shown(value)}", field="action", value=value
        )
    action = _ACTIONS.get(value.strip().lower())
    if action is None:
        raise AlertError(
            f"action must be one of {', '.join(_ACTIONS)}, got {_shown(value)}",
            field="action",
            value=value,
        )
    return action


def _symbol(value: Any) -> tuple[str, str]:
    if value is None:
        raise AlertError("symbol is required", field="symbol")
    if not isinstance(value, str):
        raise AlertError(
            f"symbol must be a string, got {_shown(value)}", field="symbol", value=value
        )
    return normalise_symbol(value), value


def _quantity(value: Any, *, required: Action) -> int | None:
    if value is None:
        if required is Action.CLOSE:
            return None
        raise AlertError(f"quantity is required for {required.value}", field="quantity")

    number: float
    if isinstance(value, bool):
        number = math.nan
    elif isinstance(value, int):
        # Clamp so a 400-digit integer still gets the "at most" message
        # instead of overflowing the float checks below.
        number = float(max(min(value, 2**53), -(2**53)))
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            # ASCII only: float() would also take other scripts' digits.
            ok = len(text) <= 32 and text.isascii()
            number = float(text) if ok else math.nan
        except ValueError:
            number = math.nan
    else:
        number = math.nan

    if not math.isfinite(number) or number != int(number) or number <= 0:
        raise AlertError(
            "quantity must be a positive whole number of contracts, "
            f"got {_shown(value)}",
            field="quantity",
            value=value,
        )
    if number > MAX_QUANTITY:
        raise AlertError(
            f"quantity must be at most {MAX_QUANTITY}, got {_shown(value)}",
            field="quantity",
            value=value,
        )
    return int(number)


def _alert_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AlertError(
            f"id must be a string or a whole number, got {_shown(value)}",
            field="id",
            value=value,
        )
    text = str(value).strip()
    if not text or len(text) > MAX_ID_LENGTH:
        raise AlertError(
            f"id must be 1 to {MAX_ID_LENGTH} characters, got {len(text)}",
            field="id",
        )
    return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"action":"buy","action":"sell"} would silently sell; refuse instead.
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise AlertError(f"field {key!r} appears more than once", field=key)
        data[key] = value
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _shown(value: Any, limit: int = 40) -> str:
    """A short repr of a bad value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
