"""Tasks: units of work that the scheduler runs, and the errors handlers raise."""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .priority import Priority


class TaskState(enum.StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRY_WAIT = "retry-wait"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"


class PermanentTaskError(Exception):
    """A failure that another attempt cannot fix (a refusal, bad data).

    The scheduler turns it into a dead letter at once instead of retrying.
    """


@dataclass(eq=False)
class Task:
    """One unit of work: which handler, with what, how urgent, and its history."""

    kind: str
    priority: Priority
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    not_before: float = 0.0
    # Trio clock at submission, for the wait-time figure; wall clock for humans.
    submitted_at: float = 0.0
    created_wall: float = field(default_factory=time.time)
    finished_wall: float | None = None
    last_error: str | None = None
    result: str | None = None
    # Tasks sharing a lane (e.g. "1001:MNQ", account and contract) run one at a
    # time in arrival order; None means no ordering constraint.
    lane: str | None = None
    # Durable tasks (alerts) live in the journal; periodic jobs are recreated.
    durable: bool = False
    # Set while the task counts against the scheduler's max_queue.
    holds_queue_slot: bool = False
    # What an alert task decided (intent.py), once recorded in the journal.
    intent: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for /status; an alert's task shows what it asked."""
        signal = self.payload.get("signal")
        alert = (
            {k: signal.get(k) for k in ("action", "symbol", "quantity", "alert_id")}
            if isinstance(signal, dict)
            else None
        )
        return {
            "id": self.id,
            "kind": self.kind,
            "priority": self.priority.label,
            "state": self.state.value,
            "attempts": self.attempts,
            "created": self.created_wall,
            "finished": self.finished_wall,
            "result": self.result,
            "last_error": self.last_error,
            "alert": alert,
            "account": self.payload.get("account"),
            "intent": self.intent,
        }


Handler = Callable[[Task], Awaitable[str | None]]
