"""The journal: a SQLite database (WAL) that keeps every acknowledged alert.

A webhook answers 202 only after its alert and task are committed with
``synchronous=FULL``, which syncs the write-ahead log to disk on every commit.
One writer task takes whatever operations are waiting, runs them in a single
transaction on a worker thread and wakes every waiter at once (group commit):
16 concurrent acknowledgements share one disk sync instead of paying for 16.

Task state changes after the acknowledgement are written the same way but not
awaited: a task whose "done" is lost in a crash runs again on restart, and the
order's client id (fixed by the task) makes that rerun find the first order
instead of placing another. Shutdown cancellations are not written at all, so
what a stop left behind is still queued or running here and is recovered.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from .priority import Priority
from .tasks import Task, TaskState

FILENAME = "journal.sqlite3"
UNFINISHED = (TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRY_WAIT)
FINISHED = (TaskState.DONE, TaskState.DEAD)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    lane TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, created);
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS opened (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS paper_orders (
    client_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    account TEXT NOT NULL DEFAULT 'paper'
);
CREATE TABLE IF NOT EXISTS paper_books (
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    size INTEGER NOT NULL,
    average_price REAL NOT NULL,
    realized_pnl REAL NOT NULL,
    PRIMARY KEY (account, symbol)
);
CREATE TABLE IF NOT EXISTS intents (
    task_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flags (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
"""
# The kill switch (POST /halt) outlives a restart: it is a flag in the journal.
HALTED = "halted"

Op = Callable[[sqlite3.Connection], Any]


class JournalError(Exception):
    """The journal cannot be opened or written; the message says where and why."""


@dataclass
class _Pending:
    op: Op
    done: trio.Event | None
    error: BaseException | None = None
    result: Any = None


@dataclass(frozen=True)
class RecoveryReport:
    queued: int = 0
    running: int = 0
    retry_wait: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.running + self.retry_wait


