"""The ProjectX Gateway's wire format, read into the broker interface's types.

Field names, codes and enums are the gateway's (see its swagger); nothing
here talks to the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from .broker import (
    Account,
    Contract,
    OrderRequest,
    OrderResult,
    OrderStatus,
    OrderType,
    Position,
    Side,
    Trade,
)
from .projectx_client import GatewayError, Json, ProjectXError

LIMIT_ORDER, MARKET_ORDER, STOP_ORDER = 1, 2, 4
_TYPE_CODES = {
    OrderType.LIMIT: LIMIT_ORDER,
    OrderType.MARKET: MARKET_ORDER,
    OrderType.STOP: STOP_ORDER,
}
_TYPES = {code: kind for kind, code in _TYPE_CODES.items()}
BUY_SIDE, SELL_SIDE = 0, 1
LONG = 1

PLACE_ERRORS = {
    1: "AccountNotFound",
    2: "OrderRejected",
    3: "InsufficientFunds",
    4: "AccountViolation",
    5: "OutsideTradingHours",
    6: "OrderPending",
    7: "UnknownError",
    8: "ContractNotFound",
    9: "ContractNotActive",
    10: "AccountRejected",
}
ORDER_REJECTED = 2
CONTRACT_NOT_FOUND = 8
CONTRACT_NOT_ACTIVE = 9
# Position/closeContract: there is nothing (any more) to close.
POSITION_NOT_FOUND = 2

# Gateway order status -> ours. 0 None, 1 Open, 6 Pending, 7 PendingCancellation
# and 8 Suspended may still fill, so they are working.
_STATUS = {
    2: OrderStatus.FILLED,
    3: OrderStatus.CANCELLED,
    4: OrderStatus.CANCELLED,  # Expired
    5: OrderStatus.REJECTED,
}

# TradingView roots whose ProjectX root differs (F.US.ENQ is the E-mini
# Nasdaq-100); PROJECT_X_SYMBOLS adds to or overrides these.
DEFAULT_SYMBOLS: Mapping[str, str] = {"NQ": "ENQ", "ES": "EP", "GC": "GCE"}


class Symbols:
    """Alert roots (MNQ, NQ) and the gateway's roots (MNQ, ENQ), both ways."""

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        extra = {k.upper(): v.upper() for k, v in (overrides or {}).items()}
        self._gateway = {**DEFAULT_SYMBOLS, **extra}
        self._ours = {gateway: ours for ours, gateway in self._gateway.items()}

    def gateway_root(self, symbol: str) -> str:
        symbol = symbol.upper()
        return self._gateway.get(symbol, symbol)

    def symbol_id(self, symbol: str) -> str:
        """The gateway's symbolId for an alert root: F.US.ENQ for NQ."""
        return f"F.US.{self.gateway_root(symbol)}"

    def of_contract(self, contract_id: object) -> str:
        """The alert root for a contract id such as CON.F.US.ENQ.H25 (NQ)."""
        text = str(contract_id or "")
        parts = text.split(".")
        root = parts[3] if len(parts) >= 5 and parts[0] == "CON" else text
        return self._ours.get(root, root)


def items(data: Json, key: str) -> list[Json]:
    """The list of objects under ``key``; an absent or null list is empty."""
    found = data.get(key)
    if found is None:
        return []
    if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
        raise ProjectXError(f"the answer's {key!r} is not a list of objects")
    return found


def stamp(moment: datetime) -> str:
    return moment.isoformat()


def moment(value: object) -> datetime | None:
    """A gateway timestamp ("2025-01-21T16:13:52.523293+00:00"), None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def account(raw: Json) -> Account:
    return Account(
        id=str(raw.get("id")),
        name=str(raw.get("name") or ""),
        balance=float(raw.get("balance") or 0.0),
        can_trade=raw.get("canTrade") is True,
    )


def active_contract(data: Json, symbol: str, symbols: Symbols) -> Contract | None:
    """The active month of ``symbol`` in a Contract/search answer, if listed.

    The search is by text ("NQ" finds MNQ too) and lists later months as
    well: only the active contract of exactly this root will do.
    """
    symbol_id = symbols.symbol_id(symbol)
    for raw in items(data, "contracts"):
        if raw.get("symbolId") == symbol_id and raw.get("activeContract") is True:
            return Contract(
                id=str(raw.get("id")),
                symbol=symbol.upper(),
                name=str(raw.get("name") or raw.get("id")),
                tick_size=float(raw.get("tickSize") or 0.0),
                tick_value=float(raw.get("tickValue") or 0.0),
            )
    return None


class BracketError(ValueError):
    """A bracket that cannot be put in the gateway's terms."""


