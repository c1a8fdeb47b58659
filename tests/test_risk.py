"""risk: trading hours, the CME trading day, and the guards on entries (#5)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from trading_daemon.alerts import parse_signal
from trading_daemon.broker import Side, Trade
from trading_daemon.intent import IntentSettings, StepKind, decide
from trading_daemon.risk import (
    CHICAGO,
    Always,
    CmeGlobex,
    DailyWindow,
    RiskGuard,
    RiskLimits,
    TradingHours,
    daily_pnl,
    parse_hours,
    trading_day,
)


def central(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    """A moment in Chicago time in 2026 (1 March 2026 is a Sunday)."""
    return datetime(2026, month, day, hour, minute, tzinfo=CHICAGO)


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        (central(1, 16, 59), False),  # Sunday before the open
        (central(1, 17, 0), True),  # Sunday open
        (central(2, 9, 30), True),  # Monday morning
        (central(2, 15, 59), True),
        (central(2, 16, 0), False),  # daily break
        (central(2, 16, 59), False),
        (central(2, 17, 0), True),  # evening session
        (central(4, 3, 0), True),  # Wednesday night
        (central(6, 15, 59), True),  # Friday before the close
        (central(6, 16, 0), False),  # Friday close: no evening session
        (central(6, 18, 0), False),
        (central(7, 12, 0), False),  # Saturday
        (central(8, 10, 0), False),  # DST starts Sunday 8 March: still closed
        (central(8, 17, 30), True),
        (datetime(2026, 3, 9, 21, 59, tzinfo=UTC), False),  # 16:59 CDT (UTC-5)
        (datetime(2026, 3, 2, 21, 59, tzinfo=UTC), True),  # 15:59 CST (UTC-6)
    ],
)
def test_cme_globex_week_with_daily_break(moment: datetime, is_open: bool) -> None:
    """Sunday 17:00 to Friday 16:00 Central, closed 16:00-17:00 each day."""
    assert CmeGlobex().is_open(moment) is is_open


@pytest.mark.parametrize(
    ("text", "symbol", "moment", "is_open"),
    [
        ("always", "MNQ", central(7, 12), True),
        ("08:30-15:00", "MNQ", central(2, 8, 30), True),
        ("08:30-15:00", "MNQ", central(2, 15, 0), False),
        ("08:30-15:00", "MNQ", central(7, 10, 0), False),
        ("MNQ=always,*=cme-globex", "MNQ", central(7, 12), True),
        ("MNQ=always,*=cme-globex", "ES", central(7, 12), False),
        ("ES=08:30-15:00", "es", central(2, 20), False),
        ("ES=08:30-15:00", "MNQ", central(2, 20), True),
    ],
)
def test_parse_hours_per_symbol(
    text: str, symbol: str, moment: datetime, is_open: bool
) -> None:
    """TRADING_TRADING_HOURS: a calendar for all, or per root with * for the rest."""
    calendar = parse_hours(text).for_symbol(symbol)

    assert calendar.is_open(moment) is is_open


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must name a calendar"),
        ("nyse", "got 'nyse'"),
        ("15:00-08:30", "start before end"),
        ("25:00-26:00", "got '25:00-26:00'"),
        ("M-NQ=always", "ROOT=CALENDAR"),
    ],
)
def test_parse_hours_refuses_bad_text(text: str, fragment: str) -> None:
    """A bad calendar is a ValueError that shows what was wrong."""
    with pytest.raises(ValueError, match=fragment):
        parse_hours(text)


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (central(2, 16, 59), date(2026, 3, 2)),  # Monday afternoon
        (central(2, 17, 0), date(2026, 3, 3)),  # Monday evening is Tuesday
        (central(6, 15, 0), date(2026, 3, 6)),  # Friday
        (central(6, 17, 30), date(2026, 3, 9)),  # Friday evening: Monday
        (central(1, 18, 0), date(2026, 3, 2)),  # Sunday evening: Monday
        (central(7, 12, 0), date(2026, 3, 9)),  # Saturday: Monday
    ],
)
def test_trading_day_rolls_at_17_central(moment: datetime, day: date) -> None:
    """The CME trading day starts at 17:00 Central; weekends belong to Monday."""
    assert trading_day(moment) == day


def trade(pnl: float | None, at: datetime | None, fees: float = 0.0) -> Trade:
    return Trade("t", "o", "MNQ", Side.SELL, 1, 100.0, pnl, fees, at)


def test_daily_pnl_counts_todays_realised_trades_after_fees() -> None:
    """Yesterday's and undated trades do not count; fees do."""
    now = central(3, 10)
    trades = [
        trade(-500.0, central(2, 16, 0)),  # Monday's session
        trade(-120.0, central(2, 17, 5), fees=1.5),  # Tuesday's, in the evening
        trade(None, central(3, 9), fees=0.5),  # an opening fill
        trade(40.0, central(3, 9, 30)),
        trade(-999.0, None),
    ]

    assert daily_pnl(trades, now) == pytest.approx(-120.0 - 1.5 - 0.5 + 40.0)


