"""Prometheus metrics: one registry per daemon, exposed on GET /metrics.

Counters the scheduler already keeps are read at scrape time by a collector,
so there is one source of truth for them; only timings, which need
observations, are recorded as they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .priority import Priority

if TYPE_CHECKING:
    from .scheduler import Scheduler

PREFIX = "trading_daemon"

# Task timings: sub-millisecond starts up to the 300 s LOW timeout.
TASK_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Acknowledgements: TradingView gives up at 3 s; the goal is milliseconds.
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 3.0)
# Journal commits: a healthy disk syncs in well under a millisecond; a stall of
# tens of milliseconds holds every acknowledgement waiting on that commit.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The daemon's metrics and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* (memory, CPU, open files), as the default registry has them.
        ProcessCollector(registry=self.registry)
        self.task_wait = Histogram(
            f"{PREFIX}_task_wait_seconds",
            "Time from a task being due to its start.",
            ["priority"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.task_run = Histogram(
            f"{PREFIX}_task_run_seconds",
            "Run time of one task attempt.",
            ["priority"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.tasks_finished = Counter(
            f"{PREFIX}_tasks_finished",
            "Task attempts by how they ended.",
            ["priority", "outcome"],
            registry=self.registry,
        )
        self.webhook_ack = Histogram(
            f"{PREFIX}_webhook_ack_seconds",
            "Time to answer POST /webhook, by status code class.",
            ["status"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.journal_commit = Histogram(
            f"{PREFIX}_journal_commit_seconds",
            "Time to write and sync one journal batch; every acknowledgement"
            " waits for one.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.alerts = Counter(
            f"{PREFIX}_alerts",
            "Alerts received, by result.",
            ["result"],
            registry=self.registry,
        )
        self.orders = Counter(
            f"{PREFIX}_orders",
            "Orders sent to the broker, by side and status.",
            ["broker", "side", "status"],
            registry=self.registry,
        )
        self.fills = Counter(
            f"{PREFIX}_fills",
            "Contracts filled, by symbol.",
            ["broker", "symbol"],
            registry=self.registry,
        )

    def watch(
        self,
        scheduler: Scheduler,
        dead_letters: Callable[[], int],
        broker: str,
        broker_errors: Mapping[str, int],
    ) -> None:
        """Expose the scheduler's and broker's counts at scrape time."""
        self.registry.register(_SchedulerCollector(scheduler, dead_letters))
        self.registry.register(_BrokerErrorCollector(broker, broker_errors))

    # SchedulerObserver
    def task_waited(self, priority: Priority, seconds: float) -> None:
        self.task_wait.labels(priority.label).observe(seconds)

    def task_ran(self, priority: Priority, seconds: float, outcome: str) -> None:
        self.task_run.labels(priority.label).observe(seconds)
        self.tasks_finished.labels(priority.label, outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler, dead_letters: Callable[[], int]) -> None:
        self._scheduler = scheduler
        self._dead_letters = dead_letters

    def collect(self) -> Iterator[Metric]:
        s = self._scheduler
        stats = s.stats

        submitted = CounterMetricFamily(
            f"{PREFIX}_tasks_submitted", "Tasks accepted by the scheduler."
        )
        submitted.add_metric([], stats.submitted)
        yield submitted

        retried = CounterMetricFamily(
            f"{PREFIX}_tasks_retried", "Retries scheduled after a failed attempt."
        )
        retried.add_metric([], stats.retried)
        yield retried

        rejected = CounterMetricFamily(
            f"{PREFIX}_tasks_rejected",
            "Submissions refused because the queue was full.",
        )
        rejected.add_metric([], stats.rejected)
        yield rejected

        queued = GaugeMetricFamily(
            f"{PREFIX}_queue_length",
            "Tasks waiting to start, by priority.",
            labels=["priority"],
        )
        for priority, count in s.queued_by_priority().items():
            queued.add_metric([priority.label], count)
        yield queued

        yield GaugeMetricFamily(
            f"{PREFIX}_active_tasks", "Tasks running now.", value=s.active
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_max_concurrent",
            "Most tasks allowed to run at once.",
            value=s.config.max_concurrent,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_max_queue",
            "Most alert tasks allowed to wait; beyond it the webhook answers 503.",
            value=s.config.max_queue,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_dead_letters",
            "Tasks given up on and kept in the journal for inspection or replay.",
            value=self._dead_letters(),
        )


class _BrokerErrorCollector(Collector):
    def __init__(self, broker: str, errors: Mapping[str, int]) -> None:
        self._broker = broker
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_broker_errors",
            "Failed broker calls, by kind (gateway error code, HTTP status, timeout).",
            labels=["broker", "code"],
        )
        for code, count in sorted(self._errors.items()):
            family.add_metric([self._broker, code], count)
        yield family
