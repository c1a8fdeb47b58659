"""Alerts: turn the body a provider POSTed into a validated, normalised signal.

TradingView sends the alert text as the body and labels it text/plain whenever
the text is not valid JSON to it, so the body is parsed as JSON whatever the
Content-Type says. Placeholders are plain text substitution: quantities arrive
as "1" or "1.0", tickers as ``MNQ1!``, ``MNQZ2025`` or ``CME_MINI:MNQ1!``.

Besides what to do, an alert may say how (order type, prices, a protective
bracket), for which account, and what position the strategy means to hold
(``market_position`` and ``market_position_size``, or a signed
``position_size``): intent.py turns that into orders.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .broker import Bracket, OrderType

MAX_QUANTITY = 10_000
MAX_ID_LENGTH = 128
MAX_ACCOUNT_LENGTH = 64
MAX_BRACKET_TICKS = 100_000


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
    REVERSE = "reverse"
    CANCEL = "cancel"


class Mode(enum.StrEnum):
    """How an alert is read: as an order to act on, or as the position to hold."""

    SIGNAL = "signal"
    TARGET = "target"


_ACTIONS = {
    "buy": Action.BUY,
    "long": Action.BUY,
    "sell": Action.SELL,
    "short": Action.SELL,
    "close": Action.CLOSE,
    "exit": Action.CLOSE,
    "flat": Action.CLOSE,
    "reverse": Action.REVERSE,
    "cancel": Action.CANCEL,
}
_MARKET_POSITIONS = {"long": 1, "short": -1, "flat": 0}
_ORDER_TYPES = {t.value: t for t in OrderType}

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
    """A validated alert: what to do, on which root symbol, how many contracts.

    ``target`` is the signed position the strategy means to hold, when the
    alert says so; ``mode`` is set only when the alert chose one itself.
    """

    action: Action
    symbol: str
    quantity: int | None
    alert_id: str | None = None
    raw_symbol: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    mode: Mode | None = None
    target: int | None = None
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    stop_price: float | None = None
    reference_price: float | None = None
    bracket: Bracket | None = None
    account: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "symbol": self.symbol,
            "quantity": self.quantity,
            "alert_id": self.alert_id,
            "raw_symbol": self.raw_symbol,
            "extra": self.extra,
            "mode": None if self.mode is None else self.mode.value,
            "target": self.target,
            "order_type": self.order_type.value,
            "limit_price": self.limit_price,
            "stop_price": self.stop_price,
            "reference_price": self.reference_price,
            "bracket": None if self.bracket is None else self.bracket.as_dict(),
            "account": self.account,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Signal:
        # Journals written before order intents lack the later keys.
        mode = payload.get("mode")
        return cls(
            action=Action(payload["action"]),
            symbol=payload["symbol"],
            quantity=payload["quantity"],
            alert_id=payload.get("alert_id"),
            raw_symbol=payload.get("raw_symbol", ""),
            extra=dict(payload.get("extra") or {}),
            mode=None if mode is None else Mode(mode),
            target=payload.get("target"),
            order_type=OrderType(payload.get("order_type", OrderType.MARKET)),
            limit_price=payload.get("limit_price"),
            stop_price=payload.get("stop_price"),
            reference_price=payload.get("reference_price"),
            bracket=Bracket.from_dict(payload.get("bracket")),
            account=payload.get("account"),
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
        if "integer string conversion" in str(exc):
            # Python will not read an integer of more digits than this; its
            # message names an interpreter setting, which means nothing to a
            # sender.
            limit = sys.get_int_max_str_digits()
            raise AlertError(
                f"body holds a number of more than {limit} digits; none of an"
                " alert's fields needs one"
            ) from None
        # NaN and Infinity (refused by _refuse_constant) land here.
        raise AlertError(f"body is not acceptable JSON: {exc}") from None

    if not isinstance(data, dict):
        raise AlertError(f"body must be a JSON object, got a JSON {_json_type(data)}")
    return data


_KNOWN_FIELDS = frozenset(
    {
        "action", "symbol", "ticker", "quantity", "qty", "id", "mode",
        "market_position", "market_position_size", "position_size", "order_type",
        "price", "limit_price", "stop_price", "stop_loss", "stop_loss_price",
        "stop_loss_ticks", "take_profit", "take_profit_price", "take_profit_ticks",
        "account",
    }
)  # fmt: skip


def parse_signal(data: dict[str, Any]) -> Signal:
    """Validate a decoded alert into a Signal, or raise AlertError."""
    action = _action(data.get("action"))
    symbol, raw_symbol = _symbol(data.get("symbol", data.get("ticker")))
    mode = _mode(data.get("mode"))
    target = _target(data)
    if mode is Mode.TARGET and target is None:
        raise AlertError(
            "mode target needs market_position (with market_position_size)"
            " or position_size",
            field="mode",
        )
    # A target alone says how much to trade; otherwise buy and sell need a size.
    needs_quantity = action in (Action.BUY, Action.SELL) and (
        target is None or mode is Mode.SIGNAL
    )
    quantity = _quantity(
        data.get("quantity", data.get("qty")), action=action, required=needs_quantity
    )
    order_type, limit_price, stop_price = _order_type(data)
    extra = {k: v for k, v in data.items() if k not in _KNOWN_FIELDS}

    return Signal(
        action=action,
        symbol=symbol,
        quantity=quantity,
        alert_id=_alert_id(data.get("id")),
        raw_symbol=raw_symbol,
        extra=extra,
        mode=mode,
        target=target,
        order_type=order_type,
        limit_price=limit_price,
        stop_price=stop_price,
        reference_price=_price(data, "price"),
        bracket=_bracket(data),
        account=_account(data.get("account")),
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


def _quantity(value: Any, *, action: Action, required: bool) -> int | None:
    if value is None:
        if not required:
            return None
        raise AlertError(f"quantity is required for {action.value}", field="quantity")

    number = _number(value)
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


def _number(value: Any) -> float:
    """A JSON number or numeric string as a float; NaN for anything else."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int):
        # Clamp so a 400-digit integer still gets the "at most" message
        # instead of overflowing the float checks after this.
        return float(max(min(value, 2**53), -(2**53)))
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        text = value.strip()
        # ASCII only: float() would also take other scripts' digits.
        if len(text) > 32 or not text.isascii():
            return math.nan
        try:
            return float(text)
        except ValueError:
            return math.nan
    return math.nan


