"""The paper broker: the embedded default, which fills market orders at once.

Positions net per root symbol: a buy while short covers first, and what is left
opens a long. Realised P&L uses each contract's dollar value per point. Orders
are remembered by client id, so a task that runs twice (a retry after a lost
answer, a restart) gets its first order back instead of a second fill.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from .broker import (
    Account,
    BrokerRefusal,
    Contract,
    FillReport,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Position,
    Side,
    Trade,
)

if TYPE_CHECKING:
    from .journal import Journal

# Dollars per full point for common CME roots; others default to 1.
POINT_VALUE: Mapping[str, float] = {
    "MNQ": 2.0,
    "NQ": 20.0,
    "MES": 5.0,
    "ES": 50.0,
    "M2K": 5.0,
    "RTY": 50.0,
    "MYM": 0.5,
    "YM": 5.0,
    "MGC": 10.0,
    "GC": 100.0,
    "MCL": 100.0,
    "CL": 1000.0,
}


@dataclass
class _Book:
    size: int = 0
    average_price: float = 0.0
    realized_pnl: float = 0.0


class PaperBroker:
    """Simulated account that fills every market order immediately."""

    name = "paper"

    def __init__(
        self,
        prices: Mapping[str, float] | None = None,
        *,
        default_price: float = 100.0,
        balance: float = 50_000.0,
        fill_delay: float = 0.0,
        journal: Journal | None = None,
    ) -> None:
        self._fill_delay = fill_delay
        self._journal = journal
        # Fills read and write the book of their symbol across an await (the
        # journal commit): one at a time, or two could net against one state.
        self._lock = trio.Lock()
        self._prices = {k.upper(): float(v) for k, v in (prices or {}).items()}
        self._default_price = default_price
        self._starting_balance = balance
        self._books: dict[str, _Book] = {}
        self._orders: dict[str, OrderResult] = {}
        self.fills: list[OrderResult] = []
        if journal is not None:
            self._load(journal)
        self._ids = itertools.count(len(self._orders) + 1)

    def _load(self, journal: Journal) -> None:
        orders, books = journal.paper_state()
        for body in orders:
            body["side"] = Side(body["side"])
            body["status"] = OrderStatus(body["status"])
            result = OrderResult(**body)
            self._orders[result.client_id] = result
            self.fills.append(result)
        for symbol, size, average_price, realized in books:
            self._books[symbol] = _Book(size, average_price, realized)

    def price(self, symbol: str) -> float:
        return self._prices.get(symbol.upper(), self._default_price)

    def set_price(self, symbol: str, price: float) -> None:
        if not math.isfinite(price) or price <= 0:
            raise ValueError(f"price must be positive, got {price!r}")
        self._prices[symbol.upper()] = float(price)

    async def place_order(self, request: OrderRequest) -> OrderResult:
        request = dataclasses.replace(request, symbol=request.symbol.upper())
        if self._fill_delay and request.client_id not in self._orders:
            await trio.sleep(self._fill_delay)
        async with self._lock:
            return await self._place(request)

    async def _place(self, request: OrderRequest) -> OrderResult:
        earlier = self._orders.get(request.client_id)
        if earlier is not None:
            logger.bind(client_id=request.client_id, order_id=earlier.order_id).info(
                "order.duplicate_suppressed"
            )
            return earlier
        if request.size <= 0:
            raise ValueError(f"order size must be positive, got {request.size}")

        price = self.price(request.symbol)
        book = dataclasses.replace(self._books.get(request.symbol, _Book()))
        self._apply(book, request.symbol, request.side.sign * request.size, price)
        result = OrderResult(
            order_id=f"P{next(self._ids)}",
            client_id=request.client_id,
            symbol=request.symbol,
            side=request.side,
            size=request.size,
            status=OrderStatus.FILLED,
            filled_size=request.size,
            fill_price=price,
        )
        if self._journal is not None:
            # The fill exists once it is on disk; a crash before this leaves no
            # trace, and the task's rerun places it then.
            await self._journal.record_paper_fill(
                request.client_id,
                dataclasses.asdict(result),
                (request.symbol, book.size, book.average_price, book.realized_pnl),
            )
        self._books[request.symbol] = book
        self._orders[request.client_id] = result
        self.fills.append(result)
        logger.bind(
            order_id=result.order_id,
            client_id=request.client_id,
            symbol=request.symbol,
            side=request.side.value,
            size=request.size,
            price=price,
            position=book.size,
        ).info("order.filled")

        return result

    def _apply(self, book: _Book, symbol: str, delta: int, price: float) -> None:
        """Net ``delta`` contracts at ``price`` into ``book``."""
        if book.size == 0 or (book.size > 0) == (delta > 0):
            total = book.size + delta
            book.average_price = (
                book.average_price * abs(book.size) + price * abs(delta)
            ) / abs(total)
            book.size = total
            return

        closing = min(abs(delta), abs(book.size))
        direction = 1 if book.size > 0 else -1
        point_value = POINT_VALUE.get(symbol, 1.0)
        book.realized_pnl += (
            (price - book.average_price) * direction * closing * (point_value)
        )
        remainder = abs(delta) - closing
        book.size += closing * (1 if delta > 0 else -1)
        if book.size == 0:
            book.average_price = 0.0
        if remainder:
            book.size = remainder * (1 if delta > 0 else -1)
            book.average_price = price

    async def find_order(self, client_id: str) -> OrderResult | None:
        return self._orders.get(client_id)

    async def positions(self) -> list[Position]:
        return [self._position(symbol) for symbol in sorted(self._books)]

    async def position(self, symbol: str) -> Position:
        return self._position(symbol.upper())

    def _position(self, symbol: str) -> Position:
        book = self._books.get(symbol, _Book())
        return Position(symbol, book.size, book.average_price, book.realized_pnl)

    async def check_fills(self) -> FillReport:
        # Market orders fill as they are placed; nothing is ever left working.
        return FillReport()

    async def start(self) -> None:
        logger.bind(
            broker=self.name, orders=len(self._orders), positions=len(self._books)
        ).info("broker.started")

    async def accounts(self) -> list[Account]:
        summary = await self.account_summary()
        return [Account("paper", "paper", summary["balance"], can_trade=True)]

    async def resolve_contract(self, symbol: str) -> Contract:
        symbol = symbol.upper()
        # Paper prices are whole points: one "tick" is one point here.
        return Contract(
            id=f"PAPER.{symbol}",
            symbol=symbol,
            name=symbol,
            tick_size=1.0,
            tick_value=POINT_VALUE.get(symbol, 1.0),
        )

    async def cancel_order(self, order_id: str) -> None:
        # Every paper order is filled the moment it is placed.
        raise BrokerRefusal(f"order {order_id} is not open; paper orders fill at once")

    async def open_orders(self) -> list[OrderResult]:
        return []

    async def trades(self) -> list[Trade]:
        return [
            Trade(
                id=fill.order_id,
                order_id=fill.order_id,
                symbol=fill.symbol,
                side=fill.side,
                size=fill.filled_size,
                price=fill.fill_price or 0.0,
            )
            for fill in self.fills
        ]

    async def close_position(self, symbol: str) -> None:
        position = await self.position(symbol)
        if position.size == 0:
            return
        side = Side.SELL if position.size > 0 else Side.BUY
        client_id = f"close-{uuid.uuid4().hex[:16]}"
        await self.place_order(
            OrderRequest(position.symbol, side, abs(position.size), client_id)
        )

    async def account_summary(self) -> dict[str, Any]:
        realized = sum(book.realized_pnl for book in self._books.values())
        unrealized = sum(
            (self.price(symbol) - book.average_price)
            * book.size
            * POINT_VALUE.get(symbol, 1.0)
            for symbol, book in self._books.items()
        )
        return {
            "broker": self.name,
            "balance": round(self._starting_balance + realized, 2),
            "realized_pnl": round(realized, 2),
            "unrealized_pnl": round(unrealized, 2),
            "open_positions": sum(1 for b in self._books.values() if b.size),
            "orders": len(self._orders),
        }

    async def aclose(self) -> None:
        pass
