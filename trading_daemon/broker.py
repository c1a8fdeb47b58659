"""The broker interface that every broker implementation provides."""

from __future__ import annotations

import enum
from dataclasses import dataclass
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


class OrderStatus(enum.StrEnum):
    WORKING = "working"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class BrokerRefusal(Exception):
    """The broker refused the request for a business reason; retrying won't help."""


@dataclass(frozen=True)
class OrderRequest:
    """A market order for ``size`` contracts of ``symbol`` (a root such as MNQ).

    ``client_id`` is deterministic for the task that places the order: a broker
    that has seen it already answers with the earlier order instead of placing a
    second one.
    """

    symbol: str
    side: Side
    size: int
    client_id: str


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
    """What the daemon needs from a broker; paper and ProjectX both provide it."""

    name: str

    async def place_order(self, request: OrderRequest) -> OrderResult: ...

    async def find_order(self, client_id: str) -> OrderResult | None: ...

    async def positions(self) -> list[Position]: ...

    async def position(self, symbol: str) -> Position: ...

    async def check_fills(self) -> int:
        """Reconcile working orders; return how many filled since the last call."""
        ...

    async def account_summary(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
