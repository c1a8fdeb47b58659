"""Journal: durability before the ack, recovery, dedup, replay, retention, errors.

The journal commits on a worker thread, which the autojump clock would count as
idle time; these tests use the real clock and wait for outcomes with a limit.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from support import until
from venues import core

from trading_daemon.broker import OrderRequest, OrderResult, Side
from trading_daemon.cli import main
from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.dedup import Deduplicator
from trading_daemon.execution import EXECUTE_SIGNAL
from trading_daemon.http_app import create_app
from trading_daemon.journal import Journal, JournalError
from trading_daemon.paper_broker import PaperBroker
from trading_daemon.priority import Priority
from trading_daemon.tasks import TaskState


def adding(state_dir: Path) -> Settings:
    """Settings under which every buy alert adds a contract: one order each."""
    return Settings(
        state_dir=state_dir, trading_hours="always", pyramiding=True, max_pyramid=10
    )


def alert(**fields: Any) -> bytes:
    body = {"action": "buy", "symbol": "MNQ1!", "quantity": "1", **fields}
    return json.dumps(body).encode()


def rows(state_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the journal with a connection of its own, as another process would."""
    conn = sqlite3.connect(state_dir / "journal.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_journal_ack_only_after_task_is_on_disk(tmp_path: Path) -> None:
    """When accept() answers 202, another connection already sees the task queued."""
    async with core(
        Daemon(Settings(state_dir=tmp_path, trading_hours="always"))
    ) as daemon:
        reply = await daemon.intake.accept(alert(id="a1"))
        on_disk = rows(tmp_path, "SELECT id, state, kind FROM tasks")

    assert reply.status == 202
    assert (reply.body["id"], "queued", EXECUTE_SIGNAL) in on_disk


async def test_journal_group_commit_shares_syncs(tmp_path: Path) -> None:
    """Sixteen concurrent acknowledgements need fewer than sixteen commits."""
    async with core(
        Daemon(Settings(state_dir=tmp_path, trading_hours="always"))
    ) as daemon:
        before = daemon.journal.commits
        replies: list[int] = []

        async def send(index: int) -> None:
            replies.append((await daemon.intake.accept(alert(id=f"g{index}"))).status)

        async with trio.open_nursery() as nursery:
            for index in range(16):
                nursery.start_soon(send, index)
        commits = daemon.journal.commits - before

    assert replies == [202] * 16
    assert commits < 16


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        ({"body": alert(id="x-1")}, {"body": alert(id="x-1", quantity="2")}, True),
        ({"body": alert(id="x-1")}, {"body": alert(id="x-2")}, False),
        (
            {"body": alert(), "webhook_id": "msg_1"},
            {"body": alert(quantity="3"), "webhook_id": "msg_1"},
            True,
        ),
        ({"body": alert()}, {"body": alert()}, True),
        ({"body": alert()}, {"body": alert(quantity="2")}, False),
    ],
    ids=["same-id", "other-id", "same-header", "same-body", "other-body"],
)
async def test_journal_dedup_by_id_header_or_body(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], duplicate: bool
) -> None:
    """A resend by id, webhook-id header or identical body is answered, not queued."""
    async with core(
        Daemon(Settings(state_dir=tmp_path, trading_hours="always"))
    ) as daemon:
        one = await daemon.intake.accept(
            first["body"], webhook_id=first.get("webhook_id")
        )
        two = await daemon.intake.accept(
            second["body"], webhook_id=second.get("webhook_id")
        )
        submitted = daemon.scheduler.stats.submitted

    assert one.status == 202
    if duplicate:
        assert (two.status, two.body) == (
            200,
            {"id": one.body["id"], "status": "duplicate"},
        )
        assert submitted == 1
    else:
        assert two.status == 202
        assert submitted == 2


def test_dedup_body_window_expires_but_id_does_not() -> None:
    """An identical body is a new alert after the window; an id is remembered."""
    now = [1000.0]
    dedup = Deduplicator(window_s=10, retention_s=86400, clock=lambda: now[0])
    data = {"action": "buy", "symbol": "MNQ", "quantity": 1}
    body_key = dedup.key_for(data, None, None)
    id_key = dedup.key_for(data, "strategy-42", None)
    dedup.remember(body_key, "t1")
    dedup.remember(id_key, "t2")

    now[0] += 9.9
    assert dedup.first(body_key) == "t1"
    now[0] += 0.2
    assert dedup.first(body_key) is None
    assert dedup.first(id_key) == "t2"
    now[0] += 86400
    assert dedup.first(id_key) is None


