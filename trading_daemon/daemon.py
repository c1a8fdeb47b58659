"""The daemon: its parts, and the one nursery that supervises them.

``serve`` opens a single nursery holding the HTTP server, the scheduler and its
workers, the periodic jobs and the signal listener. A crash in any of them
cancels the rest and propagates, so the process exits non-zero and systemd
restarts it. SIGTERM or SIGINT starts the graceful path:

1. /health turns 503 and the periodic jobs stop submitting;
2. hypercorn stops accepting and lets in-flight requests finish (its
   ``graceful_timeout``), through its shutdown trigger, never by cancelling it
   (hypercorn#106: a cancelled serve() leaves clients hanging);
3. the scheduler takes no new tasks and lets running ones finish until the
   drain deadline, counted from the signal; what is left is cancelled here
   but stays unfinished in the journal, so the next start runs it;
4. the journal writes its last batch and closes.

Before the HTTP server accepts anything, every task the journal holds as
unfinished is put back into the scheduler (recovery).
"""

from __future__ import annotations

import gc
import signal
import sqlite3
import time
from typing import Any

import trio
from loguru import logger

from . import __version__
from .accounts import Accounts, account_specs, make_brokers
from .alerts import Mode
from .auth import WebhookAuth
from .broker import Broker, BrokerSetupError
from .config import Settings
from .dedup import Deduplicator
from .execution import EXECUTE_SIGNAL, FLATTEN_ALL, Executor
from .intent import IntentSettings
from .jobs import (
    CLEANUP,
    FILL_CHECK,
    METRICS_SNAPSHOT,
    RISK_UPDATE,
    JobHandlers,
    PeriodicJob,
    run_periodic,
)
from .journal import HALTED, UNFINISHED, Journal, RecoveryReport
from .metrics import Metrics
from .notify import Notifier
from .priority import Priority
from .risk import RiskGuard, RiskLimits, parse_hours
from .scheduler import Scheduler, SchedulerConfig
from .tasks import Handler, Task, TaskState
from .webhook import Intake

# Longest pause between attempts to start a broker that is unreachable.
BROKER_START_MAX_DELAY_S = 60.0
# How long /status waits for a broker's positions before showing the last ones.
STATUS_BROKER_WAIT_S = 1.0


