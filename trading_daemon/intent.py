"""Order intent: what one alert means for one account's position, as steps.

``decide`` is pure: from a signal, the position the broker reports and the
settings it returns the steps to take (cancel working orders, close, confirm
flat, reduce, enter) or a refusal with its reason. The executor records the
intent before it sends anything and carries the steps out one by one.

Two ways to read an alert:

- signal mode: the alert is an order. Buy while flat opens a long; buy while
  short reverses (cancel working orders, close, confirm flat, then enter);
  buy while long adds only when pyramiding is on, within TRADING_MAX_PYRAMID.
- target mode: the alert carries the position the strategy means to hold
  (TradingView's market_position and market_position_size). The order is the
  difference from the broker's actual position, so an alert that was lost
  heals with the next one instead of leaving a doubled position behind.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any

from .alerts import Action, Mode, Signal
from .broker import Bracket, OrderType, Side


class StepKind(enum.StrEnum):
    CANCEL_WORKING = "cancel_working"
    CLOSE = "close"
    CONFIRM_FLAT = "confirm_flat"
    REDUCE = "reduce"
    ENTER = "enter"

    @property
    def places_order(self) -> bool:
        """True for steps that send an order of their own, with a client id."""
        return self in (StepKind.REDUCE, StepKind.ENTER)


@dataclass(frozen=True)
class Step:
    """One thing to do; ``side`` and ``size`` belong to reduce and enter."""

    kind: StepKind
    side: Side | None = None
    size: int = 0
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    stop_price: float | None = None
    reference_price: float | None = None
    bracket: Bracket | None = None

    def describe(self) -> str:
        if not self.kind.places_order:
            return self.kind.value.replace("_", " ")
        assert self.side is not None  # reduce and enter always have a side
        text = f"{self.kind.value} {self.side.value} {self.size} {self.order_type}"
        price = self.limit_price or self.stop_price
        if price is not None:
            text += f" @ {price:g}"
        if self.bracket is not None:
            legs = ", ".join(f"{k} {v:g}" for k, v in self.bracket.as_dict().items())
            text += f" ({legs})"
        return text

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind.value}
        if self.kind.places_order:
            assert self.side is not None
            body.update(
                side=self.side.value, size=self.size, order_type=self.order_type
            )
            for name in ("limit_price", "stop_price", "reference_price"):
                if getattr(self, name) is not None:
                    body[name] = getattr(self, name)
            if self.bracket is not None:
                body["bracket"] = self.bracket.as_dict()
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Step:
        side = body.get("side")
        return cls(
            kind=StepKind(body["kind"]),
            side=None if side is None else Side(side),
            size=int(body.get("size", 0)),
            order_type=OrderType(body.get("order_type", OrderType.MARKET)),
            limit_price=body.get("limit_price"),
            stop_price=body.get("stop_price"),
            reference_price=body.get("reference_price"),
            bracket=Bracket.from_dict(body.get("bracket")),
        )


@dataclass(frozen=True)
class IntentSettings:
    default_mode: Mode = Mode.SIGNAL
    pyramiding: bool = False
    # Most entries in one direction, the first included, each of the alert's
    # size: with 3, a 1-lot strategy may hold up to 3.
    max_pyramid: int = 3


@dataclass(frozen=True)
class OrderIntent:
    """The decision about one alert for one account, with its reason.

    ``position`` is what the broker held when it was made and ``target`` what
    the steps lead to. ``refused`` says why an entry (or the whole alert) was
    turned down, and ``guard`` names the rule that did it.
    """

    account: str
    symbol: str
    mode: Mode
    position: int
    target: int
    steps: tuple[Step, ...]
    reason: str
    refused: str | None = None
    guard: str | None = None

    @property
    def entries(self) -> list[Step]:
        return [step for step in self.steps if step.kind is StepKind.ENTER]

    def describe(self) -> str:
        if not self.steps:
            return f"refused: {self.refused}" if self.refused else self.reason
        plan = "; ".join(step.describe() for step in self.steps)
        refused = f" (entry refused: {self.refused})" if self.refused else ""
        return f"{self.reason}: {plan}{refused}"

    def without_entries(self, guard: str, reason: str) -> OrderIntent:
        """This intent with its entries refused: exits still go ahead."""
        steps = tuple(s for s in self.steps if s.kind is not StepKind.ENTER)
        return replace(
            self,
            steps=steps,
            target=position_after(self.position, steps),
            refused=reason,
            guard=guard,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "symbol": self.symbol,
            "mode": self.mode.value,
            "position": self.position,
            "target": self.target,
            "reason": self.reason,
            "refused": self.refused,
            "guard": self.guard,
            "steps": [step.as_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> OrderIntent:
        return cls(
            account=body["account"],
            symbol=body["symbol"],
            mode=Mode(body["mode"]),
            position=int(body["position"]),
            target=int(body["target"]),
            steps=tuple(Step.from_dict(step) for step in body["steps"]),
            reason=body["reason"],
            refused=body.get("refused"),
            guard=body.get("guard"),
        )


def position_after(position: int, steps: tuple[Step, ...] | list[Step]) -> int:
    """The position ``steps`` lead to from ``position``, if every order fills."""
    for step in steps:
        if step.kind is StepKind.CLOSE:
            position = 0
        elif step.kind.places_order:
            assert step.side is not None
            position += step.side.sign * step.size
    return position


def resolve_mode(signal: Signal, default: Mode) -> Mode:
    """The alert's own choice, else the default, else the mode it can serve."""
    if signal.mode is not None:
        return signal.mode
    if signal.target is None:
        return Mode.SIGNAL
    if default is Mode.TARGET or signal.quantity is None:
        return Mode.TARGET
    return Mode.SIGNAL


