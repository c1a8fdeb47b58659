"""Intake: what happens to an alert whose request is cancelled mid-way."""

from __future__ import annotations

from pathlib import Path

import trio
from support import until
from venues import core

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.tasks import TaskState

ALERT = b'{"action":"buy","symbol":"MNQ1!","quantity":"1","id":"cancelled-1"}'


async def test_alert_cancelled_while_its_commit_is_pending_still_runs(
    tmp_path: Path,
) -> None:
    """Cancelled during its journal commit, an alert is still queued and run.

    The request's cancellation (client gone, read deadline, shutdown grace)
    must not leave it journaled but unqueued, with resends answered
    "duplicate" until a restart.
    """
    settings = Settings(state_dir=tmp_path, trading_hours="always")
    async with core(Daemon(settings)) as daemon:
        with trio.CancelScope() as scope:
            scope.cancel()
            reply = await daemon.intake.accept(ALERT)
        [task_id] = reply.body["ids"]

        def state() -> TaskState | None:
            found = [t for t in daemon.scheduler.recent if t.id == task_id]
            return found[0].state if found else None

        await until(lambda: state() is TaskState.DONE)
        again = await daemon.intake.accept(ALERT)

    assert reply.status == 202
    assert again.body == {"id": task_id, "status": "duplicate"}
