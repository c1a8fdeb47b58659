"""In-memory model of a ProjectX Gateway: accounts, contracts, book, clock.

This is the pure half of the ProjectX simulator: no HTTP, no JSON, only the
exchange and account rules a client can observe through the REST API. The HTTP
front end in `projectx_simulator` translates requests into calls on
`SimulatorState` and turns `GatewayRefusal` into `success: false` answers.

All time comes from `trio.current_time()` so tests can drive the simulator with
pytest-trio's `autojump_clock`; wall-clock timestamps are derived from it.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import TypeVar

import trio

# The simulated wall clock starts on a Monday afternoon (CME open) so timestamps
# look like live traffic and stay the same from run to run.
DEFAULT_START = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)
TOKEN_LIFETIME_S = 24 * 3600.0
RATE_LIMIT_REQUESTS = 200
RATE_LIMIT_WINDOW_S = 60.0

_MONTH_NAMES = {
    "F": "January",
    "G": "February",
    "H": "March",
    "J": "April",
    "K": "May",
    "M": "June",
    "N": "July",
    "Q": "August",
    "U": "September",
    "V": "October",
    "X": "November",
    "Z": "December",
}


# Error codes are per endpoint in the gateway's swagger, so one enum each.
class LoginErrorCode(IntEnum):
    SUCCESS = 0
    USER_NOT_FOUND = 1
    PASSWORD_VERIFICATION_FAILED = 2
    INVALID_CREDENTIALS = 3
    UNKNOWN_ERROR = 8


class SearchErrorCode(IntEnum):
    """Order/search, Order/searchOpen, Position/searchOpen and Trade/search."""

    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1


class PlaceOrderErrorCode(IntEnum):
    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1
    ORDER_REJECTED = 2
    INSUFFICIENT_FUNDS = 3
    ACCOUNT_VIOLATION = 4
    OUTSIDE_TRADING_HOURS = 5
    ORDER_PENDING = 6
    UNKNOWN_ERROR = 7
    CONTRACT_NOT_FOUND = 8
    CONTRACT_NOT_ACTIVE = 9
    ACCOUNT_REJECTED = 10


class CancelOrderErrorCode(IntEnum):
    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1
    ORDER_NOT_FOUND = 2
    REJECTED = 3


class ModifyOrderErrorCode(IntEnum):
    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1
    ORDER_NOT_FOUND = 2
    REJECTED = 3


class ClosePositionErrorCode(IntEnum):
    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1
    POSITION_NOT_FOUND = 2
    CONTRACT_NOT_FOUND = 3
    ORDER_REJECTED = 5


class PartialCloseErrorCode(IntEnum):
    SUCCESS = 0
    ACCOUNT_NOT_FOUND = 1
    POSITION_NOT_FOUND = 2
    CONTRACT_NOT_FOUND = 3
    INVALID_CLOSE_SIZE = 5
    ORDER_REJECTED = 6


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2
    STOP_LIMIT = 3
    STOP = 4
    TRAILING_STOP = 5
    JOIN_BID = 6
    JOIN_ASK = 7


class OrderSide(IntEnum):
    BID = 0
    ASK = 1


class OrderStatus(IntEnum):
    NONE = 0
    OPEN = 1
    FILLED = 2
    CANCELLED = 3
    EXPIRED = 4
    REJECTED = 5
    PENDING = 6


class PositionType(IntEnum):
    LONG = 1
    SHORT = 2


class GatewayRefusal(Exception):
    """A business failure: the gateway answers HTTP 200 with `success: false`."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Instrument:
    """A futures root and its listing cycle, e.g. MNQ listed H, M, U, Z."""

    root: str
    description: str
    tick_size: float
    tick_value: float
    fee_per_side: float
    price: float
    month_cycle: str = "HMUZ"
    first_month: str = "H25"

    @property
    def symbol_id(self) -> str:
        return f"F.US.{self.root}"

    def month(self, index: int) -> tuple[str, int]:
        """The month code and two-digit year `index` listings after the first."""
        cycle_len = len(self.month_cycle)
        position = self.month_cycle.index(self.first_month[0]) + index
        year = int(self.first_month[1:]) + position // cycle_len
        return self.month_cycle[position % cycle_len], year