def decide(
    signal: Signal,
    position: int,
    settings: IntentSettings,
    *,
    account: str = "",
    multiplier: float = 1.0,
) -> OrderIntent:
    """What ``signal`` means for an account holding ``position`` (signed) now.

    ``multiplier`` scales the alert's sizes for this account (rounded to the
    nearest contract). A size that rounds to nothing refuses a new entry, but
    an exit or a target of that size takes the account flat.
    """
    mode = resolve_mode(signal, settings.default_mode)
    base = OrderIntent(account, signal.symbol, mode, position, position, (), "")

    if signal.action is Action.CANCEL:
        steps = (Step(StepKind.CANCEL_WORKING),)
        return replace(base, steps=steps, reason="cancel working orders")

    sizes = [signal.quantity, None if signal.target is None else abs(signal.target)]
    scaled = [None if size is None else _scale(size, multiplier) for size in sizes]
    quantity, target_size = scaled
    if signal.quantity and not quantity and mode is Mode.SIGNAL:
        # This account's share rounds to nothing. Exits are never refused: a
        # close or an order against the position still takes this account
        # flat (less exposure, never more); only a new entry is refused.
        if signal.action is Action.CLOSE:
            return _toward(base, signal, 0)
        against = (signal.action is Action.BUY and position < 0) or (
            signal.action is Action.SELL and position > 0
        )
        if against:
            return _toward(base, signal, 0)
        if signal.action is not Action.REVERSE:
            return _refuse(
                base,
                "multiplier",
                f"{signal.quantity} contracts x multiplier {multiplier:g} for"
                f" account {account!r} rounds to 0",
            )

    if mode is Mode.TARGET:
        assert signal.target is not None and target_size is not None
        return _toward(base, signal, int(math.copysign(target_size, signal.target)))
    return _signal_mode(base, signal, quantity, settings)


def _scale(size: int, multiplier: float) -> int:
    # Half up, not to even: 0.5 x 3 = 1.5 is 2 contracts, as a trader expects.
    # The epsilon keeps 0.3 x 5 (1.4999...) from falling to 1.
    return math.floor(size * multiplier + 0.5 + 1e-9)


def _signal_mode(
    base: OrderIntent, signal: Signal, quantity: int | None, settings: IntentSettings
) -> OrderIntent:
    position = base.position
    held = _describe_position(base.symbol, position)

    if signal.action is Action.CLOSE:
        if quantity is not None and quantity < abs(position):
            return _toward(base, signal, position - _sign(position) * quantity)
        return _toward(base, signal, 0)

    if signal.action is Action.REVERSE:
        if position == 0:
            return _refuse(base, "intent", f"nothing to reverse: {held}")
        size = quantity or abs(position)
        return _toward(base, signal, -_sign(position) * size)

    assert quantity is not None  # parse_signal requires it for signal-mode entries
    side = Side.BUY if signal.action is Action.BUY else Side.SELL
    if position == 0 or _sign(position) != side.sign:
        return _toward(base, signal, side.sign * quantity)

    if not settings.pyramiding:
        return _refuse(
            base,
            "pyramiding",
            f"{held}; adding is off (TRADING_PYRAMIDING)",
        )
    if abs(position) + quantity > settings.max_pyramid * quantity:
        return _refuse(
            base,
            "pyramiding",
            f"{held}; adding {quantity} passes TRADING_MAX_PYRAMID"
            f" ({settings.max_pyramid} entries of {quantity})",
        )
    return _toward(base, signal, position + side.sign * quantity)


def _toward(base: OrderIntent, signal: Signal, target: int) -> OrderIntent:
    """The steps from ``base.position`` to ``target``: the same for both modes."""
    position = base.position
    held = _describe_position(base.symbol, position)
    wanted = _describe_position(base.symbol, target)
    if target == position == 0:
        # Flat already; an entry still resting from an earlier alert must not
        # open what the strategy has closed.
        cancel = (Step(StepKind.CANCEL_WORKING),)
        return replace(base, steps=cancel, reason=f"{held}; cancel working orders")
    if target == position:
        return replace(base, reason=f"{held}, as intended")

    flatten = (
        Step(StepKind.CANCEL_WORKING),
        Step(StepKind.CLOSE),
        Step(StepKind.CONFIRM_FLAT),
    )
    if target == 0:
        return replace(base, steps=flatten, target=0, reason=f"{held}; go flat")

    enter_side = Side.BUY if target > 0 else Side.SELL
    steps: tuple[Step, ...]
    if position and _sign(position) != _sign(target):
        steps = (*flatten, _entry(signal, enter_side, abs(target)))
        reason = f"{held}; reverse to {wanted}"
    elif abs(target) > abs(position):
        steps = (_entry(signal, enter_side, abs(target) - abs(position)),)
        reason = f"{held}; {'open' if position == 0 else 'add to'} {wanted}"
    else:
        exit_side = Side.SELL if position > 0 else Side.BUY
        steps = (Step(StepKind.REDUCE, exit_side, abs(position) - abs(target)),)
        reason = f"{held}; reduce to {wanted}"
    return replace(base, steps=steps, target=target, reason=reason)


def _entry(signal: Signal, side: Side, size: int) -> Step:
    return Step(
        StepKind.ENTER,
        side,
        size,
        order_type=signal.order_type,
        limit_price=signal.limit_price,
        stop_price=signal.stop_price,
        reference_price=signal.reference_price,
        bracket=signal.bracket,
    )


def _refuse(base: OrderIntent, guard: str, reason: str) -> OrderIntent:
    return replace(base, reason=reason, refused=reason, guard=guard)


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _describe_position(symbol: str, position: int) -> str:
    if position == 0:
        return f"{symbol} flat"
    return f"{symbol} {'long' if position > 0 else 'short'} {abs(position)}"
