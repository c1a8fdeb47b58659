"""intent: what an alert means for a position, decided without any I/O (#5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trading_daemon.alerts import Mode, parse_signal
from trading_daemon.broker import Bracket, OrderType, Side
from trading_daemon.intent import (
    IntentSettings,
    OrderIntent,
    Step,
    StepKind,
    decide,
    position_after,
    resolve_mode,
)

CANCEL = Step(StepKind.CANCEL_WORKING)
CLOSE = Step(StepKind.CLOSE)
CONFIRM = Step(StepKind.CONFIRM_FLAT)
FLATTEN = (CANCEL, CLOSE, CONFIRM)


def enter(side: Side, size: int) -> Step:
    return Step(StepKind.ENTER, side, size)


def reduce(side: Side, size: int) -> Step:
    return Step(StepKind.REDUCE, side, size)


def alert(**fields: Any) -> dict[str, Any]:
    return {"symbol": "MNQ1!", **fields}


SIGNAL_MODE = [
    # (alert, position, steps, target, guard)
    (alert(action="buy", quantity=1), 0, (enter(Side.BUY, 1),), 1, None),
    (alert(action="buy", quantity=2), -1, (*FLATTEN, enter(Side.BUY, 2)), 2, None),
    (alert(action="buy", quantity=1), 1, (), 1, "pyramiding"),
    (alert(action="sell", quantity=1), 0, (enter(Side.SELL, 1),), -1, None),
    (alert(action="short", quantity=1), 3, (*FLATTEN, enter(Side.SELL, 1)), -1, None),
    (alert(action="sell", quantity=1), -1, (), -1, "pyramiding"),
    (alert(action="close"), 2, FLATTEN, 0, None),
    (alert(action="EXIT"), -2, FLATTEN, 0, None),
    (alert(action="flat"), 0, (CANCEL,), 0, None),
    (alert(action="close", quantity=1), 3, (reduce(Side.SELL, 1),), 2, None),
    (alert(action="close", quantity=5), 3, FLATTEN, 0, None),
    (alert(action="close", quantity=1), -2, (reduce(Side.BUY, 1),), -1, None),
    (alert(action="reverse"), 2, (*FLATTEN, enter(Side.SELL, 2)), -2, None),
    (alert(action="reverse", quantity=1), -3, (*FLATTEN, enter(Side.BUY, 1)), 1, None),
    (alert(action="reverse"), 0, (), 0, "intent"),
    (alert(action="cancel"), 2, (CANCEL,), 2, None),
]


@pytest.mark.parametrize(
    ("fields", "position", "steps", "target", "guard"), SIGNAL_MODE
)
def test_decide_signal_mode(
    fields: dict[str, Any],
    position: int,
    steps: tuple[Step, ...],
    target: int,
    guard: str | None,
) -> None:
    """Signal mode: open, reverse via flat, refuse adding, close, reduce, cancel."""
    intent = decide(parse_signal(fields), position, IntentSettings(), account="main")

    assert intent.steps == steps
    assert intent.target == target
    assert intent.guard == guard
    assert (intent.refused is None) == (guard is None)
    assert intent.mode is Mode.SIGNAL
    assert position_after(position, intent.steps) == target


def test_decide_refusal_says_why() -> None:
    """A refused second buy names the position and the setting that refused it."""
    intent = decide(parse_signal(alert(action="buy", quantity=1)), 1, IntentSettings())

    assert intent.refused == "MNQ long 1; adding is off (TRADING_PYRAMIDING)"
    assert intent.describe() == f"refused: {intent.refused}"


@pytest.mark.parametrize(
    ("position", "max_pyramid", "steps", "guard"),
    [
        (1, 3, (enter(Side.BUY, 1),), None),
        (2, 3, (enter(Side.BUY, 1),), None),
        (3, 3, (), "pyramiding"),
        (1, 1, (), "pyramiding"),
    ],
)
def test_decide_pyramiding_within_its_maximum(
    position: int, max_pyramid: int, steps: tuple[Step, ...], guard: str | None
) -> None:
    """With pyramiding on, a buy while long adds until max_pyramid entries."""
    settings = IntentSettings(pyramiding=True, max_pyramid=max_pyramid)

    intent = decide(parse_signal(alert(action="buy", quantity=1)), position, settings)

    assert (intent.steps, intent.guard) == (steps, guard)


TARGET_MODE = [
    # (market_position, size, position, steps)
    ("long", 1, 0, (enter(Side.BUY, 1),)),
    ("long", 3, 1, (enter(Side.BUY, 2),)),
    ("long", 1, 3, (reduce(Side.SELL, 2),)),
    ("long", 2, 2, ()),
    ("short", 1, 2, (*FLATTEN, enter(Side.SELL, 1))),
    ("short", 2, -5, (reduce(Side.BUY, 3),)),
    ("flat", 0, -2, FLATTEN),
    ("flat", 0, 0, (CANCEL,)),
]


@pytest.mark.parametrize(("market", "size", "position", "steps"), TARGET_MODE)
def test_decide_target_mode_orders_the_difference(
    market: str, size: int, position: int, steps: tuple[Step, ...]
) -> None:
    """Target mode: the order is the difference from the broker's position."""
    fields = alert(
        action="buy", quantity="7", market_position=market, market_position_size=size
    )
    settings = IntentSettings(default_mode=Mode.TARGET)

    intent = decide(parse_signal(fields), position, settings)

    assert intent.mode is Mode.TARGET
    assert intent.steps == steps
    assert intent.target == {"long": size, "short": -size, "flat": 0}[market]