class Journal:
    """Durable store of tasks, deduplication keys and the paper account."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME
        self._conn = _open(state_dir, self.path)
        self._send, self._receive = trio.open_memory_channel[_Pending](math.inf)
        # One thread at a time touches the connection; sqlite3 objects are not
        # safe for concurrent use.
        self._limiter = trio.CapacityLimiter(1)
        self.commits = 0
        self.ops_written = 0
        # Called on the writer thread with each batch's seconds (the metrics
        # histogram; it is thread-safe).
        self.commit_observer: Callable[[float], None] | None = None
        # Kept as a number so a metrics scrape never touches the database.
        self.dead_count: int = self._conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE state = ?", (TaskState.DEAD.value,)
        ).fetchone()[0]

    # -- running -----------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write batches until ``close`` is called and everything is flushed."""
        task_status.started()
        async with self._receive:
            while True:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    break
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                # Shielded: a batch already handed to the thread must be waited
                # for, or its waiters would never learn whether it committed.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        self._apply, batch, limiter=self._limiter
                    )
                for pending in batch:
                    if pending.done is not None:
                        pending.done.set()
        await trio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    def close(self) -> None:
        """Stop taking writes; ``run`` returns once the last batch is on disk."""
        self._send.close()

    def _apply(self, batch: list[_Pending]) -> None:
        conn = self._conn
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, pending in enumerate(batch):
                savepoint = f"op{index}"
                conn.execute(f"SAVEPOINT {savepoint}")
                try:
                    pending.result = pending.op(conn)
                except sqlite3.Error as exc:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    pending.error = exc
                conn.execute(f"RELEASE {savepoint}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The whole batch is lost: every waiter hears about it.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.error = pending.error or exc
            logger.bind(error=str(exc), ops=len(batch)).error("journal.commit_failed")
            return
        self.commits += 1
        self.ops_written += len(batch)
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - started)

    async def write(self, op: Op) -> Any:
        """Run ``op`` in the next batch and wait until it is durably committed."""
        pending = _Pending(op, trio.Event())
        self._send.send_nowait(pending)
        assert pending.done is not None
        await pending.done.wait()
        if pending.error is not None:
            raise JournalError(f"journal write failed: {pending.error}")
        return pending.result

    def write_later(self, op: Op) -> None:
        """Queue ``op`` for the next batch without waiting for it."""
        try:
            self._send.send_nowait(_Pending(op, None))
        except trio.ClosedResourceError:
            logger.warning("journal.write_after_close")

    async def read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        return await trio.to_thread.run_sync(query, self._conn, limiter=self._limiter)

    # -- tasks -------------------------------------------------------------

    async def record_task(
        self, task: Task, *, dedup_key: str | None = None, dedup_ttl: float = 0.0
    ) -> None:
        """Durably record a new task (and its dedup key) before it is acknowledged."""
        await self.record_tasks([task], dedup_key=dedup_key, dedup_ttl=dedup_ttl)

    async def record_tasks(
        self,
        tasks: list[Task],
        *,
        dedup_key: str | None = None,
        dedup_ttl: float = 0.0,
        flags: dict[str, str] | None = None,
    ) -> None:
        """Record new tasks, their dedup key and flags in one commit: all or none.

        One alert fanned out to several accounts is one write, so a crash can
        never leave some of its accounts' tasks behind without the others.
        """
        rows = [_task_row(task) for task in tasks]
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_TASK, rows)
            if dedup_key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO dedup (key, task_id, expires)"
                    " VALUES (?, ?, ?)",
                    (dedup_key, tasks[0].id, now + dedup_ttl),
                )
            for name, value in (flags or {}).items():
                conn.execute(_SET_FLAG, (name, value, now))

        await self.write(op)

    async def record_intent(self, task_id: str, intent: dict[str, Any]) -> None:
        """Durably record what a task decided, before it sends any order."""
        body = json.dumps(intent)
        await self.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO intents (task_id, body, created)"
                " VALUES (?, ?, ?)",
                (task_id, body, time.time()),
            )
        )

    async def set_flag(self, name: str, value: str) -> None:
        await self.write(
            lambda conn: conn.execute(_SET_FLAG, (name, value, time.time()))
        )

    def flag(self, name: str) -> str | None:
        row = self._conn.execute(
            "SELECT value FROM flags WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else str(row[0])

    def task_changed(self, task: Task) -> None:
        """Scheduler hook: persist a state change (shutdown cancellations excepted)."""
        if task.state is TaskState.CANCELLED:
            return
        if task.state is TaskState.DEAD:
            self.dead_count += 1
        row = (
            task.state.value,
            task.attempts,
            _not_before_wall(task),
            task.last_error,
            task.result,
            time.time(),
            task.finished_wall,
            task.id,
        )
        self.write_later(lambda conn: conn.execute(_UPDATE_STATE, row))

    def unfinished(self) -> list[tuple[Task, float]]:
        """Tasks a previous run left unfinished, with their wall-clock not-before."""
        placeholders = ",".join("?" for _ in UNFINISHED)
        rows = self._conn.execute(
            f"{_SELECT_TASKS} WHERE state IN ({placeholders}) ORDER BY created",
            [s.value for s in UNFINISHED],
        ).fetchall()
        return [(_task_from_row(row), float(row["not_before"])) for row in rows]

    def dedup_keys(self) -> dict[str, tuple[str, float]]:
        rows = self._conn.execute(
            "SELECT key, task_id, expires FROM dedup WHERE expires > ?", (time.time(),)
        ).fetchall()
        return {key: (task_id, expires) for key, task_id, expires in rows}

    async def dead_letters(self, limit: int = 500) -> list[dict[str, Any]]:
        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"{_SELECT_TASKS} WHERE state = ? ORDER BY finished DESC LIMIT ?",
                (TaskState.DEAD.value, limit),
            ).fetchall()
            return [_task_from_row(row).summary() for row in rows]

        result: list[dict[str, Any]] = await self.read(query)
        return result

    async def load_task(self, task_id: str) -> Task | None:
        def query(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(f"{_SELECT_TASKS} WHERE id = ?", (task_id,)).fetchone()
            return _task_from_row(row) if row else None

        task: Task | None = await self.read(query)
        return task

    async def prune(self, older_than_s: float) -> int:
        """Delete finished tasks and expired dedup keys; never unfinished work."""
        cutoff = time.time() - older_than_s

        def op(conn: sqlite3.Connection) -> int:
            placeholders = ",".join("?" for _ in FINISHED)
            dead = conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE state = ?"
                " AND COALESCE(finished, updated) < ?",
                (TaskState.DEAD.value, cutoff),
            ).fetchone()[0]
            self.dead_count -= dead
            deleted = conn.execute(
                f"DELETE FROM tasks WHERE state IN ({placeholders})"
                " AND COALESCE(finished, updated) < ?",
                [*(s.value for s in FINISHED), cutoff],
            ).rowcount
            # A key outlives its expiry while its task is unfinished: a resend
            # then must still find the first task, not start a second one.
            unfinished = ",".join("?" for _ in UNFINISHED)
            conn.execute(
                "DELETE FROM dedup WHERE expires < ? AND task_id NOT IN"
                f" (SELECT id FROM tasks WHERE state IN ({unfinished}))",
                [time.time(), *(s.value for s in UNFINISHED)],
            )
            conn.execute(
                "DELETE FROM intents WHERE task_id NOT IN (SELECT id FROM tasks)"
            )
            return int(deleted)

        pruned: int = await self.write(op)
        return pruned

    # -- figures -----------------------------------------------------------

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    async def oldest_unfinished(self) -> float | None:
        def query(conn: sqlite3.Connection) -> float | None:
            placeholders = ",".join("?" for _ in UNFINISHED)
            row = conn.execute(
                f"SELECT MIN(created) FROM tasks WHERE state IN ({placeholders})",
                [s.value for s in UNFINISHED],
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        oldest: float | None = await self.read(query)
        return oldest

    # -- paper account -----------------------------------------------------

    def paper_state(
        self, account: str
    ) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        """One paper account's orders (oldest first) and books."""
        orders = [
            json.loads(body)
            for (body,) in self._conn.execute(
                "SELECT body FROM paper_orders WHERE account = ?"
                " ORDER BY created, rowid",
                (account,),
            )
        ]
        books = self._conn.execute(
            "SELECT symbol, size, average_price, realized_pnl FROM paper_books"
            " WHERE account = ?",
            (account,),
        ).fetchall()
        return orders, books

    async def record_paper(
        self,
        account: str,
        orders: list[tuple[str, dict[str, Any]]],
        books: list[tuple[str, int, float, float]],
    ) -> None:
        """Write a paper operation's new or changed orders and books together."""
        order_rows = [
            (client_id, account, json.dumps(body), time.time())
            for client_id, body in orders
        ]
        book_rows = [(account, *book) for book in books]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO paper_orders (client_id, account, body, created)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT(client_id) DO UPDATE SET body = excluded.body",
                order_rows,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO paper_books VALUES (?, ?, ?, ?, ?)", book_rows
            )

        await self.write(op)


