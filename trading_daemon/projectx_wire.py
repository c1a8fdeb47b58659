"""The ProjectX Gateway's wire format, read into the broker interface's types.

Field names, codes and enums are the gateway's (see its swagger); nothing
here talks to the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from .broker import Account, Contract, OrderResult, OrderStatus, Position, Side, Trade
from .projectx_client import GatewayError, Json, ProjectXError

MARKET_ORDER = 2
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


def order(raw: Json, symbols: Symbols) -> OrderResult:
    price = raw.get("filledPrice")
    status = raw.get("status")
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
