"""The paper broker: the embedded default, one simulated account per instance.

Positions net per root symbol: a buy while short covers first, and what is left
opens a long. Realised P&L uses each contract's dollar value per point. Market
orders fill at once at the symbol's paper price; limit and stop orders fill at
once if the price has reached them, else rest until a fill check finds that
``set_price`` moved the price through them. A bracket is simulated as two
resting orders tied to the position (one cancels the other): a stop loss and a
take profit, trimmed when the position shrinks and cancelled when it is flat.

Orders are remembered by client id, so a task that runs twice (a retry after a
lost answer, a restart) gets its first order back instead of a second fill.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from .broker import (
    Account,
    Bracket,
    BrokerRefusal,
    Contract,
    FillReport,
    OrderRequest,
    OrderResult,
    OrderStatus,
    OrderType,
    Position,
    Side,
    Trade,
)

if TYPE_CHECKING:
    from .journal import Journal

DEFAULT_ACCOUNT = "paper"

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
# Minimum price moves, so that a bracket in ticks means what it would live.
TICK_SIZE: Mapping[str, float] = {
    "MNQ": 0.25,
    "NQ": 0.25,
    "MES": 0.25,
    "ES": 0.25,
    "M2K": 0.1,
    "RTY": 0.1,
    "MYM": 1.0,
    "YM": 1.0,
    "MGC": 0.1,
    "GC": 0.1,
    "MCL": 0.01,
    "CL": 0.01,
}


@dataclass
class _Book:
    size: int = 0
    average_price: float = 0.0
    realized_pnl: float = 0.0


@dataclass
class _Detail:
    """What the broker keeps about an order beyond its OrderResult."""

    bracket: Bracket | None = None
    # A bracket leg: the order id of the entry it protects (one cancels other).
    oco: str | None = None
    # The fill: its realised P&L (None if it only opened) and when.
    pnl: float | None = None
    at: datetime | None = None
    seq: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bracket": None if self.bracket is None else self.bracket.as_dict(),
            "oco": self.oco,
            "pnl": self.pnl,
            "at": None if self.at is None else self.at.isoformat(),
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> _Detail:
        at = body.get("at")
        return cls(
            bracket=Bracket.from_dict(body.get("bracket")),
            oco=body.get("oco"),
            pnl=body.get("pnl"),
            at=None if at is None else datetime.fromisoformat(at),
            seq=int(body.get("seq") or 0),
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PaperBroker:
    """Simulated account: market orders fill at once, others when price allows."""

    name = "paper"

    def __init__(
        self,
        prices: Mapping[str, float] | None = None,
        *,
        default_price: float = 100.0,
        balance: float = 50_000.0,
        fill_delay: float = 0.0,
        journal: Journal | None = None,
        account: str = DEFAULT_ACCOUNT,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.account = account
        self._fill_delay = fill_delay
        self._journal = journal
        self._clock = clock
        # Fills read and write the book of their symbol across an await (the
        # journal commit): one at a time, or two could net against one state.
        self._lock = trio.Lock()
        self._prices = {k.upper(): float(v) for k, v in (prices or {}).items()}
        self._default_price = default_price
        self._starting_balance = balance
        self._books: dict[str, _Book] = {}
        self._orders: dict[str, OrderResult] = {}
        # The working ones among them, so fills need not scan every order.
        self._working: dict[str, OrderResult] = {}
        self._details: dict[str, _Detail] = {}
        self.fills: list[OrderResult] = []
        if journal is not None:
            self._load(journal)
        self._ids = itertools.count(len(self._orders) + 1)
        self._seq = itertools.count(len(self.fills) + 1)

    def _load(self, journal: Journal) -> None:
        orders, books = journal.paper_state(self.account)
        for body in orders:
            detail = _Detail.from_dict(body.pop("paper", None) or {})
            body["side"] = Side(body["side"])
            body["status"] = OrderStatus(body["status"])
            body["order_type"] = OrderType(body.get("order_type", OrderType.MARKET))
            result = OrderResult(**body)
            self._orders[result.client_id] = result
            self._details[result.client_id] = detail
            if result.status is OrderStatus.WORKING:
                self._working[result.client_id] = result
        self.fills = sorted(
            (o for o in self._orders.values() if o.filled_size),
            key=lambda o: self._details[o.client_id].seq,
        )
        for symbol, size, average_price, realized in books:
            self._books[symbol] = _Book(size, average_price, realized)

    def price(self, symbol: str) -> float:
        return self._prices.get(symbol.upper(), self._default_price)

    def set_price(self, symbol: str, price: float) -> None:
        """Move the paper market; the next fill check fills what it crossed."""
        if not math.isfinite(price) or price <= 0:
            raise ValueError(f"price must be positive, got {price!r}")
        self._prices[symbol.upper()] = float(price)

    # -- orders ------------------------------------------------------------

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
        market = self.price(request.symbol)
        problem = _order_problem(request, market) or _bracket_problem(request, market)
        if problem is not None:
            logger.bind(client_id=request.client_id, reason=problem).warning(
                "order.rejected"
            )
            raise BrokerRefusal(f"paper order rejected: {problem}")

        price = request.limit_price or request.stop_price
        order = OrderResult(
            order_id=f"P{next(self._ids)}",
            client_id=request.client_id,
            symbol=request.symbol,
            side=request.side,
            size=request.size,
            status=OrderStatus.WORKING,
            order_type=request.order_type,
            price=None if request.order_type is OrderType.MARKET else price,
        )
        changes = _Changes(self)
        changes.put(order, _Detail(bracket=request.bracket))
        fill_price = _fill_price(order, market, placing=True)
        if fill_price is not None:
            self._fill(changes, order.client_id, fill_price)
        await changes.commit()

        result = self._orders[order.client_id]
        if result.status is OrderStatus.WORKING:
            _log_order(result, "order.working", position=self._position(order.symbol))
        return result

    def _fill(self, changes: _Changes, client_id: str, price: float) -> None:
        """Fill a working order at ``price`` with all that follows from it."""
        order, detail = changes.order(client_id), changes.detail(client_id)
        book = changes.book(order.symbol)
        before = book.size
        pnl = self._apply(book, order.symbol, order.side.sign * order.size, price)
        filled = dataclasses.replace(
            order, status=OrderStatus.FILLED, filled_size=order.size, fill_price=price
        )
        detail = dataclasses.replace(
            detail, pnl=pnl, at=self._clock(), seq=next(self._seq)
        )
        changes.put(filled, detail)
        changes.fills.append(filled)
        _log_order(filled, "order.filled", position=book.size)

        if detail.oco is not None:
            for sibling in changes.working(order.symbol):
                if changes.detail(sibling.client_id).oco == detail.oco:
                    changes.cancel(sibling)
        if book.size == 0 or (before and (book.size > 0) != (before > 0)):
            # Brackets protect a position: once it is gone (or turned) they
            # must not open one.
            for leg in changes.working(order.symbol):
                if changes.detail(leg.client_id).oco is not None:
                    changes.cancel(leg)
        else:
            for leg in changes.working(order.symbol):
                is_leg = changes.detail(leg.client_id).oco is not None
                if is_leg and leg.size > abs(book.size):
                    changes.put(dataclasses.replace(leg, size=abs(book.size)))
        if detail.bracket is not None and book.size:
            self._add_bracket(changes, filled, detail.bracket, price)

    def _add_bracket(
        self, changes: _Changes, entry: OrderResult, bracket: Bracket, price: float
    ) -> None:
        tick = TICK_SIZE.get(entry.symbol, 1.0)
        sign = entry.side.sign
        b = bracket
        # (suffix, order type, ticks, price, direction from the fill)
        legs = (
            ("sl", OrderType.STOP, b.stop_loss_ticks, b.stop_loss_price, -1),
            ("tp", OrderType.LIMIT, b.take_profit_ticks, b.take_profit_price, 1),
        )
        for suffix, kind, ticks, at_price, direction in legs:
            if ticks is not None:
                at_price = round(price + direction * sign * ticks * tick, 9)
            if at_price is None:
                continue
            leg = OrderResult(
                order_id=f"P{next(self._ids)}",
                # Not a task's client id: the fill check must not read an OCO
                # cancellation as a task whose order was refused.
                client_id=f"bracket-{entry.order_id}-{suffix}",
                symbol=entry.symbol,
                side=entry.side.opposite,
                size=entry.size,
                status=OrderStatus.WORKING,
                order_type=kind,
                price=at_price,
            )
            changes.put(leg, _Detail(oco=entry.order_id))

    def _apply(
        self, book: _Book, symbol: str, delta: int, price: float
    ) -> float | None:
        """Net ``delta`` contracts at ``price`` into ``book``; the P&L realised."""
        if book.size == 0 or (book.size > 0) == (delta > 0):
            total = book.size + delta
            book.average_price = (
                book.average_price * abs(book.size) + price * abs(delta)
            ) / abs(total)
            book.size = total
            return None

        closing = min(abs(delta), abs(book.size))
        direction = 1 if book.size > 0 else -1
        point_value = POINT_VALUE.get(symbol, 1.0)
        pnl = (price - book.average_price) * direction * closing * point_value
        book.realized_pnl += pnl
        remainder = abs(delta) - closing
        book.size += closing * (1 if delta > 0 else -1)
        if book.size == 0:
            book.average_price = 0.0
        if remainder:
            book.size = remainder * (1 if delta > 0 else -1)
            book.average_price = price
        return pnl

    async def find_order(self, client_id: str) -> OrderResult | None:
        return self._orders.get(client_id)

    async def cancel_order(self, order_id: str) -> None:
        async with self._lock:
            found = next(
                (o for o in self._working.values() if o.order_id == order_id), None
            )
            if found is None:
                raise BrokerRefusal(f"order {order_id} is not open")
            changes = _Changes(self)
            changes.cancel(found)
            await changes.commit()
        logger.bind(order_id=order_id, client_id=found.client_id).info(
            "order.cancelled"
        )

    async def open_orders(self) -> list[OrderResult]:
        return list(self._working.values())

    # -- positions, fills, account -------------------------------------------

    async def positions(self, *, fresh: bool = False) -> list[Position]:
        return [self._position(symbol) for symbol in sorted(self._books)]

    async def position(self, symbol: str) -> Position:
        return self._position(symbol.upper())

    def _position(self, symbol: str) -> Position:
        book = self._books.get(symbol, _Book())
        return Position(symbol, book.size, book.average_price, book.realized_pnl)

    async def check_fills(self) -> FillReport:
        """Fill the resting orders the paper price has reached since they rested."""
        async with self._lock:
            changes = _Changes(self)
            # A fill can add bracket legs the same price already crosses.
            while self._sweep(changes):
                pass
            await changes.commit()
        trades = {t.order_id: t for t in await self.trades()}
        return FillReport(
            fills=tuple(changes.fills),
            trades=tuple(trades[o.order_id] for o in changes.fills),
        )

    def _sweep(self, changes: _Changes) -> int:
        count = 0
        for order in changes.working():
            price = _fill_price(order, self.price(order.symbol), placing=False)
            if price is not None and changes.order(order.client_id).status is (
                OrderStatus.WORKING
            ):
                self._fill(changes, order.client_id, price)
                count += 1
        return count

    async def trades(self) -> list[Trade]:
        return [
            Trade(
                id=fill.order_id,
                order_id=fill.order_id,
                symbol=fill.symbol,
                side=fill.side,
                size=fill.filled_size,
                price=fill.fill_price or 0.0,
                profit_and_loss=self._details[fill.client_id].pnl,
                at=self._details[fill.client_id].at,
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

    async def start(self) -> None:
        logger.bind(
            broker=self.name,
            account=self.account,
            orders=len(self._orders),
            positions=len(self._books),
        ).info("broker.started")

    async def accounts(self) -> list[Account]:
        summary = await self.account_summary()
        return [Account(self.account, self.account, summary["balance"], True)]

    async def resolve_contract(self, symbol: str) -> Contract:
        symbol = symbol.upper()
        tick = TICK_SIZE.get(symbol, 1.0)
        return Contract(
            id=f"PAPER.{symbol}",
            symbol=symbol,
            name=symbol,
            tick_size=tick,
            tick_value=tick * POINT_VALUE.get(symbol, 1.0),
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
            "account_name": self.account,
            "balance": round(self._starting_balance + realized, 2),
            "realized_pnl": round(realized, 2),
            "unrealized_pnl": round(unrealized, 2),
            "open_positions": sum(1 for b in self._books.values() if b.size),
            "orders": len(self._orders),
        }

    async def aclose(self) -> None:
        pass


class _Changes:
    """One paper operation's changes, made visible and durable together.

    The broker's own state changes only once the journal has the new rows, so
    a crash in between leaves no trace and the task's rerun places the order.
    """

    def __init__(self, broker: PaperBroker) -> None:
        self._broker = broker
        self.orders: dict[str, OrderResult] = {}
        self.details: dict[str, _Detail] = {}
        self.books: dict[str, _Book] = {}
        self.fills: list[OrderResult] = []

    def order(self, client_id: str) -> OrderResult:
        return self.orders.get(client_id) or self._broker._orders[client_id]

    def detail(self, client_id: str) -> _Detail:
        found = self.details.get(client_id) or self._broker._details.get(client_id)
        return found or _Detail()

    def book(self, symbol: str) -> _Book:
        if symbol not in self.books:
            current = self._broker._books.get(symbol, _Book())
            self.books[symbol] = dataclasses.replace(current)
        return self.books[symbol]

    def working(self, symbol: str | None = None) -> list[OrderResult]:
        merged = {**self._broker._working, **self.orders}
        return [
            o
            for o in merged.values()
            if o.status is OrderStatus.WORKING and symbol in (None, o.symbol)
        ]

    def put(self, order: OrderResult, detail: _Detail | None = None) -> None:
        self.orders[order.client_id] = order
        self.details[order.client_id] = detail or self.detail(order.client_id)

    def cancel(self, order: OrderResult) -> None:
        self.put(dataclasses.replace(order, status=OrderStatus.CANCELLED))

    async def commit(self) -> None:
        broker = self._broker
        if broker._journal is not None and (self.orders or self.books):
            rows = [
                (
                    client_id,
                    {
                        **dataclasses.asdict(order),
                        "paper": self.details[client_id].as_dict(),
                    },
                )
                for client_id, order in self.orders.items()
            ]
            books = [
                (symbol, book.size, book.average_price, book.realized_pnl)
                for symbol, book in self.books.items()
            ]
            await broker._journal.record_paper(broker.account, rows, books)
        broker._orders.update(self.orders)
        for client_id, order in self.orders.items():
            if order.status is OrderStatus.WORKING:
                broker._working[client_id] = order
            else:
                broker._working.pop(client_id, None)
        broker._details.update(self.details)
        broker._books.update(self.books)
        broker.fills.extend(self.fills)


def _fill_price(order: OrderResult, market: float, *, placing: bool) -> float | None:
    """Where ``order`` fills with the market at ``market``; None if it rests."""
    buy = order.side is Side.BUY
    if order.order_type is OrderType.MARKET:
        return market
    assert order.price is not None  # _order_problem requires it
    if order.order_type is OrderType.LIMIT:
        crossed = market <= order.price if buy else market >= order.price
        # Marketable on arrival takes the market's better price; a resting
        # limit fills at its own.
        return (market if placing else order.price) if crossed else None
    # A triggered stop becomes a market order: it fills where the market is.
    triggered = market >= order.price if buy else market <= order.price
    return market if triggered else None


def _order_problem(request: OrderRequest, market: float) -> str | None:
    kind = request.order_type
    if kind is OrderType.LIMIT and request.limit_price is None:
        return "a limit order needs a limit price"
    if kind is OrderType.STOP:
        if request.stop_price is None:
            return "a stop order needs a stop price"
        # Like the exchange: a stop the market has already passed is refused.
        if request.side is Side.BUY and request.stop_price <= market:
            return f"a buy stop must be above the market {market:g}"
        if request.side is Side.SELL and request.stop_price >= market:
            return f"a sell stop must be below the market {market:g}"
    return None


def _bracket_problem(request: OrderRequest, market: float) -> str | None:
    """A bracket price on the wrong side of the entry would fill at once."""
    bracket = request.bracket
    if bracket is None:
        return None
    entry = request.limit_price or request.stop_price or market
    sign = request.side.sign
    side = request.side.value
    for name, price, wanted in (
        ("stop loss", bracket.stop_loss_price, -1),
        ("take profit", bracket.take_profit_price, 1),
    ):
        if price is not None and (price - entry) * sign * wanted <= 0:
            where = "above" if sign * wanted > 0 else "below"
            return (
                f"{name} {price:g} must be {where} the entry price {entry:g}"
                f" for a {side}"
            )
    return None


def _log_order(order: OrderResult, event: str, *, position: Position | int) -> None:
    size = position if isinstance(position, int) else position.size
    logger.info(
        event,
        order_id=order.order_id,
        client_id=order.client_id,
        symbol=order.symbol,
        side=order.side.value,
        size=order.size,
        type=order.order_type.value,
        price=order.fill_price if order.fill_price is not None else order.price,
        position=size,
    )