_SET_FLAG = "INSERT OR REPLACE INTO flags (name, value, updated) VALUES (?, ?, ?)"
# Tasks with the intent they recorded, if any.
_SELECT_TASKS = (
    "SELECT tasks.*, intents.body AS intent FROM tasks"
    " LEFT JOIN intents ON intents.task_id = tasks.id"
)
_COLUMNS = (
    "id, kind, priority, payload, state, attempts, not_before, last_error, result,"
    " created, updated, finished, lane"
)
_INSERT_TASK = f"INSERT INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
# Every durable task is inserted (record_tasks) before its state can change,
# so a change is an UPDATE of the state columns: no payload to serialise again.
_UPDATE_STATE = (
    "UPDATE tasks SET state=?, attempts=?, not_before=?, last_error=?, result=?,"
    " updated=?, finished=? WHERE id=?"
)


def _not_before_wall(task: Task) -> float:
    # The scheduler's not-before time is on trio's clock; store wall time.
    if task.state is not TaskState.RETRY_WAIT:
        return 0.0
    return time.time() + max(0.0, task.not_before - trio.current_time())


def _task_row(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.kind,
        int(task.priority),
        json.dumps(task.payload),
        task.state.value,
        task.attempts,
        _not_before_wall(task),
        task.last_error,
        task.result,
        task.created_wall,
        time.time(),
        task.finished_wall,
        task.lane,
    )


def _task_from_row(row: sqlite3.Row) -> Task:
    # A Row's `in` looks at its values, so the keys are asked for by name.
    intent = row["intent"] if "intent" in row.keys() else None  # noqa: SIM118
    return Task(
        kind=row["kind"],
        priority=Priority(row["priority"]),
        payload=json.loads(row["payload"]),
        id=row["id"],
        state=TaskState(row["state"]),
        attempts=row["attempts"],
        created_wall=row["created"],
        finished_wall=row["finished"],
        last_error=row["last_error"],
        result=row["result"],
        lane=row["lane"],
        durable=True,
        intent=None if intent is None else json.loads(intent),
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a journal written by an earlier version up to this schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "lane" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN lane TEXT")
    # Paper accounts (#5): rows from before them belong to the one account
    # there was, named "paper".
    columns = {row[1] for row in conn.execute("PRAGMA table_info(paper_orders)")}
    if "account" not in columns:
        conn.execute(
            "ALTER TABLE paper_orders ADD COLUMN account TEXT NOT NULL DEFAULT 'paper'"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(paper_books)")}
    if "account" not in columns:
        conn.executescript(
            """
            BEGIN;
            ALTER TABLE paper_books RENAME TO paper_books_old;
            CREATE TABLE paper_books (
                account TEXT NOT NULL,
                symbol TEXT NOT NULL,
                size INTEGER NOT NULL,
                average_price REAL NOT NULL,
                realized_pnl REAL NOT NULL,
                PRIMARY KEY (account, symbol)
            );
            INSERT INTO paper_books
                SELECT 'paper', symbol, size, average_price, realized_pnl
                FROM paper_books_old;
            DROP TABLE paper_books_old;
            COMMIT;
            """
        )


def _open(state_dir: Path, path: Path) -> sqlite3.Connection:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(
            f"state directory {str(state_dir)!r} cannot be created: {exc.strerror}"
        ) from None
    if not state_dir.is_dir():
        raise JournalError(f"state directory {str(state_dir)!r} is not a directory")
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise JournalError(f"state directory {str(state_dir)!r} is not writable")

    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5
        )
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, not wal")
        # FULL syncs the WAL on every commit: a 202 survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        _migrate(conn)
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")
        # A journal file we may read but not write (wrong owner, read-only
        # mode) would take the daemon up to answer every alert 503: refuse now.
        conn.execute(
            "INSERT OR REPLACE INTO opened (id, at) VALUES (1, ?)", (time.time(),)
        )
    except sqlite3.Error as exc:
        raise JournalError(
            f"journal {str(path)!r} is not a usable SQLite database: {exc}"
        ) from None
    return conn