def test_decide_target_mode_heals_a_lost_alert() -> None:
    """After a lost 'flat', 'long 2' from the actual long 1 buys 1, not 2."""
    fields = alert(
        action="buy", quantity=2, market_position="long", market_position_size=2
    )
    settings = IntentSettings(default_mode=Mode.TARGET)

    intent = decide(parse_signal(fields), 1, settings)

    assert intent.steps == (enter(Side.BUY, 1),)


@pytest.mark.parametrize(
    ("fields", "default", "mode"),
    [
        (alert(action="buy", quantity=1), Mode.TARGET, Mode.SIGNAL),
        (alert(action="buy", position_size=1), Mode.SIGNAL, Mode.TARGET),
        (alert(action="buy", quantity=1, position_size=1), Mode.SIGNAL, Mode.SIGNAL),
        (alert(action="buy", quantity=1, position_size=1), Mode.TARGET, Mode.TARGET),
        (
            alert(action="buy", quantity=1, position_size=1, mode="signal"),
            Mode.TARGET,
            Mode.SIGNAL,
        ),
    ],
)
def test_resolve_mode(fields: dict[str, Any], default: Mode, mode: Mode) -> None:
    """The alert's choice wins, then the default, then what the alert can serve."""
    assert resolve_mode(parse_signal(fields), default) is mode


@pytest.mark.parametrize(
    ("multiplier", "quantity", "size"),
    [(1.0, 2, 2), (0.5, 3, 2), (0.5, 1, 1), (2.0, 2, 4), (0.3, 5, 2)],
)
def test_decide_multiplier_scales_half_up(
    multiplier: float, quantity: int, size: int
) -> None:
    """An account's multiplier scales sizes, rounding halves up."""
    signal = parse_signal(alert(action="buy", quantity=quantity))

    intent = decide(signal, 0, IntentSettings(), multiplier=multiplier)

    assert intent.steps == (enter(Side.BUY, size),)


def test_decide_multiplier_rounding_to_zero_is_refused() -> None:
    """1 contract x 0.4 rounds to nothing: refused, naming the account."""
    signal = parse_signal(alert(action="buy", quantity=1))

    intent = decide(signal, 0, IntentSettings(), account="eval2", multiplier=0.4)

    assert intent.steps == ()
    assert intent.guard == "multiplier"
    assert "'eval2'" in (intent.refused or "")


@pytest.mark.parametrize(
    ("fields", "position"),
    [
        ({"action": "sell", "quantity": 1}, 1),
        ({"action": "buy", "quantity": 1}, -1),
        ({"action": "close", "quantity": 1}, 1),
        (
            {
                "action": "sell",
                "mode": "target",
                "market_position": "short",
                "market_position_size": 2,
            },
            1,
        ),
    ],
    ids=["sell-while-long", "buy-while-short", "close", "target"],
)
def test_decide_multiplier_rounding_to_zero_still_exits(
    fields: dict[str, Any], position: int
) -> None:
    """A share that rounds to 0 never blocks an exit: the account goes flat."""
    signal = parse_signal(alert(**fields))

    intent = decide(signal, position, IntentSettings(), multiplier=0.2)

    assert intent.refused is None
    assert intent.target == 0
    assert intent.steps[1:] == (Step(StepKind.CLOSE), Step(StepKind.CONFIRM_FLAT))


def test_decide_entry_carries_order_type_prices_and_bracket() -> None:
    """The entry step is the alert's order: type, limit price, bracket."""
    fields = alert(
        action="sell",
        quantity=1,
        order_type="limit",
        price="21010.5",
        stop_loss_ticks=20,
        take_profit="20950",
    )

    [entry] = decide(parse_signal(fields), 0, IntentSettings()).steps

    assert entry.order_type is OrderType.LIMIT
    assert entry.limit_price == 21010.5
    assert entry.bracket == Bracket(stop_loss_ticks=20, take_profit_price=20950.0)


def test_intent_round_trips_through_json() -> None:
    """An intent survives as_dict/JSON/from_dict, as the journal keeps it."""
    fields = alert(action="buy", quantity=2, stop_price=21050, stop_loss_ticks=8)
    intent = decide(parse_signal(fields), -1, IntentSettings(), account="main")

    again = OrderIntent.from_dict(json.loads(json.dumps(intent.as_dict())))

    assert again == intent


def test_without_entries_keeps_the_exits() -> None:
    """A refused reversal still closes: exits are never refused."""
    signal = parse_signal(alert(action="sell", quantity=1))
    intent = decide(signal, 2, IntentSettings())

    screened = intent.without_entries("max_daily_loss", "loss limit reached")

    assert screened.steps == FLATTEN
    assert screened.target == 0
    assert (screened.guard, screened.refused) == (
        "max_daily_loss",
        "loss limit reached",
    )