def guard(**limits: object) -> RiskGuard:
    hours = limits.pop("hours", TradingHours(Always()))
    return RiskGuard(
        RiskLimits(hours=hours, **limits),  # type: ignore[arg-type]
        clock=lambda: central(7, 12),  # a Saturday
    )


@pytest.mark.parametrize(
    ("limits", "size", "after", "pnl", "refused_by"),
    [
        ({}, 50, 50, -1e6, None),
        ({"max_order_size": 2}, 3, 3, None, "max_order_size"),
        ({"max_order_size": 2}, 2, 2, None, None),
        ({"max_position": 3}, 1, 4, None, "max_position"),
        ({"max_position": 3}, 1, -3, None, None),
        ({"max_daily_loss": 500.0}, 1, 1, -500.0, "max_daily_loss"),
        ({"max_daily_loss": 500.0}, 1, 1, -499.99, None),
        ({"hours": TradingHours(CmeGlobex())}, 1, 1, None, "trading_hours"),
    ],
)
def test_entry_refusal_per_limit(
    limits: dict[str, object],
    size: int,
    after: int,
    pnl: float | None,
    refused_by: str | None,
) -> None:
    """Each limit refuses an entry past it, and is off at 0."""
    refused = guard(**limits).entry_refusal("MNQ", size, after, pnl)

    assert (None if refused is None else refused[0]) == refused_by


def test_entry_refusal_reason_names_the_rule_and_value() -> None:
    """The reason says which setting refused, the value, and the hours."""
    hours = guard(hours=TradingHours(CmeGlobex())).entry_refusal("MNQ", 1, 1, None)
    size = guard(max_order_size=2).entry_refusal("MNQ", 5, 5, None)

    assert hours == (
        "trading_hours",
        "MNQ is outside its trading hours (cme-globex) at Sat 12:00 Central",
    )
    assert size == (
        "max_order_size",
        "order of 5 contracts is over TRADING_MAX_ORDER_SIZE 2",
    )


def test_halt_refuses_every_entry_first() -> None:
    """While halted, entries are refused whatever else holds."""
    risk = guard()
    risk.halted = True

    assert risk.entry_refusal("MNQ", 1, 1, None) == (
        "halted",
        "trading is halted (POST /resume to trade again)",
    )


def test_screen_refuses_the_entry_but_keeps_the_exit() -> None:
    """A reversal past the daily loss still closes; only its entry is dropped."""
    risk = guard(max_daily_loss=100.0)
    intent = decide(
        parse_signal({"action": "sell", "symbol": "MNQ", "quantity": 1}),
        2,
        IntentSettings(),
    )

    screened = risk.screen(intent, pnl_today=-150.0)

    assert [s.kind for s in screened.steps] == [
        StepKind.CANCEL_WORKING,
        StepKind.CLOSE,
        StepKind.CONFIRM_FLAT,
    ]
    assert screened.guard == "max_daily_loss"


def test_screen_counts_position_after_a_close() -> None:
    """Reversing long 3 to short 2 is a position of 2, within a maximum of 2."""
    risk = guard(max_position=2)
    intent = decide(
        parse_signal({"action": "sell", "symbol": "MNQ", "quantity": 2}),
        3,
        IntentSettings(),
    )

    assert risk.screen(intent, None) == intent


def test_record_keeps_refusals_for_status() -> None:
    """A refused intent is kept (newest last) with task, account and reason."""
    risk = guard()
    intent = decide(
        parse_signal({"action": "buy", "symbol": "MNQ", "quantity": 1}),
        1,
        IntentSettings(),
        account="main",
    )

    risk.record("task1", intent)

    [refusal] = risk.refusals
    assert refusal.as_dict() | {"at": 0} == {
        "at": 0,
        "task_id": "task1",
        "account": "main",
        "symbol": "MNQ",
        "guard": "pyramiding",
        "reason": "MNQ long 1; adding is off (TRADING_PYRAMIDING)",
    }


def test_daily_window_name_and_days() -> None:
    """A window is Monday to Friday only and shows as HH:MM-HH:MM."""
    window = DailyWindow(time(8, 30), time(15))

    assert window.name == "08:30-15:00"
    assert window.is_open(central(6, 9))
    assert not window.is_open(central(8, 9))
