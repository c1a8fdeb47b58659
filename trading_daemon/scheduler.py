"""The scheduler: a priority heap fed through a memory channel, drained by workers.

Producers (HTTP handlers, periodic jobs) call ``submit``, which never blocks: it
puts the task on a bounded memory channel with ``send_nowait``, so a full queue is
an immediate refusal the caller can turn into a 503. One intake task moves
whatever the channel holds into the heaps in one batch per wake-up.

Ready tasks wait in one heap per priority, each ordered by (not-before time,
sequence); together they give the order (priority, not-before, sequence). A
delayed heap holds tasks waiting out a retry backoff, ordered by their
not-before time, so a task waiting for its retry never blocks a ready task of
lower priority, which a single heap keyed on priority first would do.

``workers`` dispatch loops each take a slot from a capacity limiter of
``max_concurrent`` before they pick the best ready task, so the choice of what
runs next is made when a slot is free, not earlier. Two rules refine "best":

* ``critical_reserve`` slots are kept for CRITICAL work: other priorities may
  fill at most ``max_concurrent - critical_reserve`` slots, so a fill check or
  a flatten never waits for a slot behind lower-priority work.
* Aging: below CRITICAL, a task that has waited ``aging_interval`` seconds is
  ranked one priority higher for each such interval (never above HIGH), so a
  steady stream of NORMAL alerts cannot starve LOW and BACKGROUND work forever.

A task may name a lane (an account and contract): tasks of one lane run
strictly one at a time in arrival order, a later one parked until the one
before it is done or dead, retries included. Different lanes run in parallel.
A close and a reversal for one contract therefore never overlap or reorder.

Each task runs inside ``move_on_after`` with its priority's timeout. A failure
puts the task back on the delayed heap and frees the slot at once, so backoff
never holds a worker.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import tenacity
import trio
from loguru import logger

from .priority import Priority
from .tasks import Handler, PermanentTaskError, Task, TaskState

_INTERNAL_HEADROOM = 64


class QueueFull(Exception):
    """The scheduler holds ``max_queue`` waiting tasks; try again later."""


class SchedulerClosed(Exception):
    """The scheduler is shutting down and takes no new tasks."""


class SchedulerObserver(Protocol):
    """Receives timing figures (the metrics module implements it)."""

    def task_waited(self, priority: Priority, seconds: float) -> None: ...

    def task_ran(self, priority: Priority, seconds: float, outcome: str) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    workers: int = 5
    max_concurrent: int = 20
    max_queue: int = 1000
    max_retries: int = 3
    retry_base_delay: float = 2.0
    retry_max_delay: float = 60.0
    retry_jitter: float = 0.5
    critical_reserve: int = 2
    aging_interval: float = 30.0
    timeouts: Mapping[Priority, float | None] = field(
        default_factory=lambda: {
            Priority.CRITICAL: 30.0,
            Priority.HIGH: 60.0,
            Priority.NORMAL: 120.0,
            Priority.LOW: 300.0,
            Priority.BACKGROUND: None,
        }
    )


@dataclass
class PriorityFigures:
    """Running totals for one priority."""

    waited: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0
    ran: int = 0
    run_total: float = 0.0
    run_max: float = 0.0

    def as_dict(self, queued: int) -> dict[str, Any]:
        return {
            "queued": queued,
            "wait_avg_s": self.wait_total / self.waited if self.waited else 0.0,
            "wait_max_s": self.wait_max,
            "run_avg_s": self.run_total / self.ran if self.ran else 0.0,
            "run_max_s": self.run_max,
        }


@dataclass
class SchedulerStats:
    """Counters since start. Failures and timeouts count attempts; the rest tasks."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    retried: int = 0
    dead: int = 0
    rejected: int = 0
    recovered: int = 0

    @property
    def success_rate(self) -> float:
        """Completed tasks over tasks that reached an end (completed or dead)."""
        ended = self.completed + self.dead
        return self.completed / ended if ended else 1.0


class _NoObserver:
    def task_waited(self, priority: Priority, seconds: float) -> None:
        pass

    def task_ran(self, priority: Priority, seconds: float, outcome: str) -> None:
        pass