def _whole(value: Any, name: str, *, signed: bool = False) -> int:
    """A whole number of contracts, 0 included; negative only if ``signed``."""
    number = _number(value)
    low = -MAX_QUANTITY if signed else 0
    if not math.isfinite(number) or number != int(number) or number < low:
        kind = "a whole number" if signed else "a whole number, 0 or more"
        raise AlertError(
            f"{name} must be {kind} of contracts, got {_shown(value)}",
            field=name,
            value=value,
        )
    if abs(number) > MAX_QUANTITY:
        raise AlertError(
            f"{name} must be at most {MAX_QUANTITY} contracts, got {_shown(value)}",
            field=name,
            value=value,
        )
    return int(number)


def _mode(value: Any) -> Mode | None:
    if value is None:
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in ("signal", "target"):
        raise AlertError(
            f"mode must be signal or target, got {_shown(value)}",
            field="mode",
            value=value,
        )
    return Mode(text)


def _target(data: dict[str, Any]) -> int | None:
    """The signed position the strategy holds after this alert, if it says."""
    position = data.get("market_position")
    size = data.get("market_position_size")
    signed = data.get("position_size")
    target: int | None = None

    if position is not None:
        text = position.strip().lower() if isinstance(position, str) else None
        if text not in _MARKET_POSITIONS:
            raise AlertError(
                f"market_position must be long, short or flat, got {_shown(position)}",
                field="market_position",
                value=position,
            )
        direction = _MARKET_POSITIONS[text]
        amount = 0 if size is None else _whole(size, "market_position_size")
        if direction and not amount:
            raise AlertError(
                f"market_position {text} needs a market_position_size of 1 or more,"
                f" got {_shown(size)}",
                field="market_position_size",
                value=size,
            )
        if not direction and amount:
            raise AlertError(
                "market_position flat needs market_position_size 0,"
                f" got {_shown(size)}",
                field="market_position_size",
                value=size,
            )
        target = direction * amount
    elif size is not None:
        raise AlertError(
            "market_position_size needs market_position (long, short or flat)",
            field="market_position",
        )

    if signed is not None:
        from_signed = _whole(signed, "position_size", signed=True)
        if target is not None and target != from_signed:
            raise AlertError(
                f"position_size {from_signed} contradicts market_position"
                f" {position!s} {size!s}",
                field="position_size",
                value=signed,
            )
        target = from_signed
    return target