# Fees are simulator defaults in the shape of a prop-firm schedule (micros vs
# full size), not a quote of any firm's current fees.
DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("MNQ", "Micro E-mini Nasdaq-100", 0.25, 0.5, 0.37, 21000.0),
    Instrument("ENQ", "E-mini NASDAQ-100", 0.25, 5.0, 1.40, 21000.0),
    Instrument("MES", "Micro E-mini S&P 500", 0.25, 1.25, 0.37, 6000.0),
    Instrument("EP", "E-mini S&P 500", 0.25, 12.5, 1.40, 6000.0),
    Instrument("MYM", "Micro E-mini Dow Jones", 1.0, 0.5, 0.37, 43000.0),
    Instrument("MGC", "Micro Gold", 0.1, 1.0, 0.37, 2650.0, "GJMQVZ", "G25"),
    Instrument("GCE", "Gold", 0.1, 10.0, 1.40, 2650.0, "GJMQVZ", "G25"),
)


@dataclass(frozen=True)
class Contract:
    id: str
    name: str
    description: str
    tick_size: float
    tick_value: float
    active: bool
    symbol_id: str


@dataclass
class Account:
    id: int
    name: str
    balance: float
    can_trade: bool = True
    is_visible: bool = True
    simulated: bool = True
    # Not on the wire: what `onlyActiveAccounts` filters on.
    active: bool = True


@dataclass(frozen=True)
class Bracket:
    """A protective order placed with the entry, `ticks` signed from the fill."""

    ticks: int
    type: OrderType


@dataclass
class Order:
    id: int
    account_id: int
    contract_id: str
    symbol_id: str
    created: datetime
    type: OrderType
    side: OrderSide
    size: int
    limit_price: float | None
    stop_price: float | None
    custom_tag: str | None
    status: OrderStatus = OrderStatus.OPEN
    updated: datetime | None = None
    fill_volume: int = 0
    filled_price: float | None = None
    stop_loss: Bracket | None = None
    take_profit: Bracket | None = None
    # For a bracket child: the entry order id shared with its sibling (OCO).
    oco_group: int | None = None


@dataclass
class Position:
    id: int
    account_id: int
    contract_id: str
    created: datetime
    net_size: int  # positive long, negative short
    average_price: float

    @property
    def type(self) -> PositionType:
        return PositionType.LONG if self.net_size > 0 else PositionType.SHORT

    @property
    def size(self) -> int:
        return abs(self.net_size)


@dataclass(frozen=True)
class Trade:
    id: int
    account_id: int
    contract_id: str
    created: datetime
    price: float
    profit_and_loss: float | None
    fees: float
    side: OrderSide
    size: int
    order_id: int
    voided: bool = False


@dataclass
class Faults:
    """Failure modes a test or an operator switches on."""

    latency_s: float = 0.0
    server_error_rate: float = 0.0
    server_error_status: int = 503
    # How many of the next Order/place answers are lost after the order exists.
    drop_place_responses: int = 0
    outside_trading_hours: bool = False


@dataclass
class _Session:
    user_name: str
    expires_at: float


def _on_tick(price: float, tick_size: float) -> bool:
    if not math.isfinite(price):
        return False
    ticks = price / tick_size
    return math.isclose(ticks, round(ticks), abs_tol=1e-6)


def _price_error(name: str, price: float | None, contract: Contract) -> str | None:
    if price is None:
        return f"{name} is required for this order type"
    if price <= 0 or not _on_tick(price, contract.tick_size):
        return (
            f"{name} must be a positive multiple of tickSize {contract.tick_size}"
            f" for {contract.id}, got {price}"
        )
    return None


