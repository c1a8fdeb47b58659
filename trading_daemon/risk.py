"""Risk guards: the limits an entry must pass before its order is sent.

Guards screen entries only: exits and flattening are never refused, because
refusing to get out is how a loss grows. Each refusal is logged as
``risk.refused`` and kept (the most recent ones) for /status.

The checks, in order: the kill switch (POST /halt until POST /resume), the
symbol's trading hours, the largest order, the largest position per symbol and
the daily loss. The daily loss is realised P&L after fees over the exchange's
trading day, which for CME Globex runs from 17:00 to 17:00 US Central, so an
evening session's losses count toward the next calendar day.

"Now" comes from an injected clock so that tests can stand at any moment of the
week.
"""

from __future__ import annotations

import re
import time as wallclock
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from loguru import logger

from .broker import Trade
from .intent import OrderIntent, StepKind, position_after

# CME's hours are set in Chicago time; zoneinfo follows its DST changes.
CHICAGO = ZoneInfo("America/Chicago")
# Globex opens Sunday 17:00, closes Friday 16:00, and pauses 16:00-17:00 daily.
SESSION_CLOSE = time(16, 0)
SESSION_OPEN = time(17, 0)
SATURDAY, SUNDAY, FRIDAY = 5, 6, 4

_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class Calendar(Protocol):
    """When orders for a symbol may be sent."""

    @property
    def name(self) -> str: ...

    def is_open(self, now: datetime) -> bool: ...


@dataclass(frozen=True)
class Always:
    name: str = "always"

    def is_open(self, now: datetime) -> bool:
        return True


@dataclass(frozen=True)
class CmeGlobex:
    """The Globex week: Sunday 17:00 to Friday 16:00 Central, daily break 16-17."""

    name: str = "cme-globex"

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(CHICAGO)
        weekday, clock = local.weekday(), local.time()
        if weekday == SATURDAY:
            return False
        if weekday == SUNDAY:
            return clock >= SESSION_OPEN
        if weekday == FRIDAY:
            return clock < SESSION_CLOSE
        return not SESSION_CLOSE <= clock < SESSION_OPEN


