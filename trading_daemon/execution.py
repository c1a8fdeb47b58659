"""Trade execution: from an alert's task to the orders its intent calls for.

For each task the executor reads the account's position, decides the intent
(intent.py), lets the risk guards screen its entries (risk.py), records the
intent in the journal and only then carries out its steps. The record is what
makes a rerun safe (a retry, a restart mid-task, a dead-letter replay): the
rerun carries out the recorded decision rather than a new one made from a
position the first run already changed, and every order of a step has a client
id fixed by the task and the step (``td-<task>-<step>``). A rerun looks the
orders up, newest step first, and resumes after the last one that exists.

The scheduler runs tasks of one lane (account and contract) one at a time, so
two alerts for a contract never interleave their steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from loguru import logger

from .accounts import Accounts
from .alerts import Signal
from .broker import Broker, BrokerRefusal, OrderRequest, OrderResult
from .intent import IntentSettings, OrderIntent, StepKind, decide
from .metrics import Metrics
from .risk import RiskGuard, daily_pnl
from .tasks import PermanentTaskError, Task

if TYPE_CHECKING:
    from .journal import Journal

EXECUTE_SIGNAL = "execute_signal"
FLATTEN_ALL = "flatten_all"
# Marks the daemon's orders among the account's (ProjectX: their customTag).
CLIENT_ID_PREFIX = "td-"
# How long a close may take to show as flat before the task tries again.
CONFIRM_FLAT_S = 10.0
POLL_S = 0.2
_KEEP_CANCELLED = 10_000


def client_id_for(task: Task, step: int) -> str:
    """The client id of step ``step`` (1-based): fixed, so a rerun finds it."""
    return f"{CLIENT_ID_PREFIX}{task.id}-{step}"


def task_id_for(client_id: str) -> str | None:
    """The task that placed the order with ``client_id``; None if not the daemon."""
    if not client_id.startswith(CLIENT_ID_PREFIX):
        return None
    # Task ids are hex; "td-<task>" (one order per task, before intents) and
    # "td-<task>-<step>" both name the task.
    return client_id.removeprefix(CLIENT_ID_PREFIX).split("-", 1)[0] or None


class NotFlatYet(Exception):
    """A close has not shown as flat in time; the task's retry resumes here."""