class SimulatorState:
    """One simulated gateway: credentials, accounts, contracts, orders, fills."""

    def __init__(
        self,
        *,
        user_name: str = "sim-user",
        api_key: str = "sim-api-key",
        accounts: Sequence[Account] | None = None,
        instruments: Sequence[Instrument] = DEFAULT_INSTRUMENTS,
        token_lifetime_s: float = TOKEN_LIFETIME_S,
        rate_limit: int = RATE_LIMIT_REQUESTS,
        rate_window_s: float = RATE_LIMIT_WINDOW_S,
        seed: int = 0,
        start: datetime = DEFAULT_START,
    ) -> None:
        self.user_name = user_name
        self.api_key = api_key
        if accounts is None:
            accounts = [Account(1001, "PRAC-V2-SIM-1", 50000.0)]
        self.accounts: dict[int, Account] = {a.id: a for a in accounts}
        self.token_lifetime_s = token_lifetime_s
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._start = start
        # Captured on first use: the state may be built before trio is running.
        self._origin: float | None = None
        self._sessions: dict[str, _Session] = {}
        self._hits: dict[str, deque[float]] = {}
        self._instruments = {i.root: i for i in instruments}
        self._active_month = dict.fromkeys(self._instruments, 0)
        self._prices: dict[str, float] = {}
        self._orders: dict[int, Order] = {}
        self._positions: dict[tuple[int, str], Position] = {}
        self._trades: list[Trade] = []
        self._order_ids = itertools.count(1)
        self._position_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)

    # -- clock -------------------------------------------------------------

    def monotonic(self) -> float:
        """Seconds on the trio clock since this simulator first looked at it."""
        now = trio.current_time()
        if self._origin is None:
            self._origin = now
        return now - self._origin

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    # -- auth, rate limit, faults, call counts ------------------------------

    def login(self, user_name: str, api_key: str) -> str:
        if user_name != self.user_name:
            raise GatewayRefusal(
                LoginErrorCode.USER_NOT_FOUND, f"user {user_name!r} does not exist"
            )
        if not secrets.compare_digest(api_key.encode(), self.api_key.encode()):
            raise GatewayRefusal(
                LoginErrorCode.INVALID_CREDENTIALS,
                f"the API key does not match user {user_name!r}",
            )

        return self._issue_token(user_name)

    def validate(self, token: str) -> str:
        """A fresh token for a valid one; the old one stays valid until expiry."""
        session = self._sessions.get(token)
        if session is None or not self.token_valid(token):
            raise ValueError("validate needs a valid token; check token_valid first")
        return self._issue_token(session.user_name)

    def logout(self, token: str) -> None:
        self._sessions.pop(token, None)

    def token_valid(self, token: str) -> bool:
        session = self._sessions.get(token)
        return session is not None and self.monotonic() < session.expires_at

    def expire_all_tokens(self) -> int:
        """Invalidate every token, as a server restart or key revocation would."""
        count = len(self._sessions)
        self._sessions.clear()
        self._hits.clear()
        return count

    def _issue_token(self, user_name: str) -> str:
        token = secrets.token_urlsafe(32)
        expires_at = self.monotonic() + self.token_lifetime_s
        self._sessions[token] = _Session(user_name, expires_at)
        return token

    def admit(self, token: str) -> float | None:
        """None if the request fits the rate limit, else seconds to wait."""
        now = self.monotonic()
        window = self._hits.setdefault(token, deque())
        while window and window[0] <= now - self.rate_window_s:
            window.popleft()
        if len(window) >= self.rate_limit:
            return window[0] + self.rate_window_s - now

        window.append(now)
        return None

    def draw_server_error(self) -> bool:
        # Draw only when the fault is on so that switching it on later yields
        # the same sequence for the same seed.
        if self.faults.server_error_rate <= 0:
            return False
        return self._random.random() < self.faults.server_error_rate

    def take_place_drop(self) -> bool:
        if self.faults.drop_place_responses <= 0:
            return False
        self.faults.drop_place_responses -= 1
        return True

    def call_count(self, endpoint: str) -> int:
        """How often e.g. "Order/place" was requested, whatever the outcome."""
        return self.calls[endpoint]

    # -- accounts and contracts -------------------------------------------

    def search_accounts(self, only_active: bool) -> list[Account]:
        return [a for a in self.accounts.values() if a.active or not only_active]

    def _listed(self, instrument: Instrument) -> list[Contract]:
        # After a roll the previous month stays listed (inactive) until the next
        # roll; the month after the active one is always listed, inactive.
        active = self._active_month[instrument.root]
        indexes = range(max(0, active - 1), active + 2)
        return [self._contract(instrument, i, i == active) for i in indexes]

    def _contract(self, instrument: Instrument, index: int, active: bool) -> Contract:
        code, year = instrument.month(index)
        return Contract(
            id=f"CON.F.US.{instrument.root}.{code}{year:02d}",
            name=f"{instrument.root}{code}{year:02d}",
            description=(
                f"{instrument.description}: {_MONTH_NAMES[code]} {2000 + year}"
            ),
            tick_size=instrument.tick_size,
            tick_value=instrument.tick_value,
            active=active,
            symbol_id=instrument.symbol_id,
        )

    def contracts(self) -> list[Contract]:
        return [c for i in self._instruments.values() for c in self._listed(i)]

    def search_contracts(self, text: str | None) -> list[Contract]:
        """Contracts whose name, description or symbol contains `text`."""
        needle = (text or "").strip().casefold()
        return [
            c
            for c in self.contracts()
            if needle in f"{c.name}\n{c.description}\n{c.symbol_id}".casefold()
        ]

    def find_contract(self, contract_id: str) -> Contract | None:
        return next((c for c in self.contracts() if c.id == contract_id), None)

    def active_contract(self, symbol_id: str) -> Contract:
        instrument = self._instrument(symbol_id)
        return next(c for c in self._listed(instrument) if c.active)

    def _instrument(self, symbol_id: str) -> Instrument:
        root = symbol_id.removeprefix("F.US.")
        if root not in self._instruments:
            raise ValueError(f"unknown symbol {symbol_id!r}")
        return self._instruments[root]

    def roll(self, symbol_id: str) -> Contract:
        """Make the next month active; the old one stays listed as inactive."""
        old = self.active_contract(symbol_id)
        self._active_month[self._instrument(symbol_id).root] += 1
        new = self.active_contract(symbol_id)
        # Calendar spreads are out of scope: the new month starts where the
        # old one trades.
        self._prices.setdefault(new.id, self.price(old.id))
        return new

    def price(self, contract_id: str) -> float:
        contract = self._require_contract(contract_id)
        instrument = self._instrument(contract.symbol_id)
        return self._prices.get(contract_id, instrument.price)

    def set_price(self, contract_id: str, price: float) -> list[int]:
        """Move the market; resting orders it crosses fill. Returns their ids."""
        contract = self._require_contract(contract_id)
        if price <= 0 or not _on_tick(price, contract.tick_size):
            raise ValueError(
                f"price must be a positive multiple of tickSize"
                f" {contract.tick_size} for {contract_id}, got {price}"
            )
        self._prices[contract_id] = price

        filled: list[int] = []
        # A fill can create bracket orders that the same price already
        # crosses, so sweep until a pass fills nothing.
        while swept := self._sweep(contract_id, price):
            filled.extend(swept)
        return filled

    def _require_contract(self, contract_id: str) -> Contract:
        contract = self.find_contract(contract_id)
        if contract is None:
            raise ValueError(f"unknown contract {contract_id!r}")
        return contract

    def _sweep(self, contract_id: str, market: float) -> list[int]:
        filled: list[int] = []
        for order in list(self._orders.values()):
            if order.status is not OrderStatus.OPEN or order.contract_id != contract_id:
                continue
            fill_price = _resting_fill_price(order, market)
            if fill_price is not None:
                self._fill(order, fill_price)
                filled.append(order.id)
        return filled

    # -- orders ------------------------------------------------------------

    def place_order(
        self,
        account_id: int,
        contract_id: str,
        order_type: OrderType,
        side: OrderSide,
        size: int,
        *,
        limit_price: float | None = None,
        stop_price: float | None = None,
        custom_tag: str | None = None,
        stop_loss: Bracket | None = None,
        take_profit: Bracket | None = None,
    ) -> int:
        """Accept an order, fill it if marketable, and return its id."""
        codes = PlaceOrderErrorCode
        account = self._account(account_id, codes.ACCOUNT_NOT_FOUND)
        if not account.can_trade:
            raise GatewayRefusal(
                codes.ACCOUNT_VIOLATION, f"account {account_id} may not trade"
            )
        contract = self.find_contract(contract_id)
        if contract is None:
            raise GatewayRefusal(
                codes.CONTRACT_NOT_FOUND, f"contract {contract_id!r} does not exist"
            )
        if not contract.active:
            raise GatewayRefusal(
                codes.CONTRACT_NOT_ACTIVE,
                f"contract {contract_id} is not the active month of"
                f" {contract.symbol_id}",
            )
        if self.faults.outside_trading_hours:
            raise GatewayRefusal(
                codes.OUTSIDE_TRADING_HOURS, "the market is closed for trading"
            )
        self._check_custom_tag(account_id, custom_tag)
        problem = self._order_problem(order_type, size)
        problem = problem or self._price_problem(
            contract, order_type, side, limit_price, stop_price
        )
        problem = problem or _bracket_problem(side, stop_loss, take_profit)
        if problem is not None:
            raise GatewayRefusal(codes.ORDER_REJECTED, problem)
        if account.balance <= 0:
            raise GatewayRefusal(
                codes.INSUFFICIENT_FUNDS,
                f"account {account_id} balance is {account.balance:.2f}",
            )

        order = Order(
            id=next(self._order_ids),
            account_id=account_id,
            contract_id=contract_id,
            symbol_id=contract.symbol_id,
            created=self.now(),
            type=order_type,
            side=side,
            size=size,
            limit_price=limit_price if order_type is OrderType.LIMIT else None,
            stop_price=stop_price if order_type is OrderType.STOP else None,
            custom_tag=custom_tag,
            stop_loss=stop_loss,
            take_profit=take_profit,
        )
        self._orders[order.id] = order
        self._execute_if_marketable(order)
        return order.id

    def _check_custom_tag(self, account_id: int, custom_tag: str | None) -> None:
        # ProjectX refuses a customTag already used on the account, whatever
        # that order's state (observed: errorCode 2).
        if custom_tag is None:
            return
        for order in self._orders.values():
            if order.account_id == account_id and order.custom_tag == custom_tag:
                raise GatewayRefusal(
                    PlaceOrderErrorCode.ORDER_REJECTED,
                    f"customTag {custom_tag!r} is already used by order {order.id};"
                    " a customTag must be unique per account",
                )

    @staticmethod
    def _order_problem(order_type: OrderType, size: int) -> str | None:
        if size < 1:
            return f"size must be a whole number of contracts >= 1, got {size}"
        if order_type not in (OrderType.MARKET, OrderType.LIMIT, OrderType.STOP):
            return (
                f"order type {order_type.value} ({order_type.name}) is not"
                " supported by the simulator"
            )
        return None

    def _price_problem(
        self,
        contract: Contract,
        order_type: OrderType,
        side: OrderSide,
        limit_price: float | None,
        stop_price: float | None,
    ) -> str | None:
        if order_type is OrderType.LIMIT:
            return _price_error("limitPrice", limit_price, contract)
        if order_type is not OrderType.STOP:
            return None
        problem = _price_error("stopPrice", stop_price, contract)
        if problem is not None or stop_price is None:
            return problem
        # Like CME, refuse a stop that the market has already passed.
        market = self.price(contract.id)
        if side is OrderSide.BID and stop_price <= market:
            return f"a buy stop must be above the market {market}, got {stop_price}"
        if side is OrderSide.ASK and stop_price >= market:
            return f"a sell stop must be below the market {market}, got {stop_price}"
        return None

    def _execute_if_marketable(self, order: Order) -> None:
        market = self.price(order.contract_id)
        if order.type is OrderType.MARKET:
            self._fill(order, market)
        elif order.type is OrderType.LIMIT and order.limit_price is not None:
            buy_ok = order.side is OrderSide.BID and market <= order.limit_price
            sell_ok = order.side is OrderSide.ASK and market >= order.limit_price
            if buy_ok or sell_ok:
                # A marketable limit takes the better market price.
                self._fill(order, market)

    def cancel_order(self, account_id: int, order_id: int) -> None:
        codes = CancelOrderErrorCode
        order = self._open_order(account_id, order_id, codes)
        order.status = OrderStatus.CANCELLED
        order.updated = self.now()

    def modify_order(
        self,
        account_id: int,
        order_id: int,
        *,
        size: int | None = None,
        limit_price: float | None = None,
        stop_price: float | None = None,
    ) -> None:
        codes = ModifyOrderErrorCode
        order = self._open_order(account_id, order_id, codes)
        contract = self._require_contract(order.contract_id)
        new_size = order.size if size is None else size
        new_limit = order.limit_price if limit_price is None else limit_price
        new_stop = order.stop_price if stop_price is None else stop_price
        problem = self._order_problem(order.type, new_size)
        if limit_price is not None and order.type is not OrderType.LIMIT:
            problem = problem or f"limitPrice does not apply to a {order.type.name}"
        if stop_price is not None and order.type is not OrderType.STOP:
            problem = problem or f"stopPrice does not apply to a {order.type.name}"
        problem = problem or self._price_problem(
            contract, order.type, order.side, new_limit, new_stop
        )
        if problem is not None:
            raise GatewayRefusal(codes.REJECTED, problem)

        order.size, order.limit_price, order.stop_price = new_size, new_limit, new_stop
        order.updated = self.now()
        self._execute_if_marketable(order)

    def _open_order(
        self,
        account_id: int,
        order_id: int,
        codes: type[CancelOrderErrorCode] | type[ModifyOrderErrorCode],
    ) -> Order:
        self._account(account_id, codes.ACCOUNT_NOT_FOUND)
        order = self._orders.get(order_id)
        if order is None or order.account_id != account_id:
            raise GatewayRefusal(
                codes.ORDER_NOT_FOUND,
                f"order {order_id} does not exist on account {account_id}",
            )
        if order.status is not OrderStatus.OPEN:
            raise GatewayRefusal(
                codes.REJECTED,
                f"order {order_id} is {order.status.name}; only an open order"
                " can change",
            )
        return order

    def search_orders(
        self, account_id: int, start: datetime, end: datetime | None = None
    ) -> list[Order]:
        self._account(account_id, SearchErrorCode.ACCOUNT_NOT_FOUND)
        return _between(
            (o for o in self._orders.values() if o.account_id == account_id),
            start,
            end,
        )

    def open_orders(self, account_id: int) -> list[Order]:
        self._account(account_id, SearchErrorCode.ACCOUNT_NOT_FOUND)
        return [
            o
            for o in self._orders.values()
            if o.account_id == account_id and o.status is OrderStatus.OPEN
        ]

    def find_order(self, order_id: int) -> Order | None:
        return self._orders.get(order_id)

    # -- fills, positions, trades -----------------------------------------

    def _fill(self, order: Order, price: float) -> None:
        self._book_trade(order, price)
        order.status = OrderStatus.FILLED
        order.fill_volume = order.size
        order.filled_price = price
        order.updated = self.now()
        if order.oco_group is not None:
            for sibling in self._orders.values():
                if (
                    sibling.oco_group == order.oco_group
                    and sibling.status is OrderStatus.OPEN
                ):
                    sibling.status = OrderStatus.CANCELLED
                    sibling.updated = order.updated
        for bracket in (order.stop_loss, order.take_profit):
            if bracket is not None:
                self._place_bracket(order, bracket, price)

    def _place_bracket(self, entry: Order, bracket: Bracket, fill_price: float) -> None:
        contract = self._require_contract(entry.contract_id)
        price = round(fill_price + bracket.ticks * contract.tick_size, 9)
        child = Order(
            id=next(self._order_ids),
            account_id=entry.account_id,
            contract_id=entry.contract_id,
            symbol_id=entry.symbol_id,
            created=self.now(),
            type=bracket.type,
            side=OrderSide.ASK if entry.side is OrderSide.BID else OrderSide.BID,
            size=entry.size,
            limit_price=price if bracket.type is OrderType.LIMIT else None,
            stop_price=price if bracket.type is OrderType.STOP else None,
            custom_tag=None,
            oco_group=entry.id,
        )
        self._orders[child.id] = child

    def _book_trade(self, order: Order, price: float) -> None:
        contract = self._require_contract(order.contract_id)
        instrument = self._instrument(contract.symbol_id)
        key = (order.account_id, order.contract_id)
        position = self._positions.get(key)
        signed = order.size if order.side is OrderSide.BID else -order.size
        pnl: float | None = None

        if position is None:
            self._open_position(order, signed, price)
        elif (position.net_size > 0) == (signed > 0):
            total = position.size + order.size
            position.average_price = round(
                (position.average_price * position.size + price * order.size) / total,
                9,
            )
            position.net_size += signed
        else:
            closing = min(order.size, position.size)
            direction = 1 if position.net_size > 0 else -1
            ticks = (price - position.average_price) / contract.tick_size
            pnl = round(ticks * direction * closing * contract.tick_value, 2)
            remaining = position.net_size + signed
            if remaining != 0 and (remaining > 0) == (position.net_size > 0):
                position.net_size = remaining
                self._trim_brackets(key, abs(remaining))
            else:
                del self._positions[key]
                self._cancel_brackets(key)
            if remaining != 0 and (remaining > 0) != (position.net_size > 0):
                # The fill went through flat: the rest opens the other way.
                self._open_position(order, remaining, price)

        fees = round(instrument.fee_per_side * order.size, 2)
        account = self.accounts[order.account_id]
        account.balance = round(account.balance + (pnl or 0.0) - fees, 2)
        trade = Trade(
            id=next(self._trade_ids),
            account_id=order.account_id,
            contract_id=order.contract_id,
            created=self.now(),
            price=price,
            profit_and_loss=pnl,
            fees=fees,
            side=order.side,
            size=order.size,
            order_id=order.id,
        )
        self._trades.append(trade)

    def _open_position(self, order: Order, net_size: int, price: float) -> None:
        self._positions[(order.account_id, order.contract_id)] = Position(
            id=next(self._position_ids),
            account_id=order.account_id,
            contract_id=order.contract_id,
            created=self.now(),
            net_size=net_size,
            average_price=price,
        )

    def _brackets(self, key: tuple[int, str]) -> list[Order]:
        return [
            o
            for o in self._orders.values()
            if (o.account_id, o.contract_id) == key
            and o.oco_group is not None
            and o.status is OrderStatus.OPEN
        ]

    def _cancel_brackets(self, key: tuple[int, str]) -> None:
        # Brackets protect a position: once it is gone they must not reopen one.
        for order in self._brackets(key):
            order.status = OrderStatus.CANCELLED
            order.updated = self.now()

    def _trim_brackets(self, key: tuple[int, str], size: int) -> None:
        # After a partial exit a bracket must not be larger than the position,
        # or its fill would reverse it.
        for order in self._brackets(key):
            if order.size > size:
                order.size = size
                order.updated = self.now()

    def open_positions(self, account_id: int) -> list[Position]:
        self._account(account_id, SearchErrorCode.ACCOUNT_NOT_FOUND)
        return [p for p in self._positions.values() if p.account_id == account_id]

    def close_position(self, account_id: int, contract_id: str) -> None:
        """Flatten with a market fill; like the gateway, no order id is returned."""
        codes = ClosePositionErrorCode
        position = self._position_to_close(account_id, contract_id, codes)
        self._close(position, position.size)

    def partial_close_position(
        self, account_id: int, contract_id: str, size: int
    ) -> None:
        codes = PartialCloseErrorCode
        position = self._position_to_close(account_id, contract_id, codes)
        if not 1 <= size <= position.size:
            raise GatewayRefusal(
                codes.INVALID_CLOSE_SIZE,
                f"size must be between 1 and the position size {position.size},"
                f" got {size}",
            )
        self._close(position, size)

    def _position_to_close(
        self,
        account_id: int,
        contract_id: str,
        codes: type[ClosePositionErrorCode] | type[PartialCloseErrorCode],
    ) -> Position:
        self._account(account_id, codes.ACCOUNT_NOT_FOUND)
        if self.find_contract(contract_id) is None:
            raise GatewayRefusal(
                codes.CONTRACT_NOT_FOUND, f"contract {contract_id!r} does not exist"
            )
        position = self._positions.get((account_id, contract_id))
        if position is None:
            raise GatewayRefusal(
                codes.POSITION_NOT_FOUND,
                f"account {account_id} has no open position in {contract_id}",
            )
        if self.faults.outside_trading_hours:
            raise GatewayRefusal(
                codes.ORDER_REJECTED, "the market is closed for trading"
            )
        return position

    def _close(self, position: Position, size: int) -> None:
        order = Order(
            id=next(self._order_ids),
            account_id=position.account_id,
            contract_id=position.contract_id,
            symbol_id=self._require_contract(position.contract_id).symbol_id,
            created=self.now(),
            type=OrderType.MARKET,
            side=OrderSide.ASK if position.net_size > 0 else OrderSide.BID,
            size=size,
            limit_price=None,
            stop_price=None,
            custom_tag=None,
        )
        self._orders[order.id] = order
        self._fill(order, self.price(position.contract_id))

    def search_trades(
        self, account_id: int, start: datetime, end: datetime | None = None
    ) -> list[Trade]:
        self._account(account_id, SearchErrorCode.ACCOUNT_NOT_FOUND)
        return _between(
            (t for t in self._trades if t.account_id == account_id), start, end
        )

    def _account(self, account_id: int, code: int) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise GatewayRefusal(code, f"account {account_id} does not exist")
        return account