class Scheduler:
    """Runs submitted tasks by priority within a concurrency cap, with retries."""

    def __init__(
        self,
        config: SchedulerConfig,
        handlers: Mapping[str, Handler] | None = None,
        *,
        observer: SchedulerObserver | None = None,
        on_change: Callable[[Task], None] | None = None,
        recent: int = 100,
    ) -> None:
        self.config = config
        self.stats = SchedulerStats()
        self.figures = {p: PriorityFigures() for p in Priority}
        self.recent: deque[Task] = deque(maxlen=recent)
        self.dead_letters: deque[Task] = deque(maxlen=1000)

        self._handlers = dict(handlers or {})
        self._observer = observer or _NoObserver()
        self._on_change = on_change
        # Room beyond max_queue for internal work (periodic jobs) that bypasses
        # the limit alerts are held to.
        self._send, self._receive = trio.open_memory_channel[Task](
            config.max_queue + _INTERNAL_HEADROOM
        )
        self._ready: dict[Priority, list[tuple[float, int, Task]]] = {
            p: [] for p in Priority
        }
        self._delayed: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()
        self._limiter = trio.CapacityLimiter(config.max_concurrent)
        self._running: set[Task] = set()
        self._running_noncritical = 0
        # lane -> the task holding it (ready, running or in retry backoff), and
        # the later tasks of that lane parked in arrival order.
        self._lane_holder: dict[str, Task] = {}
        self._parked: dict[str, deque[Task]] = {}
        self._noncritical_cap = max(1, config.max_concurrent - config.critical_reserve)
        self._waiting_new = 0
        self._closed = False
        self._stop_dispatch = trio.Event()
        self._stopped = trio.Event()
        self._drain_deadline = math.inf
        self._backoff = tenacity.wait_exponential(
            multiplier=config.retry_base_delay, max=config.retry_max_delay
        ) + tenacity.wait_random(0, config.retry_jitter)

    def handler(self, kind: str) -> Handler:
        """The handler registered for ``kind`` (KeyError if none)."""
        return self._handlers[kind]

    def register(self, kind: str, handler: Handler) -> None:
        """Run ``handler`` for tasks of ``kind``."""
        self._handlers[kind] = handler

    # -- producers ---------------------------------------------------------

    def reserve(self) -> None:
        """Claim a place in the queue for a task about to be submitted.

        The webhook reserves before it writes the journal and submits after, so
        a task that was made durable always finds its place.
        """
        if self._closed:
            raise SchedulerClosed("the scheduler is shutting down")
        if self._waiting_new >= self.config.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"{self._waiting_new} tasks are waiting")
        self._waiting_new += 1

    def release(self) -> None:
        """Give back a reservation that will not be submitted."""
        self._waiting_new -= 1

    def submit(
        self, task: Task, *, internal: bool = False, reserved: bool = False
    ) -> Task:
        """Queue ``task`` without blocking; raise QueueFull or SchedulerClosed.

        ``internal`` work (periodic jobs, which never have more than one run
        pending each) is not held to ``max_queue``, so a flood of alerts cannot
        keep a fill check out. ``reserved`` tasks already hold a place.
        """
        if self._closed:
            raise SchedulerClosed("the scheduler is shutting down")
        if not reserved and not internal:
            self.reserve()
        task.holds_queue_slot = not internal

        task.state = TaskState.QUEUED
        task.submitted_at = trio.current_time()
        task.not_before = max(task.not_before, task.submitted_at)
        try:
            self._send.send_nowait(task)
        except (trio.WouldBlock, trio.ClosedResourceError):
            if task.holds_queue_slot:
                self.release()
                task.holds_queue_slot = False
            self.stats.rejected += 1
            raise QueueFull("the intake channel is full") from None
        self.stats.submitted += 1
        # DEBUG: an alert's task already has its alert.accepted line, and each
        # INFO line costs the webhook path about 18 us.
        logger.debug(
            "task.submitted",
            task_id=task.id,
            priority=task.priority.label,
            kind=task.kind,
        )

        return task

    def restore(self, task: Task, delay: float = 0.0) -> None:
        """Put back a task recovered from the journal, keeping its attempts.

        Recovered work was acknowledged long ago, so it bypasses ``max_queue``
        and the intake channel, whose size it could exceed.
        """
        now = trio.current_time()
        task.submitted_at = now
        task.not_before = now + max(0.0, delay)
        task.holds_queue_slot = False
        task.state = TaskState.RETRY_WAIT if delay > 0 else TaskState.QUEUED
        self._admit(task)
        self._notify()
        self.stats.recovered += 1
        logger.bind(
            task_id=task.id,
            priority=task.priority.label,
            kind=task.kind,
            attempts=task.attempts,
            delay_s=round(max(0.0, delay), 3),
        ).info("task.recovered")

    # -- figures -----------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Tasks waiting to start: new ones and those waiting for a retry."""
        pending = self._receive.statistics().current_buffer_used
        ready = sum(len(queue) for queue in self._ready.values())
        parked = sum(len(queue) for queue in self._parked.values())
        return pending + ready + parked + len(self._delayed)

    @property
    def active(self) -> int:
        return len(self._running)

    def queued_by_priority(self) -> dict[Priority, int]:
        counts = dict.fromkeys(Priority, 0)
        for priority, queue in self._ready.items():
            counts[priority] += len(queue)
        for lane in self._parked.values():
            for task in lane:
                counts[task.priority] += 1
        for *_, task in self._delayed:
            counts[task.priority] += 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        """The ``task_queue`` object of /metrics?format=json and /status."""
        s = self.stats
        queued = self.queued_by_priority()
        return {
            "queue_size": self.queue_size,
            "active_tasks": self.active,
            "max_concurrent": self.config.max_concurrent,
            "max_queue": self.config.max_queue,
            "workers": self.config.workers,
            "tasks_submitted": s.submitted,
            "tasks_completed": s.completed,
            "tasks_failed": s.failed,
            "tasks_timeout": s.timed_out,
            "tasks_cancelled": s.cancelled,
            "tasks_retried": s.retried,
            "tasks_dead": s.dead,
            "tasks_rejected": s.rejected,
            "tasks_recovered": s.recovered,
            "success_rate": round(s.success_rate, 4),
            "by_priority": {
                p.label: self.figures[p].as_dict(queued[p]) for p in Priority
            },
        }

    # -- running -----------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Dispatch tasks until ``shutdown`` is called, then drain and return."""
        try:
            await self._run(task_status)
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as runners:
            async with trio.open_nursery() as dispatch:
                dispatch.start_soon(self._intake)
                for index in range(self.config.workers):
                    dispatch.start_soon(self._dispatch, index, runners)
                task_status.started()

                await self._stop_dispatch.wait()
                dispatch.cancel_scope.cancel()

            # Running tasks get until the drain deadline; then they are cancelled
            # and counted as such by _execute.
            runners.cancel_scope.deadline = self._drain_deadline

        self._cancel_waiting()

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop taking tasks; let running ones finish within ``drain_timeout``."""
        self._closed = True
        self._drain_deadline = trio.current_time() + drain_timeout
        self._stop_dispatch.set()
        logger.bind(running=self.active, queued=self.queue_size).info(
            "scheduler.draining"
        )

    def _cancel_waiting(self) -> None:
        leftovers: list[Task] = [
            entry[-1] for queue in self._ready.values() for entry in queue
        ]
        leftovers += [entry[-1] for entry in self._delayed]
        leftovers += [task for lane in self._parked.values() for task in lane]
        self._parked.clear()
        self._lane_holder.clear()
        while True:
            try:
                leftovers.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for queue in self._ready.values():
            queue.clear()
        self._delayed.clear()
        for task in leftovers:
            self._finish(task, TaskState.CANCELLED, "daemon stopped before it ran")
            self.stats.cancelled += 1
            # Durable tasks stay unfinished in the journal and run after restart.
            logger.bind(
                task_id=task.id,
                priority=task.priority.label,
                kind=task.kind,
                recovers_at_restart=task.durable,
            ).warning("task.cancelled_waiting")
        logger.bind(cancelled_waiting=len(leftovers)).info("scheduler.stopped")

    async def _intake(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            # One receive per wake-up would fall behind many producers
            # (PITFALLS.md): take everything already buffered in this pass.
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            entered = False
            for task in batch:
                entered |= self._admit(task)
            # Tasks parked behind a busy lane give the dispatchers nothing to
            # start; waking them all for it would cost every alert of a burst
            # on one contract a pass through each.
            if entered:
                self._notify()

    def _admit(self, task: Task) -> bool:
        """Queue a new or recovered task, parking it behind its lane if busy.

        True if it entered the heaps, False if it waits behind its lane.
        """
        if task.lane is not None:
            if task.lane in self._lane_holder:
                self._parked.setdefault(task.lane, deque()).append(task)
                return False
            self._lane_holder[task.lane] = task
        self._enter(task)
        return True

    def _enter(self, task: Task) -> None:
        if task.not_before > trio.current_time():
            heapq.heappush(self._delayed, (task.not_before, next(self._seq), task))
        else:
            self._push_ready(task)

    def _release_lane(self, task: Task) -> None:
        """After ``task`` ended for good, let the next task of its lane in."""
        lane = task.lane
        if lane is None or self._lane_holder.get(lane) is not task:
            return
        parked = self._parked.get(lane)
        if parked:
            successor = parked.popleft()
            if not parked:
                del self._parked[lane]
            self._lane_holder[lane] = successor
            self._enter(successor)
            self._notify()
        else:
            del self._lane_holder[lane]

    def _push_ready(self, task: Task) -> None:
        entry = (task.not_before, next(self._seq), task)
        heapq.heappush(self._ready[task.priority], entry)

    def _push_delayed(self, task: Task) -> None:
        heapq.heappush(self._delayed, (task.not_before, next(self._seq), task))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _dispatch(self, index: int, runners: trio.Nursery) -> None:
        while True:
            token = object()
            await self._limiter.acquire_on_behalf_of(token)
            try:
                task = await self._next_ready()
            except BaseException:
                self._limiter.release_on_behalf_of(token)
                raise
            self._running.add(task)
            if task.priority is not Priority.CRITICAL:
                self._running_noncritical += 1
            runners.start_soon(self._execute, task, token)

    async def _next_ready(self) -> Task:
        while True:
            now = trio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                *_, task = heapq.heappop(self._delayed)
                self._push_ready(task)
            picked = self._pick(now)
            if picked is not None:
                return picked

            wake_at = self._delayed[0][0] if self._delayed else math.inf
            changed = self._changed
            with trio.move_on_at(wake_at):
                await changed.wait()

    def _pick(self, now: float) -> Task | None:
        """Pop the task to start next, or None if nothing may start now."""
        critical = self._ready[Priority.CRITICAL]
        if critical:
            return heapq.heappop(critical)[-1]
        if self._running_noncritical >= self._noncritical_cap:
            return None

        best: tuple[float, float, int] | None = None
        best_priority: Priority | None = None
        aging = self.config.aging_interval
        for priority, queue in self._ready.items():
            if not queue or priority is Priority.CRITICAL:
                continue
            not_before, seq, _ = queue[0]
            rank = float(priority)
            if aging > 0:
                promoted = (now - not_before) // aging
                rank = max(float(Priority.HIGH), rank - promoted)
            key = (rank, not_before, seq)
            if best is None or key < best:
                best, best_priority = key, priority
        if best_priority is None:
            return None
        return heapq.heappop(self._ready[best_priority])[-1]

    async def _execute(self, task: Task, token: object) -> None:
        now = trio.current_time()
        if task.holds_queue_slot:
            task.holds_queue_slot = False
            self._waiting_new -= 1
        task.attempts += 1
        task.state = TaskState.RUNNING
        self._changed_hook(task)
        waited = max(0.0, now - task.not_before)
        self._record_wait(task.priority, waited)

        # Fields as keyword arguments rather than logger.bind(): bind copies the
        # logger on every call, a measurable share of the webhook path's cost.
        log = {
            "task_id": task.id,
            "priority": task.priority.label,
            "kind": task.kind,
            "attempt": task.attempts,
        }
        wait_ms = round(waited * 1000, 2)
        # DEBUG too: task.completed (or .failed, .timed_out) carries wait_ms,
        # and a task still running shows in /status's active_tasks and oldest
        # unfinished age.
        logger.debug("task.started", **log, wait_ms=wait_ms)
        timeout = self.config.timeouts.get(task.priority)
        started = now
        outcome = "cancelled"

        try:
            handler = self._handlers.get(task.kind)
            if handler is None:
                raise PermanentTaskError(f"no handler for task kind {task.kind!r}")
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                result = await handler(task)
            if scope.cancelled_caught:
                outcome = "timeout"
                self.stats.timed_out += 1
                logger.warning("task.timed_out", **log, timeout_s=timeout)
                self._failed(task, f"timed out after {timeout:g} s", log)
            else:
                outcome = "completed"
                task.result = result
                self.stats.completed += 1
                self._finish(task, TaskState.DONE, None)
                logger.info(
                    "task.completed",
                    **log,
                    result=result,
                    wait_ms=wait_ms,
                    run_ms=round((trio.current_time() - started) * 1000, 2),
                )
        except trio.Cancelled:
            self.stats.cancelled += 1
            self._finish(task, TaskState.CANCELLED, "cancelled at shutdown")
            logger.warning("task.cancelled", **log)
            raise
        except PermanentTaskError as exc:
            outcome = "dead"
            self.stats.failed += 1
            self._dead(task, str(exc), log)
        except Exception as exc:
            outcome = "failed"
            self.stats.failed += 1
            logger.warning("task.failed", **log, error=_describe(exc))
            self._failed(task, _describe(exc), log)
        finally:
            if task.state is TaskState.DEAD:
                outcome = "dead"
            self._running.discard(task)
            if task.priority is not Priority.CRITICAL:
                self._running_noncritical -= 1
                # A non-critical slot came free: a waiting dispatcher may start one.
                self._notify()
            self._limiter.release_on_behalf_of(token)
            self._record_run(task.priority, trio.current_time() - started, outcome)

    def _failed(self, task: Task, reason: str, log: dict[str, Any]) -> None:
        task.last_error = reason
        if task.attempts > self.config.max_retries:
            self._dead(task, reason, log)
            return

        delay = self.backoff_delay(task.attempts)
        task.state = TaskState.RETRY_WAIT
        task.not_before = trio.current_time() + delay
        self.stats.retried += 1
        logger.warning("task.retry_scheduled", **log, delay_s=round(delay, 3))
        self._changed_hook(task)
        self._push_delayed(task)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._backoff(state))

    def _dead(self, task: Task, reason: str, log: dict[str, Any]) -> None:
        self.stats.dead += 1
        self._finish(task, TaskState.DEAD, reason)
        self.dead_letters.append(task)
        logger.error("task.dead", **log, error=reason)

    def _finish(self, task: Task, state: TaskState, error: str | None) -> None:
        task.state = state
        if error is not None:
            task.last_error = error
        task.finished_wall = time.time()
        self.recent.append(task)
        self._changed_hook(task)
        self._release_lane(task)

    def _changed_hook(self, task: Task) -> None:
        if self._on_change is not None and task.durable:
            self._on_change(task)

    def _record_wait(self, priority: Priority, seconds: float) -> None:
        fig = self.figures[priority]
        fig.waited += 1
        fig.wait_total += seconds
        fig.wait_max = max(fig.wait_max, seconds)
        self._observer.task_waited(priority, seconds)

    def _record_run(self, priority: Priority, seconds: float, outcome: str) -> None:
        fig = self.figures[priority]
        fig.ran += 1
        fig.run_total += seconds
        fig.run_max = max(fig.run_max, seconds)
        self._observer.task_ran(priority, seconds, outcome)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