def _price(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    number = _number(value)
    if not math.isfinite(number) or number <= 0:
        raise AlertError(
            f"{name} must be a positive price, got {_shown(value)}",
            field=name,
            value=value,
        )
    return number


def _order_type(data: dict[str, Any]) -> tuple[OrderType, float | None, float | None]:
    """The entry's order type with its limit and stop prices."""
    raw = data.get("order_type")
    limit_price = _price(data, "limit_price")
    stop_price = _price(data, "stop_price")
    if limit_price is not None and stop_price is not None:
        raise AlertError(
            "limit_price and stop_price together make a stop-limit order,"
            " which is not supported",
            field="stop_price",
        )

    if raw is None:
        if limit_price is not None:
            return OrderType.LIMIT, limit_price, None
        if stop_price is not None:
            return OrderType.STOP, None, stop_price
        return OrderType.MARKET, None, None
    kind = _ORDER_TYPES.get(raw.strip().lower()) if isinstance(raw, str) else None
    if kind is None:
        raise AlertError(
            f"order_type must be market, limit or stop, got {_shown(raw)}",
            field="order_type",
            value=raw,
        )

    if kind is OrderType.LIMIT:
        # TradingView's {{strategy.order.price}} usually arrives as "price".
        limit_price = limit_price or _price(data, "price")
        if limit_price is None:
            raise AlertError(
                "order_type limit needs limit_price (or price)", field="limit_price"
            )
    elif kind is OrderType.STOP and stop_price is None:
        raise AlertError("order_type stop needs stop_price", field="stop_price")
    for name, price, wanted in (
        ("limit_price", limit_price, OrderType.LIMIT),
        ("stop_price", stop_price, OrderType.STOP),
    ):
        if price is not None and kind is not wanted:
            raise AlertError(
                f"{name} does not go with order_type {kind.value}", field=name
            )
    return kind, limit_price, stop_price


def _bracket(data: dict[str, Any]) -> Bracket | None:
    legs: dict[str, Any] = {}
    for leg in ("stop_loss", "take_profit"):
        ticks_name = f"{leg}_ticks"
        prices = [n for n in (leg, f"{leg}_price") if data.get(n) is not None]
        if len(prices) > 1:
            raise AlertError(f"give {leg} or {leg}_price, not both", field=leg)
        price = _price(data, prices[0]) if prices else None
        ticks = data.get(ticks_name)
        if ticks is not None and price is not None:
            raise AlertError(
                f"{leg} is given in ticks and as a price; give one", field=ticks_name
            )
        if ticks is not None:
            number = _number(ticks)
            if not (
                math.isfinite(number)
                and number == int(number)
                and 1 <= number <= MAX_BRACKET_TICKS
            ):
                raise AlertError(
                    f"{ticks_name} must be a whole number of ticks from 1 to"
                    f" {MAX_BRACKET_TICKS}, got {_shown(ticks)}",
                    field=ticks_name,
                    value=ticks,
                )
            legs[ticks_name] = int(number)
        if price is not None:
            legs[f"{leg}_price"] = price
    return Bracket(**legs) if legs else None


def _account(value: Any) -> str | None:
    return _name(value, "account", "an account name or id", MAX_ACCOUNT_LENGTH)


def _alert_id(value: Any) -> str | None:
    return _name(value, "id", "a string or a whole number", MAX_ID_LENGTH)


def _name(value: Any, field: str, kinds: str, limit: int) -> str | None:
    """A short identifier given as a string or an integer, stripped."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AlertError(
            f"{field} must be {kinds}, got {_shown(value)}", field=field, value=value
        )
    text = str(value).strip()
    if not text or len(text) > limit:
        raise AlertError(
            f"{field} must be 1 to {limit} characters, got {len(text)}", field=field
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
