"""Webhook intake: validate an alert, queue its task, answer at once.

TradingView cancels a request after 3 s and resends on a 5xx, so this path does
no slow work and never answers 5xx for bad input: it parses, validates, submits
with ``send_nowait`` and returns. It knows nothing of HTTP frameworks, so the
same function can sit behind quart-trio or a bare ASGI route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from .alerts import AlertError, parse_alert
from .execution import EXECUTE_SIGNAL
from .priority import Priority
from .scheduler import QueueFull, Scheduler, SchedulerClosed
from .tasks import Task

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Intake:
    """Turns webhook bodies into queued execution tasks."""

    def __init__(self, scheduler: Scheduler, *, max_body_bytes: int) -> None:
        self._scheduler = scheduler
        self.max_body_bytes = max_body_bytes

    def too_large(self, size: int | None = None) -> Reply:
        shown = f"{size} bytes" if size is not None else "the body"
        return Reply(
            413,
            {"error": f"{shown} exceeds the {self.max_body_bytes} byte limit"},
        )

    def accept(self, body: bytes) -> Reply:
        if len(body) > self.max_body_bytes:
            return self.too_large(len(body))
        try:
            signal = parse_alert(body)
        except AlertError as exc:
            logger.bind(error=str(exc), field=exc.field).warning("alert.rejected")
            return Reply(400, exc.as_json())

        task = Task(
            kind=EXECUTE_SIGNAL,
            priority=Priority.NORMAL,
            payload={"signal": signal.to_payload()},
        )
        try:
            self._scheduler.submit(task)
        except QueueFull:
            logger.bind(symbol=signal.symbol).warning("alert.refused_queue_full")
            return Reply(
                503,
                {"error": "task queue is full; retry later"},
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        except SchedulerClosed:
            return Reply(
                503,
                {"error": "daemon is shutting down; retry later"},
                {"Retry-After": str(RETRY_AFTER_S)},
            )

        logger.bind(
            task_id=task.id,
            action=signal.action.value,
            symbol=signal.symbol,
            quantity=signal.quantity,
            alert_id=signal.alert_id,
        ).info("alert.accepted")

        return Reply(202, {"id": task.id, "status": "queued"})