@dataclass(frozen=True)
class DailyWindow:
    """Monday to Friday between two Central times, e.g. the regular session."""

    start: time
    end: time

    @property
    def name(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(CHICAGO)
        return local.weekday() < SATURDAY and self.start <= local.time() < self.end


@dataclass(frozen=True)
class TradingHours:
    """A calendar per root symbol, and one for every other symbol."""

    default: Calendar = field(default_factory=CmeGlobex)
    symbols: Mapping[str, Calendar] = field(default_factory=dict)

    def for_symbol(self, symbol: str) -> Calendar:
        return self.symbols.get(symbol.upper(), self.default)


def parse_hours(text: str) -> TradingHours:
    """Read ``cme-globex``, ``always``, ``08:30-15:00`` or ``MNQ=always,*=cme-globex``.

    Raises ValueError naming the part that is wrong.
    """
    default: Calendar = CmeGlobex()
    symbols: dict[str, Calendar] = {}
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("must name a calendar such as cme-globex or always")
    for part in parts:
        root, sep, name = part.rpartition("=")
        calendar = _calendar(name.strip())
        root = root.strip().upper()
        if not sep or root == "*":
            default = calendar
        elif root.isalnum():
            symbols[root] = calendar
        else:
            raise ValueError(f"entries must look like ROOT=CALENDAR, got {part!r}")
    return TradingHours(default, symbols)


def _calendar(name: str) -> Calendar:
    if name.lower() == "cme-globex":
        return CmeGlobex()
    if name.lower() == "always":
        return Always()
    match = _WINDOW.match(name)
    if match:
        start_h, start_m, end_h, end_m = (int(g) for g in match.groups())
        if start_h < 24 and end_h < 24 and start_m < 60 and end_m < 60:
            start, end = time(start_h, start_m), time(end_h, end_m)
            if start < end:
                return DailyWindow(start, end)
    raise ValueError(
        "calendars are cme-globex, always or a Central-time window such as"
        f" 08:30-15:00 (start before end), got {name!r}"
    )


def trading_day(moment: datetime) -> date:
    """The CME trading day ``moment`` belongs to: it starts at 17:00 Central."""
    local = moment.astimezone(CHICAGO)
    day = local.date()
    if local.time() >= SESSION_OPEN:
        day += timedelta(days=1)
    # Friday evening to Sunday evening belongs to Monday's session.
    while day.weekday() >= SATURDAY:
        day += timedelta(days=1)
    return day


def daily_pnl(trades: Iterable[Trade], now: datetime) -> float:
    """Realised P&L after fees of the trades in ``now``'s trading day."""
    today = trading_day(now)
    return sum(
        (trade.profit_and_loss or 0.0) - trade.fees
        for trade in trades
        if trade.at is not None and trading_day(trade.at) == today
    )


@dataclass(frozen=True)
class RiskLimits:
    """Each limit is off at 0."""

    max_order_size: int = 0
    max_position: int = 0
    max_daily_loss: float = 0.0
    hours: TradingHours = field(default_factory=TradingHours)


@dataclass(frozen=True)
class Refusal:
    """One refused entry, for /status."""

    at: float
    task_id: str
    account: str
    symbol: str
    guard: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "task_id": self.task_id,
            "account": self.account,
            "symbol": self.symbol,
            "guard": self.guard,
            "reason": self.reason,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RiskGuard:
    """The configured limits, the kill switch and the refusals they made."""

    def __init__(
        self,
        limits: RiskLimits,
        *,
        clock: Callable[[], datetime] = _utc_now,
        keep: int = 100,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.halted = False
        self.refusals: deque[Refusal] = deque(maxlen=keep)

    @property
    def needs_daily_pnl(self) -> bool:
        return self.limits.max_daily_loss > 0

    def entry_refusal(
        self, symbol: str, size: int, position_after: int, pnl_today: float | None
    ) -> tuple[str, str] | None:
        """(guard, reason) if an entry of ``size`` may not be sent now, else None."""
        limits = self.limits
        if self.halted:
            return "halted", "trading is halted (POST /resume to trade again)"
        calendar = limits.hours.for_symbol(symbol)
        now = self.clock()
        if not calendar.is_open(now):
            local = now.astimezone(CHICAGO)
            return (
                "trading_hours",
                f"{symbol} is outside its trading hours ({calendar.name}) at"
                f" {local:%a %H:%M} Central",
            )
        if limits.max_order_size and size > limits.max_order_size:
            return (
                "max_order_size",
                f"order of {size} contracts is over TRADING_MAX_ORDER_SIZE"
                f" {limits.max_order_size}",
            )
        if limits.max_position and abs(position_after) > limits.max_position:
            return (
                "max_position",
                f"position of {abs(position_after)} {symbol} would be over"
                f" TRADING_MAX_POSITION {limits.max_position}",
            )
        loss_limit = limits.max_daily_loss
        if loss_limit and pnl_today is not None and pnl_today <= -loss_limit:
            return (
                "max_daily_loss",
                f"realised P&L today {pnl_today:.2f} has reached"
                f" TRADING_MAX_DAILY_LOSS {loss_limit:g};"
                " entries resume next trading day",
            )
        return None

    def screen(self, intent: OrderIntent, pnl_today: float | None) -> OrderIntent:
        """``intent`` with its entries dropped if a guard refuses one."""
        for index, step in enumerate(intent.steps):
            if step.kind is StepKind.ENTER:
                after = position_after(intent.position, intent.steps[: index + 1])
                refused = self.entry_refusal(intent.symbol, step.size, after, pnl_today)
                if refused is not None:
                    return intent.without_entries(*refused)
        return intent

    def record(self, task_id: str, intent: OrderIntent) -> None:
        """Keep and log the refusal ``intent`` carries."""
        if intent.refused is None:
            return
        refusal = Refusal(
            at=wallclock.time(),
            task_id=task_id,
            account=intent.account,
            symbol=intent.symbol,
            guard=intent.guard or "intent",
            reason=intent.refused,
        )
        self.refusals.append(refusal)
        logger.warning(
            "risk.refused",
            task_id=task_id,
            account=refusal.account,
            symbol=refusal.symbol,
            guard=refusal.guard,
            reason=refusal.reason,
        )
