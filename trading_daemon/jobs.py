"""Periodic jobs: fill checks, risk updates, metrics snapshots and cleanup.

Each job is submitted to the scheduler at its own priority, so a slow metrics
snapshot can never hold up a fill check. A job whose previous run has not
finished yet is skipped for that tick rather than piled up behind itself.
"""

from __future__ import annotations

import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from .broker import Broker, OrderResult
from .dedup import Deduplicator
from .execution import task_id_for
from .journal import Journal
from .priority import Priority
from .scheduler import QueueFull, Scheduler, SchedulerClosed
from .tasks import Task, TaskState

if TYPE_CHECKING:
    from .metrics import Metrics

FILL_CHECK = "fill_check"
RISK_UPDATE = "risk_update"
METRICS_SNAPSHOT = "metrics_snapshot"
CLEANUP = "cleanup"

_PENDING = (TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRY_WAIT)


@dataclass(frozen=True)
class PeriodicJob:
    kind: str
    priority: Priority
    interval: float


class JobHandlers:
    """The handlers behind the periodic jobs, and what they last saw."""

    def register(self) -> None:
        self._scheduler.register(FILL_CHECK, self.fill_check)
        self._scheduler.register(RISK_UPDATE, self.risk_update)
        self._scheduler.register(METRICS_SNAPSHOT, self.metrics_snapshot)
        self._scheduler.register(CLEANUP, self.cleanup)

    def __init__(
        self,
        brokers: Mapping[str, Broker],
        scheduler: Scheduler,
        journal: Journal,
        dedup: Deduplicator,
        retention_s: float,
        *,
        metrics: Metrics | None = None,
        cancelled_by_daemon: Container[str] = (),
    ) -> None:
        """``brokers`` holds each account's broker by name, the default first."""
        self._brokers = brokers
        self._metrics = metrics
        # Order ids the daemon cancelled itself: not the broker's verdict.
        self._cancelled_by_daemon = cancelled_by_daemon
        # Orders the broker ended unfilled whose task is still running: its
        # own finish would overwrite the mark, so it waits for the next check.
        self._unmarked: list[OrderResult] = []
        self._scheduler = scheduler
        self._journal = journal
        self._dedup = dedup
        self._retention_s = retention_s
        # The default account's summary, and every account's by name.
        self.account: dict[str, Any] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.last_snapshot: dict[str, Any] = {}

    async def fill_check(self, task: Task) -> str:
        summaries = []
        for name, broker in self._brokers.items():
            report = await broker.check_fills()
            if self._metrics is not None:
                for trade in report.trades:
                    fills = self._metrics.fills.labels(broker.name, trade.symbol)
                    fills.inc(trade.size)
            self._unmarked += [
                o
                for o in report.ended
                if task_id_for(o.client_id)
                and o.order_id not in self._cancelled_by_daemon
            ]
            prefix = f"{name}: " if len(self._brokers) > 1 else ""
            summaries.append(prefix + report.summary())
        marked = await self._mark_ended_orders()
        summary = "; ".join(summaries)
        return summary + (f", {marked} tasks marked dead" if marked else "")

    async def _mark_ended_orders(self) -> int:
        """Make dead letters of tasks whose order the broker cancelled or rejected.

        The task itself succeeded (the broker took the order), but the trade it
        asked for did not happen: the operator must see that where failures
        show, with the broker's verdict. A replay finds the same order by its
        client id and places nothing.
        """
        waiting: list[OrderResult] = []
        marked = 0
        for order in self._unmarked:
            task_id = task_id_for(order.client_id)
            assert task_id is not None  # filtered in fill_check
            task = next((t for t in self._scheduler.recent if t.id == task_id), None)
            if task is None:
                task = await self._journal.load_task(task_id)
            if task is None or task.state in (TaskState.DEAD, TaskState.CANCELLED):
                continue
            if task.state is not TaskState.DONE:
                waiting.append(order)
                continue
            task.state = TaskState.DEAD
            task.last_error = (
                f"order {order.order_id} was {order.status.value} by the broker"
                f" after {order.filled_size} of {order.size} contracts filled"
            )
            task.finished_wall = time.time()
            self._journal.task_changed(task)
            marked += 1
            logger.bind(
                task_id=task.id,
                order_id=order.order_id,
                status=order.status.value,
                filled=order.filled_size,
                size=order.size,
            ).error("task.order_ended_unfilled")
        self._unmarked = waiting[-1000:]
        return marked

    async def risk_update(self, task: Task) -> str:
        for name, broker in self._brokers.items():
            summary = await broker.account_summary()
            summary["updated"] = time.time()
            self.accounts[name] = summary
        self.account = next(iter(self.accounts.values()), {})
        return ", ".join(
            f"{name} balance {summary.get('balance')}"
            for name, summary in self.accounts.items()
        )

    async def metrics_snapshot(self, task: Task) -> str:
        snapshot = self._scheduler.snapshot()
        self.last_snapshot = snapshot
        logger.bind(
            queue_size=snapshot["queue_size"],
            active=snapshot["active_tasks"],
            completed=snapshot["tasks_completed"],
            dead=snapshot["tasks_dead"],
            success_rate=snapshot["success_rate"],
        ).info("metrics.snapshot")
        return "snapshot taken"

    async def cleanup(self, task: Task) -> str:
        pruned = await self._journal.prune(self._retention_s)
        expired = self._dedup.prune()
        return f"pruned {pruned} finished tasks, {expired} dedup keys"


async def run_periodic(
    scheduler: Scheduler,
    jobs: list[PeriodicJob],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Submit every job at start and then once per interval, until cancelled."""
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(_tick, scheduler, job)
        task_status.started()


async def _tick(scheduler: Scheduler, job: PeriodicJob) -> None:
    last: Task | None = None
    while True:
        if last is not None and last.state in _PENDING:
            logger.bind(kind=job.kind).debug("job.skipped_still_pending")
        else:
            try:
                task = Task(kind=job.kind, priority=job.priority)
                last = scheduler.submit(task, internal=True)
            except QueueFull:
                logger.bind(kind=job.kind).warning("job.skipped_queue_full")
            except SchedulerClosed:
                return
        await trio.sleep(job.interval)