async def test_journal_dedup_keys_survive_restart(tmp_path: Path) -> None:
    """A resend after a restart is still a duplicate of the first alert."""
    settings = Settings(state_dir=tmp_path, trading_hours="always")
    async with core(Daemon(settings)) as daemon:
        first = await daemon.intake.accept(alert(id="keep-me"))
    async with core(Daemon(settings)) as daemon:
        again = await daemon.intake.accept(alert(id="keep-me"))

    assert again.status == 200
    assert again.body == {"id": first.body["id"], "status": "duplicate"}


def seed(state_dir: Path, states: dict[str, TaskState], **extra: Any) -> None:
    """Write execution tasks straight into a journal, as a crashed run left them."""
    journal = Journal(state_dir)
    conn = journal._conn
    now = time.time()
    for index, (task_id, state) in enumerate(states.items()):
        payload = {
            "signal": {
                "action": "buy",
                "symbol": "MNQ",
                "quantity": 1,
                "alert_id": None,
                "raw_symbol": "MNQ",
                "extra": {},
            }
        }
        not_before = (
            now + extra.get("delay", 0.0) if state is TaskState.RETRY_WAIT else 0
        )
        attempts = 1 if state in (TaskState.RUNNING, TaskState.RETRY_WAIT) else 0
        conn.execute(
            "INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                task_id,
                EXECUTE_SIGNAL,
                int(Priority.NORMAL),
                json.dumps(payload),
                state.value,
                attempts,
                not_before,
                None,
                None,
                now + index,
                now + index,
                now if state in (TaskState.DONE, TaskState.DEAD) else None,
                extra.get("lane"),
            ),
        )
    conn.close()


async def test_journal_restart_recovers_each_unfinished_state(tmp_path: Path) -> None:
    """Queued, running and retry-wait tasks run after a restart; finished ones don't."""
    seed(
        tmp_path,
        {
            "queued": TaskState.QUEUED,
            "running": TaskState.RUNNING,
            "waiting": TaskState.RETRY_WAIT,
            "done": TaskState.DONE,
            "dead": TaskState.DEAD,
        },
        delay=0.3,
    )
    daemon = Daemon(adding(tmp_path))
    assert isinstance(daemon.broker, PaperBroker)
    async with core(daemon):
        started = trio.current_time()
        await until(lambda: daemon.scheduler.stats.completed == 3)
        elapsed = trio.current_time() - started
        status = await daemon.status()

    by_task = {fill.client_id for fill in daemon.broker.fills}
    assert by_task == {"td-queued-1", "td-running-1", "td-waiting-1"}
    assert daemon.recovery.queued == 1
    assert daemon.recovery.running == 1
    assert daemon.recovery.retry_wait == 1
    assert status["journal"]["recovered_at_start"] == {
        "queued": 1,
        "running": 1,
        "retry_wait": 1,
    }
    # The retry-wait task kept its remaining backoff across the restart.
    assert elapsed >= 0.25
    states = dict(rows(tmp_path, "SELECT id, state FROM tasks"))
    assert states == {
        "queued": "done",
        "running": "done",
        "waiting": "done",
        "done": "done",
        "dead": "dead",
    }


async def test_journal_rerun_of_running_task_places_no_second_order(
    tmp_path: Path,
) -> None:
    """A task that filled but died before 'done' finds its order on rerun."""
    settings = Settings(state_dir=tmp_path, trading_hours="always")
    async with core(Daemon(settings)) as daemon:
        request = OrderRequest("MNQ", Side.BUY, 1, "td-crashed")
        await daemon.broker.place_order(request)
    seed(tmp_path, {"crashed": TaskState.RUNNING})

    daemon = Daemon(settings)
    assert isinstance(daemon.broker, PaperBroker)
    async with core(daemon):
        await until(lambda: daemon.scheduler.stats.completed == 1)

    assert [f.client_id for f in daemon.broker.fills] == ["td-crashed"]
    assert (await daemon.broker.position("MNQ")).size == 1
    assert "found from an earlier attempt" in (daemon.scheduler.recent[-1].result or "")


class FlakyPaper(PaperBroker):
    """Fails every order while ``broken`` is set."""

    broken = True

    async def place_order(self, request: OrderRequest) -> OrderResult:
        if self.broken:
            raise ConnectionError("broker unreachable")
        return await super().place_order(request)


