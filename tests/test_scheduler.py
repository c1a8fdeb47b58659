"""Scheduler: priority order, timeouts, backoff, dead letters, caps and draining."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trading_daemon.priority import Priority
from trading_daemon.scheduler import (
    QueueFull,
    Scheduler,
    SchedulerClosed,
    SchedulerConfig,
)
from trading_daemon.tasks import PermanentTaskError, Task, TaskState

TIMEOUTS = {
    Priority.CRITICAL: 30.0,
    Priority.HIGH: 60.0,
    Priority.NORMAL: 120.0,
    Priority.LOW: 300.0,
    Priority.BACKGROUND: None,
}


def make(**overrides: object) -> Scheduler:
    base: dict[str, object] = {
        "workers": 5,
        "max_concurrent": 20,
        "max_queue": 1000,
        "max_retries": 3,
        "retry_base_delay": 2.0,
        "retry_jitter": 0.0,
        "critical_reserve": 0,
        "aging_interval": 0.0,
        "timeouts": TIMEOUTS,
    }
    base.update(overrides)
    return Scheduler(SchedulerConfig(**base))  # type: ignore[arg-type]


@asynccontextmanager
async def running(scheduler: Scheduler, drain: float = 0.0) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        yield
        await scheduler.shutdown(drain)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_scheduler_runs_highest_priority_first_under_contention(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With every slot busy, waiting tasks start in priority order, not arrival."""
    scheduler = make(max_concurrent=1, workers=3)
    release = trio.Event()
    started: list[str] = []

    async def blocker(task: Task) -> str:
        await release.wait()
        return "released"

    async def record(task: Task) -> str:
        started.append(task.payload["name"])
        return "ok"

    scheduler.register("block", blocker)
    scheduler.register("record", record)

    async with running(scheduler):
        scheduler.submit(Task("block", Priority.BACKGROUND))
        await settle()
        arrival = [
            Priority.LOW,
            Priority.BACKGROUND,
            Priority.NORMAL,
            Priority.CRITICAL,
            Priority.HIGH,
            Priority.NORMAL,
        ]
        for index, priority in enumerate(arrival):
            name = f"{priority.label}-{index}"
            scheduler.submit(Task("record", priority, {"name": name}))
        await settle()
        assert started == []

        release.set()
        await settle()

    assert started == [
        "critical-3",
        "high-4",
        "normal-2",
        "normal-5",
        "low-0",
        "background-1",
    ]


@pytest.mark.parametrize(
    ("priority", "limit"),
    [
        (Priority.CRITICAL, 30.0),
        (Priority.HIGH, 60.0),
        (Priority.NORMAL, 120.0),
        (Priority.LOW, 300.0),
    ],
)
async def test_scheduler_times_out_each_priority_at_its_limit(
    autojump_clock: trio.abc.Clock, priority: Priority, limit: float
) -> None:
    """An attempt that overruns its priority's timeout is cut off at that limit."""
    scheduler = make(max_retries=0)
    ended: list[float] = []

    async def hang(task: Task) -> str:
        try:
            await trio.sleep_forever()
        finally:
            ended.append(trio.current_time())

    scheduler.register("hang", hang)
    async with running(scheduler):
        start = trio.current_time()
        task = scheduler.submit(Task("hang", priority))
        await trio.sleep(limit + 1)

    assert ended == [pytest.approx(start + limit)]
    assert task.state is TaskState.DEAD
    assert task.last_error == f"timed out after {limit:g} s"
    assert scheduler.stats.timed_out == 1


async def test_scheduler_background_has_no_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """BACKGROUND work may run for hours; no timeout cuts it off."""
    scheduler = make()

    async def slow(task: Task) -> str:
        await trio.sleep(10_000)
        return "finished"

    scheduler.register("slow", slow)
    async with running(scheduler):
        task = scheduler.submit(Task("slow", Priority.BACKGROUND))
        await trio.sleep(10_001)

    assert task.state is TaskState.DONE
    assert task.result == "finished"