def order_fields(request: OrderRequest, tick_size: float) -> Json:
    """Order/place's type, prices and bracket fields for ``request``.

    The gateway takes a bracket as ticks from the fill, signed by side
    (observed): a buy's stop loss is negative, its take profit positive. A
    bracket given as prices is turned into ticks from the entry's price (its
    limit or stop, or the alert's reference price for a market order); a price
    on the wrong side gives ticks of the wrong sign, which the gateway refuses.
    """
    kind = request.order_type
    fields: Json = {
        "type": _TYPE_CODES[kind],
        "limitPrice": request.limit_price if kind is OrderType.LIMIT else None,
        "stopPrice": request.stop_price if kind is OrderType.STOP else None,
        "trailPrice": None,
    }
    bracket = request.bracket
    if bracket is None:
        return fields
    b, sign = bracket, request.side.sign
    entry = request.limit_price or request.stop_price or request.reference_price
    for name, ticks, price, direction, leg_type in (
        ("stopLossBracket", b.stop_loss_ticks, b.stop_loss_price, -1, STOP_ORDER),
        ("takeProfitBracket", b.take_profit_ticks, b.take_profit_price, 1, LIMIT_ORDER),
    ):
        if ticks is not None:
            signed = direction * sign * ticks
        elif price is not None:
            if entry is None or tick_size <= 0:
                raise BracketError(
                    "a bracket given as a price needs the entry's price: send"
                    " price with a market order, or give the bracket in ticks"
                )
            signed = round((price - entry) / tick_size)
        else:
            continue
        fields[name] = {"ticks": signed, "type": leg_type}
    return fields


def order(raw: Json, symbols: Symbols) -> OrderResult:
    price = raw.get("filledPrice")
    status = raw.get("status")
    kind = _TYPES.get(raw.get("type"), OrderType.MARKET)  # type: ignore[arg-type]
    resting = raw.get("limitPrice") if kind is OrderType.LIMIT else raw.get("stopPrice")
    return OrderResult(
        order_id=str(raw.get("id")),
        client_id=str(raw.get("customTag") or ""),
        symbol=symbols.of_contract(raw.get("contractId")),
        side=side(raw.get("side")),
        size=int(raw.get("size") or 0),
        status=_STATUS.get(status, OrderStatus.WORKING)
        if isinstance(status, int)
        else OrderStatus.WORKING,
        filled_size=int(raw.get("fillVolume") or 0),
        fill_price=None if price is None else float(price),
        order_type=kind,
        price=None if resting is None else float(resting),
    )


def trades(data: Json, symbols: Symbols) -> list[Trade]:
    """The trades of a Trade/search answer, voided ones left out, oldest first."""
    found = [
        Trade(
            id=str(raw.get("id")),
            order_id=str(raw.get("orderId")),
            symbol=symbols.of_contract(raw.get("contractId")),
            side=side(raw.get("side")),
            size=int(raw.get("size") or 0),
            price=float(raw.get("price") or 0.0),
            profit_and_loss=raw.get("profitAndLoss"),
            fees=float(raw.get("fees") or 0.0),
            at=moment(raw.get("creationTimestamp")),
        )
        for raw in items(data, "trades")
        if raw.get("voided") is not True
    ]
    return sorted(found, key=lambda trade: _numeric(trade.id))


def positions(
    data: Json, symbols: Symbols
) -> tuple[list[Position], list[tuple[str, str]]]:
    """Net positions per alert root, and each (root, contract id) held.

    After a roll one root can be held in two months; its position is their
    net size at their size-weighted average price.
    """
    books: dict[str, tuple[int, float, int]] = {}
    held: list[tuple[str, str]] = []
    for raw in items(data, "positions"):
        symbol = symbols.of_contract(raw.get("contractId"))
        size = int(raw.get("size") or 0)
        signed = size if raw.get("type") == LONG else -size
        price = float(raw.get("averagePrice") or 0.0)
        net, cost, gross = books.get(symbol, (0, 0.0, 0))
        books[symbol] = (net + signed, cost + price * size, gross + size)
        held.append((symbol, str(raw.get("contractId") or "")))
    found = [
        Position(symbol, net, cost / gross if gross else 0.0)
        for symbol, (net, cost, gross) in sorted(books.items())
    ]
    return found, held


def side(value: object) -> Side:
    return Side.BUY if value == BUY_SIDE else Side.SELL


def side_code(value: Side) -> int:
    return BUY_SIDE if value is Side.BUY else SELL_SIDE


def refusal(exc: GatewayError) -> str:
    """The text of a refusal: the error's name where known, code and message."""
    name = PLACE_ERRORS.get(exc.code) if exc.endpoint == "Order/place" else None
    label = f"{name} (errorCode {exc.code})" if name else f"errorCode {exc.code}"
    return f"{label}: {exc.message}" if exc.message else label


def _numeric(text: str) -> tuple[int, str]:
    """A sort key that orders gateway ids ("9" before "10") as numbers."""
    return (int(text), "") if text.isdigit() else (0, text)
