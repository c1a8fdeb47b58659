"""Periodic jobs: fill checks, risk updates, metrics snapshots and cleanup.

Each job is submitted to the scheduler at its own priority, so a slow metrics
snapshot can never hold up a fill check. A job whose previous run has not
finished yet is skipped for that tick rather than piled up behind itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import trio
from loguru import logger

from .broker import Broker
from .dedup import Deduplicator
from .journal import Journal
from .priority import Priority
from .scheduler import QueueFull, Scheduler, SchedulerClosed
from .tasks import Task, TaskState

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
        broker: Broker,
        scheduler: Scheduler,
        journal: Journal,
        dedup: Deduplicator,
        retention_s: float,
    ) -> None:
        self._broker = broker
        self._scheduler = scheduler
        self._journal = journal
        self._dedup = dedup
        self._retention_s = retention_s
        self.account: dict[str, Any] = {}
        self.last_snapshot: dict[str, Any] = {}

    async def fill_check(self, task: Task) -> str:
        filled = await self._broker.check_fills()
        return f"{filled} new fills"

    async def risk_update(self, task: Task) -> str:
        self.account = await self._broker.account_summary()
        self.account["updated"] = time.time()
        return f"balance {self.account.get('balance')}"

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