async def test_scheduler_retries_at_2_4_8_seconds_then_dead_letter(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A failing task is retried after 2, 4 and 8 s, then becomes a dead letter."""
    scheduler = make(max_retries=3)
    attempts: list[float] = []

    async def fail(task: Task) -> str:
        attempts.append(trio.current_time())
        raise ConnectionError("broker unreachable")

    scheduler.register("fail", fail)
    async with running(scheduler):
        task = scheduler.submit(Task("fail", Priority.NORMAL))
        await trio.sleep(30)

    gaps = [round(b - a, 6) for a, b in itertools.pairwise(attempts)]
    assert gaps == [2.0, 4.0, 8.0]
    assert task.state is TaskState.DEAD
    assert task.attempts == 4
    assert task.last_error == "ConnectionError: broker unreachable"
    assert list(scheduler.dead_letters) == [task]
    assert scheduler.stats.retried == 3
    assert scheduler.stats.dead == 1


def test_scheduler_backoff_jitter_stays_within_bounds() -> None:
    """Jitter adds between 0 and retry_jitter seconds to the exponential delay."""
    scheduler = make(retry_jitter=0.5)
    for attempt, base in ((1, 2.0), (2, 4.0), (3, 8.0)):
        delays = [scheduler.backoff_delay(attempt) for _ in range(200)]
        assert all(base <= d <= base + 0.5 for d in delays)
        assert max(delays) - min(delays) > 0.1


async def test_scheduler_retry_wait_does_not_hold_a_slot(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While a task waits out its backoff, the only slot runs other work."""
    scheduler = make(max_concurrent=1, workers=1)
    log: list[tuple[str, float]] = []
    failed_once = False

    async def flaky(task: Task) -> str:
        nonlocal failed_once
        log.append(("flaky", trio.current_time()))
        if not failed_once:
            failed_once = True
            raise TimeoutError("slow broker")
        return "ok"

    async def quick(task: Task) -> str:
        log.append(("quick", trio.current_time()))
        return "ok"

    scheduler.register("flaky", flaky)
    scheduler.register("quick", quick)
    async with running(scheduler):
        t0 = trio.current_time()
        scheduler.submit(Task("flaky", Priority.CRITICAL))
        await settle()
        scheduler.submit(Task("quick", Priority.LOW))
        await trio.sleep(5)

    assert [(name, round(t - t0, 6)) for name, t in log] == [
        ("flaky", 0.0),
        ("quick", 0.0),
        ("flaky", 2.0),
    ]


async def test_scheduler_delayed_retry_does_not_block_ready_work(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A CRITICAL task in backoff does not stop a ready NORMAL task from starting."""
    scheduler = make(max_concurrent=1, workers=2)
    started: list[str] = []

    async def fail(task: Task) -> str:
        started.append("critical")
        raise RuntimeError("boom")

    async def normal(task: Task) -> str:
        started.append("normal")
        return "ok"

    scheduler.register("fail", fail)
    scheduler.register("normal", normal)
    async with running(scheduler):
        scheduler.submit(Task("fail", Priority.CRITICAL))
        await settle()
        scheduler.submit(Task("normal", Priority.NORMAL))
        await trio.sleep(0.5)
        assert started == ["critical", "normal"]


async def test_scheduler_never_exceeds_max_concurrent(
    autojump_clock: trio.abc.Clock,
) -> None:
    """However many workers and tasks, no more than max_concurrent run at once."""
    scheduler = make(max_concurrent=3, workers=5)
    now_running = 0
    peak = 0
    done = 0

    async def work(task: Task) -> str:
        nonlocal now_running, peak, done
        now_running += 1
        peak = max(peak, now_running)
        await trio.sleep(task.payload["seconds"])
        now_running -= 1
        done += 1
        return "ok"

    scheduler.register("work", work)
    async with running(scheduler):
        for index in range(40):
            seconds = 0.1 + (index * 7 % 5) / 10
            scheduler.submit(Task("work", Priority.NORMAL, {"seconds": seconds}))
        await trio.sleep(60)

    assert done == 40
    assert peak == 3


async def test_scheduler_refuses_when_queue_is_full(
    autojump_clock: trio.abc.Clock,
) -> None:
    """At max_queue waiting tasks, submit raises QueueFull; internal work still fits."""
    scheduler = make(max_queue=3)
    for _ in range(3):
        scheduler.submit(Task("x", Priority.NORMAL))

    with pytest.raises(QueueFull):
        scheduler.submit(Task("x", Priority.NORMAL))
    internal = scheduler.submit(Task("x", Priority.CRITICAL), internal=True)

    assert internal.state is TaskState.QUEUED
    assert scheduler.stats.rejected == 1
    assert scheduler.queue_size == 4


async def test_scheduler_permanent_error_is_dead_without_retry(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A PermanentTaskError ends the task as a dead letter on the first attempt."""
    scheduler = make()

    async def refuse(task: Task) -> str:
        raise PermanentTaskError("OutsideTradingHours")

    scheduler.register("refuse", refuse)
    async with running(scheduler):
        task = scheduler.submit(Task("refuse", Priority.NORMAL))
        await trio.sleep(20)

    assert task.state is TaskState.DEAD
    assert task.attempts == 1
    assert task.last_error == "OutsideTradingHours"
    assert scheduler.stats.retried == 0


async def test_scheduler_unknown_kind_is_dead_letter(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A task whose kind has no handler is given up on with that reason."""
    scheduler = make()
    async with running(scheduler):
        task = scheduler.submit(Task("nonexistent", Priority.HIGH))
        await settle()

    assert task.state is TaskState.DEAD
    assert task.last_error == "no handler for task kind 'nonexistent'"


async def test_scheduler_drain_lets_running_finish_and_cancels_the_rest(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Shutdown waits for running tasks up to the deadline, then cancels."""
    scheduler = make(max_concurrent=2, workers=2)

    async def sleep_for(task: Task) -> str:
        await trio.sleep(task.payload["seconds"])
        return "slept"

    scheduler.register("sleep", sleep_for)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        short = scheduler.submit(Task("sleep", Priority.NORMAL, {"seconds": 5}))
        long = scheduler.submit(Task("sleep", Priority.NORMAL, {"seconds": 500}))
        waiting = scheduler.submit(Task("sleep", Priority.LOW, {"seconds": 1}))
        await settle()
        t0 = trio.current_time()
        await scheduler.shutdown(10)

        with pytest.raises(SchedulerClosed):
            scheduler.submit(Task("sleep", Priority.NORMAL, {"seconds": 1}))
        await scheduler.wait_stopped()
        stopped_after = trio.current_time() - t0

    assert short.state is TaskState.DONE
    assert long.state is TaskState.CANCELLED
    assert waiting.state is TaskState.CANCELLED
    assert stopped_after == pytest.approx(10)
    assert scheduler.stats.cancelled == 2
    assert scheduler.stats.completed == 1


async def test_scheduler_snapshot_has_the_documented_fields(
    autojump_clock: trio.abc.Clock,
) -> None:
    """snapshot() carries every field /metrics?format=json promises, with values."""
    scheduler = make(workers=4, max_concurrent=7)

    async def ok(task: Task) -> str:
        return "ok"

    scheduler.register("ok", ok)
    async with running(scheduler):
        scheduler.submit(Task("ok", Priority.NORMAL))
        await settle()
        snap = scheduler.snapshot()

    expected = {
        "queue_size": 0,
        "active_tasks": 0,
        "max_concurrent": 7,
        "workers": 4,
        "tasks_submitted": 1,
        "tasks_completed": 1,
        "tasks_failed": 0,
        "tasks_timeout": 0,
        "tasks_cancelled": 0,
        "success_rate": 1.0,
    }
    assert {key: snap[key] for key in expected} == expected
    assert snap["by_priority"]["normal"]["queued"] == 0


async def test_scheduler_critical_reserve_starts_critical_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With lower-priority work filling every other slot, CRITICAL starts at once."""
    scheduler = make(max_concurrent=4, workers=2, critical_reserve=1)
    release = trio.Event()
    started: dict[str, float] = {}

    async def hold(task: Task) -> str:
        started[task.payload["name"]] = trio.current_time()
        await release.wait()
        return "ok"

    scheduler.register("hold", hold)
    async with running(scheduler):
        for index in range(10):
            scheduler.submit(Task("hold", Priority.LOW, {"name": f"low-{index}"}))
        await trio.sleep(1)
        low_running = scheduler.active
        t0 = trio.current_time()
        scheduler.submit(Task("hold", Priority.CRITICAL, {"name": "critical"}))
        await trio.sleep(1)
        release.set()

    assert low_running == 3
    assert started["critical"] == t0


async def test_scheduler_aging_keeps_low_from_starving(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Under a steady NORMAL stream, a LOW task still starts after aging lifts it."""
    scheduler = make(max_concurrent=1, workers=1, aging_interval=30.0)
    started: dict[str, float] = {}

    async def work(task: Task) -> str:
        started.setdefault(task.payload["name"], trio.current_time())
        await trio.sleep(1)
        return "ok"

    scheduler.register("work", work)
    async with running(scheduler):
        scheduler.submit(Task("work", Priority.LOW, {"name": "low"}))
        scheduler.submit(Task("work", Priority.NORMAL, {"name": "normal-0"}))
        # Keep a NORMAL task always waiting for 120 s.
        for index in range(1, 121):
            scheduler.submit(Task("work", Priority.NORMAL, {"name": f"normal-{index}"}))
            await trio.sleep(1)

    # After one 30 s interval it ranks as NORMAL, and its earlier arrival puts
    # it ahead of every NORMAL task that came after it.
    assert 30 <= started["low"] <= 31


async def test_scheduler_without_aging_low_waits_for_normal(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With aging off, LOW waits until no NORMAL task is ready (plain priority)."""
    scheduler = make(max_concurrent=1, workers=1, aging_interval=0.0)
    order: list[str] = []

    async def work(task: Task) -> str:
        order.append(task.payload["name"])
        await trio.sleep(1)
        return "ok"

    scheduler.register("work", work)
    async with running(scheduler):
        scheduler.submit(Task("work", Priority.LOW, {"name": "low"}))
        for index in range(5):
            scheduler.submit(Task("work", Priority.NORMAL, {"name": f"n{index}"}))
        await trio.sleep(10)

    assert order[-1] == "low"


async def test_scheduler_lane_runs_one_at_a_time_in_arrival_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    """One lane runs one task at a time in arrival order; lanes run in parallel."""
    scheduler = make(max_concurrent=10, workers=3)
    spans: dict[str, tuple[float, float]] = {}

    async def work(task: Task) -> str:
        start = trio.current_time()
        await trio.sleep(task.payload["seconds"])
        spans[task.payload["name"]] = (start, trio.current_time())
        return "ok"

    scheduler.register("work", work)
    async with running(scheduler):
        plan = [("a1", "MNQ", 3, Priority.LOW), ("a2", "MNQ", 1, Priority.CRITICAL)]
        plan += [("b1", "MES", 1, Priority.NORMAL), ("a3", "MNQ", 1, Priority.HIGH)]
        for name, lane, seconds, priority in plan:
            task = Task("work", priority, {"name": name, "seconds": seconds})
            task.lane = lane
            scheduler.submit(task, internal=True)
        await trio.sleep(10)

    assert spans["a1"] == (0.0, 3.0)
    assert spans["a2"] == (3.0, 4.0)
    assert spans["a3"] == (4.0, 5.0)
    assert spans["b1"] == (0.0, 1.0)


async def test_scheduler_lane_waits_through_retries(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A lane stays closed while its task waits out a retry backoff."""
    scheduler = make(max_retries=1)
    starts: list[tuple[str, float]] = []
    failed = False

    async def work(task: Task) -> str:
        nonlocal failed
        starts.append((task.payload["name"], trio.current_time()))
        if task.payload["name"] == "first" and not failed:
            failed = True
            raise ConnectionError("lost answer")
        return "ok"

    scheduler.register("work", work)
    async with running(scheduler):
        for name in ("first", "second"):
            task = Task("work", Priority.NORMAL, {"name": name})
            task.lane = "1001:MNQ"
            scheduler.submit(task, internal=True)
        await trio.sleep(5)

    assert starts == [("first", 0.0), ("first", 2.0), ("second", 2.0)]