def _resting_fill_price(order: Order, market: float) -> float | None:
    """The fill price if `market` crosses the resting `order`, else None."""
    buy = order.side is OrderSide.BID
    if order.type is OrderType.LIMIT and order.limit_price is not None:
        limit = order.limit_price
        crossed = market <= limit if buy else market >= limit
        return limit if crossed else None
    if order.type is OrderType.STOP and order.stop_price is not None:
        stop = order.stop_price
        # A triggered stop becomes a market order: it fills where the market
        # is, gap included.
        triggered = market >= stop if buy else market <= stop
        return market if triggered else None
    return None


def _bracket_problem(
    side: OrderSide, stop_loss: Bracket | None, take_profit: Bracket | None
) -> str | None:
    # Bracket ticks are signed by side (observed): a long's stop loss sits
    # below the fill (negative ticks) and its take profit above.
    sign = 1 if side is OrderSide.BID else -1
    side_name = "buy" if side is OrderSide.BID else "sell"
    for name, bracket, wanted in (
        ("stopLossBracket", stop_loss, -sign),
        ("takeProfitBracket", take_profit, sign),
    ):
        if bracket is None:
            continue
        if bracket.type not in (OrderType.LIMIT, OrderType.STOP):
            return f"{name}.type must be 1 (Limit) or 4 (Stop), got {bracket.type}"
        if bracket.ticks == 0 or (bracket.ticks > 0) != (wanted > 0):
            direction = "positive" if wanted > 0 else "negative"
            return (
                f"{name}.ticks must be {direction} for a {side_name} order,"
                f" got {bracket.ticks}"
            )
    return None


_Stamped = TypeVar("_Stamped", Order, Trade)


def _between(
    items: Iterable[_Stamped], start: datetime, end: datetime | None
) -> list[_Stamped]:
    return [
        item
        for item in items
        if item.created >= start and (end is None or item.created <= end)
    ]
