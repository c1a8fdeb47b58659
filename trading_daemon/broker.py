"""The broker interface that every broker implementation provides."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class OrderStatus(enum.StrEnum):
    WORKING = "working"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        """True once the order can no longer fill."""
        return self is not OrderStatus.WORKING


class BrokerRefusal(Exception):
    """The broker refused the request for a business reason; retrying won't help."""


class BrokerSetupError(Exception):
    """The broker cannot be used as configured: credentials, account, permissions."""


@dataclass(frozen=True)
class Bracket:
    """Protective exits placed with an entry: each leg in ticks or at a price.

    Ticks are distances from the entry's fill, always positive here; a broker
    that wants them signed by side (ProjectX) signs them itself.
    """

    stop_loss_ticks: int | None = None
    take_profit_ticks: int | None = None
    stop_loss_price: float | None = None
    take_profit_price: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Bracket | None:
        return cls(**data) if data else None


@dataclass(frozen=True)
class OrderRequest:
    """An order for ``size`` contracts of ``symbol`` (a root such as MNQ).

    ``client_id`` is deterministic for the task that places the order: a broker
    that has seen it already answers with the earlier order instead of placing a
    second one. ``reference_price`` is the price a market order is expected
    near (the alert's price), from which a bracket given in prices is measured.
    """

    symbol: str
    side: Side
    size: int
    client_id: str
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    stop_price: float | None = None
    bracket: Bracket | None = None
    reference_price: float | None = None


@dataclass(frozen=True)
class OrderResult:
    order_id: str
    client_id: str
    symbol: str
    side: Side
    size: int
    status: OrderStatus
    filled_size: int = 0
    fill_price: float | None = None
    order_type: OrderType = OrderType.MARKET
    # The limit or stop price of a resting order.
    price: float | None = None

    @property
    def partially_filled(self) -> bool:
        return 0 < self.filled_size < self.size


@dataclass(frozen=True)
class Account:
    """A broker account as the broker lists it."""

    id: str
    name: str
    balance: float
    can_trade: bool


@dataclass(frozen=True)
class Contract:
    """What an order on ``symbol`` (a root such as MNQ) trades right now.

    Futures roll: the id of a root's active month changes every few months, so
    it is resolved at run time and never written into configuration.
    """

    id: str
    symbol: str
    name: str
    tick_size: float
    tick_value: float


@dataclass(frozen=True)
class Trade:
    """One execution; ``profit_and_loss`` is None when it opened a position."""

    id: str
    order_id: str
    symbol: str
    side: Side
    size: int
    price: float
    profit_and_loss: float | None = None
    fees: float = 0.0
    # When it happened (UTC), which places it in an exchange trading day.
    at: datetime | None = None


@dataclass(frozen=True)
class FillReport:
    """What one fill check found that the previous one had not seen."""

    # Orders whose filled size grew: complete fills and partial ones.
    fills: tuple[OrderResult, ...] = ()
    # Orders that ended without filling completely: cancelled, rejected, expired.
    ended: tuple[OrderResult, ...] = ()
    trades: tuple[Trade, ...] = ()

    def summary(self) -> str:
        partial = sum(1 for order in self.fills if order.partially_filled)
        return (
            f"{len(self.fills)} new fills ({partial} partial),"
            f" {len(self.ended)} orders ended unfilled, {len(self.trades)} trades"
        )


@dataclass(frozen=True)
class Position:
    """Net position in one symbol: positive long, negative short."""

    symbol: str
    size: int
    average_price: float
    realized_pnl: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "size": self.size,
            "side": "long" if self.size > 0 else "short" if self.size < 0 else "flat",
            "average_price": self.average_price,
            "realized_pnl": round(self.realized_pnl, 2),
        }


class Broker(Protocol):
    """What the daemon needs from a broker; paper and ProjectX both provide it.

    Business refusals (market closed, no funds, contract not active) raise
    ``BrokerRefusal`` with the broker's reason and are never retried. Any other
    exception is transient: the scheduler retries the task later, and the
    task's fixed client id lets ``find_order`` see an order an earlier attempt
    placed, so a task never places two.
    """

    name: str

    async def start(self) -> None:
        """Connect, log in, check the account, read positions and open orders."""
        ...

    async def accounts(self) -> list[Account]: ...

    async def resolve_contract(self, symbol: str) -> Contract: ...

    async def place_order(self, request: OrderRequest) -> OrderResult: ...

    async def cancel_order(self, order_id: str) -> None: ...

    async def find_order(self, client_id: str) -> OrderResult | None: ...

    async def open_orders(self) -> list[OrderResult]: ...

    async def positions(self, *, fresh: bool = False) -> list[Position]:
        """Every open position; ``fresh`` reads the broker now or raises.

        Without ``fresh`` a recent read may answer (what /status needs).
        """
        ...

    async def position(self, symbol: str) -> Position: ...

    async def trades(self) -> list[Trade]:
        """Recent executions, oldest first."""
        ...

    async def close_position(self, symbol: str) -> None:
        """Flatten ``symbol`` at the market; a flat symbol is left alone."""
        ...

    async def check_fills(self) -> FillReport:
        """Reconcile orders with the broker; report what changed since last time."""
        ...

    async def account_summary(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