class Daemon:
    """Owns every part of a running daemon and the figures /status shows."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | None = None,
        brokers: dict[str, Broker] | None = None,
        risk: RiskGuard | None = None,
    ) -> None:
        """Open the journal and build every part; raises JournalError on bad state.

        ``broker`` stands in for the default account's broker, ``brokers`` for
        every account's, by name (tests); ``risk`` for the guards.
        """
        self.settings = settings
        self.metrics = Metrics()
        self.journal = Journal(settings.state_dir)
        self.journal.commit_observer = self.metrics.journal_commit.observe
        specs = account_specs(settings)
        if brokers is None:
            brokers = (
                {specs[0].name: broker}
                if broker is not None
                else make_brokers(settings, self.journal)
            )
        self.accounts = Accounts(brokers, specs)
        # One dict shared with the executor and the jobs.
        self.brokers = self.accounts.brokers
        # The default account's broker.
        self.broker = self.accounts.broker(None)
        self.risk = risk or RiskGuard(
            RiskLimits(
                max_order_size=settings.max_order_size,
                max_position=settings.max_position,
                max_daily_loss=settings.max_daily_loss,
                hours=parse_hours(settings.trading_hours),
            )
        )
        # The kill switch holds across restarts until POST /resume.
        self.risk.halted = self.journal.flag(HALTED) == "true"
        self.scheduler = Scheduler(
            SchedulerConfig(
                workers=settings.workers,
                max_concurrent=settings.max_concurrent,
                max_queue=settings.max_queue,
                max_retries=settings.max_retries,
                retry_base_delay=settings.retry_base_delay,
                retry_max_delay=settings.retry_max_delay,
                retry_jitter=settings.retry_jitter,
                critical_reserve=settings.critical_reserve,
                aging_interval=settings.aging_interval,
                timeouts={p: settings.timeout_for(p) for p in Priority},
            ),
            observer=self.metrics,
            on_change=self.journal.task_changed,
        )
        self.metrics.watch(
            self.scheduler,
            lambda: self.journal.dead_count,
            self.broker.name,
            getattr(self.broker, "errors", {}),
        )
        self.executor = Executor(
            self.accounts,
            self.journal,
            self.risk,
            IntentSettings(
                default_mode=Mode(settings.default_mode),
                pyramiding=settings.pyramiding,
                max_pyramid=settings.max_pyramid,
            ),
            metrics=self.metrics,
        )
        self.scheduler.register(EXECUTE_SIGNAL, self.executor.execute_signal)
        self.scheduler.register(FLATTEN_ALL, self.executor.flatten_all)
        retention_s = settings.retention_days * 86400
        self.dedup = Deduplicator(
            window_s=settings.dedup_window, retention_s=retention_s
        )
        self.jobs = JobHandlers(
            self.brokers,
            self.scheduler,
            self.journal,
            self.dedup,
            retention_s,
            metrics=self.metrics,
            cancelled_by_daemon=self.executor.cancelled,
        )
        self.jobs.register()
        # Nothing that trades or reads the account runs before every broker
        # has started (logged in, read its positions): the broker is the truth.
        self.brokers_ready = trio.Event()
        self._last_positions: dict[str, list[dict[str, Any]]] = {}
        for kind in (EXECUTE_SIGNAL, FLATTEN_ALL, FILL_CHECK, RISK_UPDATE):
            self.scheduler.register(
                kind, self._after_start(self.scheduler.handler(kind))
            )
        self.intake = Intake(
            self.scheduler,
            self.journal,
            self.dedup,
            max_body_bytes=settings.max_body_bytes,
            auth=WebhookAuth.from_settings(settings),
            accounts=self.accounts,
        )
        self.recovery = RecoveryReport()
        self.notifier = Notifier()

        self.started_wall = time.time()
        self.started_at = 0.0
        self.stopping = False
        self._stop_requested = trio.Event()

    @property
    def periodic_jobs(self) -> list[PeriodicJob]:
        s = self.settings
        return [
            PeriodicJob(FILL_CHECK, Priority.CRITICAL, s.fill_check_interval),
            PeriodicJob(RISK_UPDATE, Priority.HIGH, s.risk_update_interval),
            PeriodicJob(METRICS_SNAPSHOT, Priority.LOW, s.metrics_interval),
            PeriodicJob(CLEANUP, Priority.BACKGROUND, s.cleanup_interval),
        ]

    def request_stop(self, reason: str) -> None:
        if not self._stop_requested.is_set():
            logger.bind(reason=reason).info("daemon.stop_requested")
            self.stopping = True
            self.notifier.stopping()
            self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        q = self.scheduler.snapshot()
        return ("stopping: " if self.stopping else "") + (
            f"{q['queue_size']} queued, {q['active_tasks']} running, "
            f"{q['tasks_completed']} completed, {q['tasks_dead']} dead"
        )

    def uptime(self) -> float:
        return time.time() - self.started_wall

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping else "healthy",
            "uptime_s": round(self.uptime(), 3),
            "version": __version__,
        }

    async def _positions(self) -> tuple[list[dict[str, Any]], bool]:
        """Every account's open positions, and whether some are last-known only.

        /status must answer while the gateway is slow or its rate limit is
        spent by a burst of alerts: each broker gets a short wait, then its
        last answer stands in.
        """
        stale = False
        rows: list[dict[str, Any]] = []
        for name, broker in self.brokers.items():
            fresh = False
            if self.brokers_ready.is_set():
                with trio.move_on_after(STATUS_BROKER_WAIT_S):
                    try:
                        positions = await broker.positions()
                    except Exception as exc:
                        logger.warning("status.positions_failed", error=str(exc))
                    else:
                        self._last_positions[name] = [
                            {"account": name, **p.as_dict()}
                            for p in positions
                            if p.size or p.realized_pnl
                        ]
                        fresh = True
            stale = stale or not fresh
            rows += self._last_positions.get(name, [])
        return rows, stale

    async def status(self, *, recent: int = 20) -> dict[str, Any]:
        positions, stale = await self._positions()
        oldest = await self.journal.oldest_unfinished()
        return {
            **self.health(),
            "positions_stale": stale,
            "broker": self.broker.name,
            "halted": self.risk.halted,
            "task_queue_stats": self.scheduler.snapshot(),
            "positions": positions,
            "account": self.jobs.account,
            "accounts": {
                name: {
                    "multiplier": self.accounts.multipliers[name],
                    **self.jobs.accounts.get(name, {}),
                }
                for name in self.accounts.names
            },
            "risk_refusals": [r.as_dict() for r in reversed(self.risk.refusals)],
            "journal": {
                "path": str(self.journal.path),
                "size_bytes": self.journal.size_bytes(),
                "oldest_unfinished_age_s": (
                    None if oldest is None else round(time.time() - oldest, 3)
                ),
                "commits": self.journal.commits,
                "dedup_keys": len(self.dedup),
                "recovered_at_start": {
                    "queued": self.recovery.queued,
                    "running": self.recovery.running,
                    "retry_wait": self.recovery.retry_wait,
                },
            },
            "recent_tasks": [
                t.summary() for t in list(self.scheduler.recent)[-recent:]
            ],
            "dead_letters": await self.journal.dead_letters(limit=50),
        }

    def recover(self) -> RecoveryReport:
        """Put every unfinished journaled task back into the scheduler."""
        self.dedup.load(self.journal.dedup_keys())
        counts = dict.fromkeys(UNFINISHED, 0)
        now = time.time()
        for task, not_before_wall in self.journal.unfinished():
            counts[task.state] += 1
            self.scheduler.restore(task, delay=not_before_wall - now)
        report = RecoveryReport(
            queued=counts[TaskState.QUEUED],
            running=counts[TaskState.RUNNING],
            retry_wait=counts[TaskState.RETRY_WAIT],
        )
        logger.bind(
            queued=report.queued, running=report.running, retry_wait=report.retry_wait
        ).info("journal.recovered")
        return report

    async def replay(self, task_id: str) -> Task:
        """Queue a dead letter again as a new series of attempts.

        It keeps its id, so its order keeps its client id: if the dead task
        did place an order after all, the replay finds it instead of trading.
        """
        task = await self.journal.load_task(task_id)
        if task is None:
            raise LookupError(f"no task with id {task_id!r}")
        if task.state is not TaskState.DEAD:
            raise ValueError(
                f"task {task_id!r} is {task.state.value}, not a dead letter"
            )
        task.attempts = 0
        task.last_error = None
        task.finished_wall = None
        task.state = TaskState.QUEUED
        self.scheduler.reserve()
        try:
            await self.journal.write(lambda conn: _requeue(conn, task_id))
        except BaseException:
            self.scheduler.release()
            raise
        self.journal.dead_count -= 1
        self.scheduler.submit(task, reserved=True)
        logger.bind(task_id=task_id).info("task.replayed")
        return task

    async def halt(self) -> Task:
        """The kill switch: refuse entries from now on, then flatten everything.

        The flag is set before this returns, so an entry queued behind it is
        refused when it runs; the flatten is CRITICAL and has no lane, so it
        does not wait behind alerts, and internal, so a full queue cannot keep
        it out. Flag and task are journaled together: both survive a restart.
        """
        self.risk.halted = True
        task = Task(kind=FLATTEN_ALL, priority=Priority.CRITICAL, durable=True)
        await self.journal.record_tasks([task], flags={HALTED: "true"})
        self.scheduler.submit(task, internal=True)
        logger.bind(task_id=task.id).warning("risk.halted")
        return task

    async def resume(self) -> None:
        """Lift the kill switch: entries may go out again."""
        await self.journal.set_flag(HALTED, "false")
        self.risk.halted = False
        logger.info("risk.resumed")

    async def run(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until a signal or ``request_stop``; report the bound port on start."""
        self.started_at = trio.current_time()
        try:
            await self._supervise(task_status)
        finally:
            await self._close_brokers()
            self.notifier.close()
        s = self.scheduler.stats
        logger.bind(completed=s.completed, cancelled=s.cancelled, dead=s.dead).info(
            "daemon.stopped"
        )

    async def _supervise(self, task_status: trio.TaskStatus[int]) -> None:
        # Imported here: the HTTP layer pulls in quart, which the rest does not need.
        from .server import serve_http

        async with trio.open_nursery() as nursery:
            journal_done = trio.Event()
            nursery.start_soon(self._run_journal, journal_done)
            self.recovery = self.recover()
            await nursery.start(self.scheduler.run)
            # In the background: a gateway that is down at boot must not keep
            # the port closed (alerts are journaled meanwhile) nor make systemd
            # give up after a burst of failed starts.
            nursery.start_soon(self.start_brokers)
            http_done = trio.Event()
            port: int = await nursery.start(serve_http, self, http_done)
            jobs_scope = trio.CancelScope()
            nursery.start_soon(self._run_jobs, jobs_scope)
            nursery.start_soon(self._listen_for_signals)
            logger.bind(
                host=self.settings.webhook_host,
                port=port,
                broker=self.broker.name,
                workers=self.settings.workers,
                max_concurrent=self.settings.max_concurrent,
            ).info("daemon.ready")
            self.notifier.ready()
            nursery.start_soon(self.notifier.run, self.status_line)
            # Everything built so far lives as long as the process: keep it out
            # of the collector's scans, so a full collection under load pauses
            # for the objects of in-flight work only.
            gc.collect()
            gc.freeze()
            task_status.started(port)

            await self._stop_requested.wait()
            deadline = trio.current_time() + self.settings.drain_timeout
            jobs_scope.cancel()
            await http_done.wait()
            await self.scheduler.shutdown(max(0.0, deadline - trio.current_time()))
            await self.scheduler.wait_stopped()
            self.journal.close()
            await journal_done.wait()
            # Drained and flushed: only the signal listener is left.
            nursery.cancel_scope.cancel()

    async def _close_brokers(self) -> None:
        with trio.CancelScope(shield=True):
            for broker in self.brokers.values():
                await broker.aclose()

    def _after_start(self, handler: Handler) -> Handler:
        async def wait_then_run(task: Task) -> str | None:
            await self.brokers_ready.wait()
            return await handler(task)

        return wait_then_run

    async def start_brokers(self) -> None:
        """Start every broker, retrying transient failures until they pass.

        A refused login or an unusable account (BrokerSetupError) ends the
        daemon: no retry can fix it. Anything else (gateway down, timeouts,
        5xx) is retried with a backoff growing to a minute.
        """
        for name, broker in self.brokers.items():
            attempt = 0
            while True:
                try:
                    await broker.start()
                    break
                except BrokerSetupError:
                    raise
                except Exception as exc:
                    attempt += 1
                    delay = min(BROKER_START_MAX_DELAY_S, 2.0**attempt)
                    reason = f"{type(exc).__name__}: {exc}"
                    logger.error(
                        "broker.start_failed",
                        account=name,
                        attempt=attempt,
                        retry_in_s=delay,
                        error=reason,
                    )
                    self.notifier.status(f"waiting for broker ({name}): {reason}")
                    await trio.sleep(delay)
        self.brokers_ready.set()
        logger.info("broker.ready", accounts=",".join(self.brokers))

    async def _run_journal(self, done: trio.Event) -> None:
        try:
            await self.journal.run()
        finally:
            done.set()

    async def _run_jobs(self, scope: trio.CancelScope) -> None:
        with scope:
            await run_periodic(self.scheduler, self.periodic_jobs)

    async def _listen_for_signals(self) -> None:
        # Python's default SIGTERM action kills without running finally blocks.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.request_stop(signal.Signals(signum).name)


def _requeue(conn: sqlite3.Connection, task_id: str) -> None:
    conn.execute(
        "UPDATE tasks SET state = ?, attempts = 0, last_error = NULL,"
        " finished = NULL, updated = ? WHERE id = ?",
        (TaskState.QUEUED.value, time.time(), task_id),
    )