class Executor:
    """Carries out alerts' intents, and the kill switch's flatten, on the brokers."""

    def __init__(
        self,
        accounts: Accounts,
        journal: Journal,
        risk: RiskGuard,
        settings: IntentSettings,
        *,
        metrics: Metrics | None = None,
        confirm_flat_s: float = CONFIRM_FLAT_S,
        poll_s: float = POLL_S,
    ) -> None:
        self._accounts = accounts
        self._journal = journal
        self._risk = risk
        self._settings = settings
        self._metrics = metrics
        self._confirm_flat_s = confirm_flat_s
        self._poll_s = poll_s
        # Orders the daemon cancelled itself (reversals, the kill switch): the
        # fill check must not take them for orders the broker refused.
        self.cancelled: dict[str, None] = {}
        self._entering = 0

    # -- alerts --------------------------------------------------------------

    async def execute_signal(self, task: Task) -> str:
        signal = Signal.from_payload(task.payload["signal"])
        account = task.payload.get("account") or self._accounts.default
        if account not in self._accounts.brokers:
            raise PermanentTaskError(
                f"account {account!r} is not configured (TRADING_ACCOUNTS)"
            )
        broker = self._accounts.broker(account)
        resuming = task.intent is not None

        if not resuming and task.attempts > 1:
            # A task journaled before order intents placed one order, with
            # the client id "td-<task>": a rerun must find it, not decide anew.
            earlier = await broker.find_order(f"{CLIENT_ID_PREFIX}{task.id}")
            if earlier is not None:
                return _describe(earlier) + " (found from an earlier attempt)"

        pnl: float | None = None
        if task.intent is None:
            intent, pnl = await self._decide(signal, account, broker)
            task.intent = intent.as_dict()
            if intent.steps:
                # Durable before any order is sent (see the module's
                # docstring). An intent without steps sends nothing, so a
                # rerun may as well decide again: it costs no disk sync, and
                # its reason is in the task's result.
                await self._journal.record_intent(task.id, task.intent)
            self._risk.record(task.id, intent)
        else:
            intent = OrderIntent.from_dict(task.intent)
        # An intent that sends nothing is told by risk.refused (refusals) and
        # task.completed's result (both carry the reason): a third line saying
        # so would cost every such alert about 18 us. So DEBUG for those.
        logger.log(
            "INFO" if intent.steps else "DEBUG",
            "intent.decided",
            task_id=task.id,
            account=account,
            symbol=intent.symbol,
            mode=intent.mode.value,
            position=intent.position,
            target=intent.target,
            steps=len(intent.steps),
            refused=intent.guard,
            resumed=resuming,
            plan=intent.describe(),
        )

        if not intent.steps:
            return f"refused: {intent.refused}" if intent.refused else intent.reason
        done = await self._carry_out(task, intent, broker, resuming, pnl)
        if intent.refused:
            done.append(f"entry refused: {intent.refused}")
        return "; ".join(done)

    async def _decide(
        self, signal: Signal, account: str, broker: Broker
    ) -> tuple[OrderIntent, float | None]:
        position = await broker.position(signal.symbol)
        intent = decide(
            signal,
            position.size,
            self._settings,
            account=account,
            multiplier=self._accounts.multipliers[account],
        )
        pnl = None
        if intent.entries:
            pnl = await self._pnl_today(broker)
            intent = self._risk.screen(intent, pnl)
        return intent, pnl

    async def _pnl_today(self, broker: Broker) -> float | None:
        if not self._risk.needs_daily_pnl:
            return None
        return daily_pnl(await broker.trades(), self._risk.clock())

    async def _carry_out(
        self,
        task: Task,
        intent: OrderIntent,
        broker: Broker,
        resuming: bool,
        pnl: float | None,
    ) -> list[str]:
        steps = intent.steps
        done: list[str] = []
        start = 0
        if resuming:
            for index in reversed(range(len(steps))):
                if not steps[index].kind.places_order:
                    continue
                found = await broker.find_order(client_id_for(task, index + 1))
                if found is not None:
                    done.append(_describe(found) + " (found from an earlier attempt)")
                    start = index + 1
                    break

        for index in range(start, len(steps)):
            step = steps[index]
            if step.kind is StepKind.ENTER and (index > start or pnl is None):
                # An exit before it may have realised a loss.
                pnl = await self._pnl_today(broker)
            try:
                outcome = await self._run(task, intent, index, broker, pnl)
            except BrokerRefusal as exc:
                # A business refusal (outside trading hours, no funds, a
                # bracket the broker will not take) will not change on retry:
                # give up at once with the broker's reason. A refused entry
                # was never placed, so nothing is left unprotected.
                raise PermanentTaskError(f"broker refused: {exc}") from exc
            done.append(outcome)
        return done

    async def _run(
        self,
        task: Task,
        intent: OrderIntent,
        index: int,
        broker: Broker,
        pnl: float | None,
    ) -> str:
        step, symbol = intent.steps[index], intent.symbol
        if step.kind is StepKind.CANCEL_WORKING:
            count = await self._cancel_working(broker, symbol, keep=f"td-{task.id}-")
            return f"cancelled {count} working {symbol} orders"
        if step.kind is StepKind.CLOSE:
            await broker.close_position(symbol)
            return f"closed {symbol}"
        if step.kind is StepKind.CONFIRM_FLAT:
            deadline = trio.current_time() + self._confirm_flat_s
            while (await broker.position(symbol)).size:
                if trio.current_time() >= deadline:
                    raise NotFlatYet(
                        f"{symbol} is not flat {self._confirm_flat_s:g} s after"
                        " its close"
                    )
                await trio.sleep(self._poll_s)
            return f"{symbol} flat"

        side, size = step.side, step.size
        assert side is not None  # reduce and enter always have a side
        if step.kind is StepKind.REDUCE:
            held = (await broker.position(symbol)).size
            if held * side.sign >= 0:
                return f"{symbol} has nothing left to reduce"
            size = min(size, abs(held))
        else:
            # Checked again as it goes out: a halt, the session's end or a
            # loss the close just realised may have come since the decision.
            # An entry is always an intent's last step.
            refused = self._risk.entry_refusal(symbol, size, intent.target, pnl)
            if refused is not None:
                self._risk.record(task.id, intent.without_entries(*refused))
                return f"entry refused: {refused[1]}"

        request = OrderRequest(
            symbol,
            side,
            size,
            client_id_for(task, index + 1),
            order_type=step.order_type,
            limit_price=step.limit_price,
            stop_price=step.stop_price,
            bracket=step.bracket,
            reference_price=step.reference_price,
        )
        self._entering += 1
        try:
            result = await broker.place_order(request)
        finally:
            self._entering -= 1
        self._count(broker, result)
        return _describe(result)

    async def _cancel_working(
        self, broker: Broker, symbol: str | None, *, keep: str | None = None
    ) -> int:
        """Cancel working orders (of ``symbol``), except those whose id starts ``keep``.

        An order that fills or ends while this runs makes the cancel fail; the
        close and the flat check after it deal with what a fill left.
        """
        count = 0
        for order in await broker.open_orders():
            if symbol not in (None, order.symbol):
                continue
            if keep is not None and order.client_id.startswith(keep):
                continue
            self.cancelled[order.order_id] = None
            try:
                await broker.cancel_order(order.order_id)
            except BrokerRefusal as exc:
                logger.bind(order_id=order.order_id, reason=str(exc)).info(
                    "order.cancel_refused"
                )
                continue
            count += 1
        while len(self.cancelled) > _KEEP_CANCELLED:
            del self.cancelled[next(iter(self.cancelled))]
        return count

    # -- the kill switch -----------------------------------------------------

    async def flatten_all(self, task: Task) -> str:
        """Cancel every working order and close every position, on every account.

        Runs as a CRITICAL task without a lane, so it does not wait behind
        alerts. Entries are refused from the moment the halt was asked for; one
        already on its way to the broker is waited for and closed as well.
        """
        reports = []
        for name, broker in self._accounts.brokers.items():
            cancelled, closed = await self._flatten(broker)
            shown = ", ".join(sorted(closed)) or "nothing"
            reports.append(f"{name}: cancelled {cancelled} orders, closed {shown}")
        logger.bind(task_id=task.id, accounts=len(reports)).warning("risk.flattened")
        return "; ".join(reports)

    async def _flatten(self, broker: Broker) -> tuple[int, set[str]]:
        cancelled, closed = 0, set()
        deadline = trio.current_time() + self._confirm_flat_s
        while True:
            cancelled += await self._cancel_working(broker, None)
            held = [p for p in await broker.positions(fresh=True) if p.size]
            for position in held:
                await broker.close_position(position.symbol)
                closed.add(position.symbol)
            if not held and not self._entering:
                return cancelled, closed
            if trio.current_time() >= deadline:
                shown = ", ".join(f"{p.symbol} {p.size}" for p in held) or "entries"
                raise NotFlatYet(f"still holding {shown} after flattening")
            await trio.sleep(self._poll_s)

    def _count(self, broker: Broker, result: OrderResult) -> None:
        if self._metrics is None:
            return
        name = broker.name
        self._metrics.orders.labels(name, result.side.value, result.status).inc()
        if result.filled_size:
            self._metrics.fills.labels(name, result.symbol).inc(result.filled_size)


def _describe(result: OrderResult) -> str:
    price = f" @ {result.fill_price:g}" if result.fill_price is not None else ""
    resting = f" {result.order_type} {result.price:g}" if result.price else ""
    return (
        f"{result.side.value} {result.size} {result.symbol}{resting}"
        f" {result.status.value}{price} (order {result.order_id})"
    )