async def test_journal_dead_letter_persists_and_replays(tmp_path: Path) -> None:
    """A dead letter is listed with its reason after restart and replays to a fill."""
    admin_token = "admin-token-for-replay-0042"
    admin = {"Authorization": f"Bearer {admin_token}"}
    settings = Settings(
        state_dir=tmp_path,
        trading_hours="always",
        max_retries=0,
        admin_token=admin_token,
    )
    first = Daemon(settings)
    first.brokers["paper"] = first.broker = FlakyPaper(journal=first.journal)
    async with core(first):
        reply = await first.intake.accept(alert(id="will-die"))
        await until(lambda: first.scheduler.stats.dead == 1)
    task_id = reply.body["id"]

    second = Daemon(settings)
    async with core(second):
        client = create_app(second).test_client()
        listed = await (await client.get("/dead-letters")).get_json()
        replayed = await client.post(f"/dead-letters/{task_id}/replay", headers=admin)
        await until(lambda: second.scheduler.stats.completed == 1)
        again = await client.post(f"/dead-letters/{task_id}/replay", headers=admin)
        missing = await client.post("/dead-letters/nope/replay", headers=admin)

    assert [(d["id"], d["last_error"]) for d in listed["dead_letters"]] == [
        (task_id, "ConnectionError: broker unreachable")
    ]
    assert replayed.status_code == 202
    assert again.status_code == 409
    assert missing.status_code == 404
    assert dict(rows(tmp_path, "SELECT id, state FROM tasks"))[task_id] == "done"


async def test_journal_prune_removes_only_old_finished_tasks(tmp_path: Path) -> None:
    """Cleanup deletes finished rows past retention and keeps every unfinished one."""
    seed(
        tmp_path,
        {
            "old-done": TaskState.DONE,
            "old-dead": TaskState.DEAD,
            "old-q": TaskState.QUEUED,
        },
    )
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.execute("UPDATE tasks SET finished = 1, updated = 1, created = 1")
    conn.commit()
    conn.close()

    journal = Journal(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        pruned = await journal.prune(older_than_s=3600)
        journal.close()

    assert pruned == 2
    assert rows(tmp_path, "SELECT id FROM tasks") == [("old-q",)]


def test_journal_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    """A journal file that is not SQLite gives JournalError naming the file."""
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)

    with pytest.raises(JournalError, match="is not a usable SQLite database"):
        Journal(tmp_path)


def test_journal_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """A state directory path that is a regular file gives JournalError."""
    target = tmp_path / "state"
    target.write_text("x")

    with pytest.raises(JournalError, match=r"cannot be created|not a directory"):
        Journal(target)


def test_cli_serve_with_corrupt_journal_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve on a corrupt journal prints one startup error line, no traceback."""
    (tmp_path / "journal.sqlite3").write_bytes(b"garbage" * 1000)
    monkeypatch.setenv("TRADING_STATE_DIR", str(tmp_path))

    code = main(["serve"])
    err = capsys.readouterr().err

    assert code == 2
    assert "trading-daemon: startup error: journal" in err
    assert "Traceback" not in err


async def test_journal_recovery_keeps_lane_order(tmp_path: Path) -> None:
    """Recovered tasks of one lane run one at a time, oldest first."""
    seed(tmp_path, {"lane-1": TaskState.RUNNING, "lane-2": TaskState.QUEUED}, lane="L")
    daemon = Daemon(adding(tmp_path))
    assert isinstance(daemon.broker, PaperBroker)
    async with core(daemon):
        await until(lambda: daemon.scheduler.stats.completed == 2)

    restored = [t for t in daemon.scheduler.recent if t.kind == EXECUTE_SIGNAL]
    assert [t.lane for t in restored] == ["L", "L"]
    assert [f.client_id for f in daemon.broker.fills] == ["td-lane-1-1", "td-lane-2-1"]


async def test_journal_prune_keeps_dedup_key_of_unfinished_task(tmp_path: Path) -> None:
    """An expired dedup key survives cleanup while its task is still unfinished."""
    seed(tmp_path, {"waiting": TaskState.RETRY_WAIT, "finished": TaskState.DONE})
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.executemany(
        "INSERT INTO dedup (key, task_id, expires) VALUES (?, ?, 1)",
        [("id:waiting", "waiting"), ("id:finished", "finished")],
    )
    conn.commit()
    conn.close()

    journal = Journal(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        await journal.prune(older_than_s=3600)
        journal.close()

    assert rows(tmp_path, "SELECT key FROM dedup") == [("id:waiting",)]


def test_journal_read_only_file_is_a_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal file that can be read but not written is refused at startup."""
    Journal(tmp_path)._conn.close()
    connect = sqlite3.connect

    def read_only(path: Any, **kwargs: Any) -> sqlite3.Connection:
        # Tests run as root, whom file modes do not stop: open read-only.
        return connect(f"file:{path}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr("trading_daemon.journal.sqlite3.connect", read_only)

    with pytest.raises(JournalError, match=r"readonly"):
        Journal(tmp_path)
