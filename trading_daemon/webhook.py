"""Webhook intake: authenticate and validate an alert, queue its task, answer at once.

TradingView cancels a request after 3 s and resends on a 5xx, so this path does
no slow work and never answers 5xx for bad input: it parses, authenticates,
validates, submits with ``send_nowait`` and returns. The body is parsed before
the credential check only because TradingView's passphrase lives inside it; the
passphrase is removed from the alert before it is hashed, journaled or logged.
It knows nothing of HTTP frameworks, so the same function can sit behind
quart-trio or a bare ASGI route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from loguru import logger

from .accounts import Accounts
from .alerts import AlertError, parse_body, parse_signal
from .auth import AuthError, WebhookAuth, take_passphrases
from .dedup import Deduplicator
from .execution import EXECUTE_SIGNAL
from .journal import Journal, JournalError
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
    """Turns webhook bodies into durable, queued execution tasks."""

    def __init__(
        self,
        scheduler: Scheduler,
        journal: Journal,
        dedup: Deduplicator,
        *,
        max_body_bytes: int,
        auth: WebhookAuth | None = None,
        accounts: Accounts | None = None,
    ) -> None:
        """``accounts`` are those an alert may name; None: one unnamed account."""
        self._accounts = accounts
        self._scheduler = scheduler
        self._journal = journal
        self._dedup = dedup
        self.max_body_bytes = max_body_bytes
        self.auth = auth or WebhookAuth()

    def too_large(self, size: int | None = None) -> Reply:
        shown = f"{size} bytes" if size is not None else "the body"
        return Reply(
            413,
            {"error": f"{shown} exceeds the {self.max_body_bytes} byte limit"},
        )

    async def accept(
        self,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        webhook_id: str | None = None,
    ) -> Reply:
        """Authenticate, validate, deduplicate, journal and queue one alert.

        ``headers`` holds the request's credential headers under lower-case
        names (``authorization``, ``webhook-id``, ``webhook-timestamp``,
        ``webhook-signature``).
        """
        headers = headers or {}
        webhook_id = webhook_id or headers.get("webhook-id")
        if len(body) > self.max_body_bytes:
            return self.too_large(len(body))

        try:
            data = parse_body(body)
        except AlertError as exc:
            # Unreadable, so it carries no passphrase: refused as
            # unauthenticated unless a header credential admits it.
            refusal = self._authenticate(body, headers, [], unreadable=exc)
            return self._invalid(exc) if refusal is None else refusal
        presented = take_passphrases(data)
        refusal = self._authenticate(body, headers, presented)
        if refusal is not None:
            return refusal
        try:
            signal = parse_signal(data)
            accounts = self._accounts_for(signal.account)
        except AlertError as exc:
            return self._invalid(exc)

        key = self._dedup.key_for(data, signal.alert_id, webhook_id)
        first = self._dedup.first(key)
        if first is not None:
            logger.info("alert.duplicate", task_id=first, key=key.key.split(":")[0])
            return Reply(200, {"id": first, "status": "duplicate"})

        reserved = 0
        try:
            for _ in accounts:
                self._scheduler.reserve()
                reserved += 1
        except QueueFull:
            self._release(reserved)
            logger.bind(symbol=signal.symbol).warning("alert.refused_queue_full")
            return _busy("task queue is full; retry later")
        except SchedulerClosed:
            self._release(reserved)
            return _busy("daemon is shutting down; retry later")

        # One task per account: each runs in its account's lane for this
        # contract, one at a time in arrival order (see scheduler.py).
        payload = signal.to_payload()
        tasks = [
            Task(
                kind=EXECUTE_SIGNAL,
                priority=Priority.NORMAL,
                payload={"signal": payload, "account": account},
                lane=f"{account or ''}:{signal.symbol}",
                durable=True,
            )
            for account in accounts
        ]
        # Remembered before the commit so a resend racing this one is a
        # duplicate rather than a second task.
        self._dedup.remember(key, tasks[0].id)
        try:
            # All accounts' tasks in one commit: a crash keeps all or none.
            # Shielded: the commit goes ahead even if this request is cancelled
            # meanwhile (the client went away, the read deadline passed, the
            # shutdown's grace ran out), and then its tasks must be queued,
            # not left in the journal until a restart with resends answered
            # "duplicate".
            with trio.CancelScope(shield=True):
                await self._journal.record_tasks(
                    tasks, dedup_key=key.key, dedup_ttl=key.ttl_s
                )
        except JournalError as exc:
            self._dedup.forget(key)
            self._release(reserved)
            logger.bind(error=str(exc)).error("alert.not_journaled")
            return _busy("journal unavailable; retry later")
        except BaseException:
            self._release(reserved)
            raise

        for task in tasks:
            try:
                self._scheduler.submit(task, reserved=True)
            except SchedulerClosed:
                # Durable already: the next start recovers and runs it.
                self._scheduler.release()
                logger.bind(task_id=task.id).info("alert.deferred_to_restart")

            # Keyword fields, not bind(): this line is on every alert's path.
            logger.info(
                "alert.accepted",
                task_id=task.id,
                action=signal.action.value,
                symbol=signal.symbol,
                quantity=signal.quantity,
                alert_id=signal.alert_id,
                account=task.payload["account"],
            )

        ids = [task.id for task in tasks]
        return Reply(202, {"id": ids[0], "ids": ids, "status": "queued"})

    def _accounts_for(self, requested: str | None) -> list[str | None]:
        if self._accounts is None:
            return [requested]
        try:
            return list(self._accounts.resolve(requested))
        except LookupError as exc:
            raise AlertError(str(exc), field="account", value=requested) from None

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._scheduler.release()

    def _authenticate(
        self,
        body: bytes,
        headers: Mapping[str, str],
        presented: list[Any],
        *,
        unreadable: AlertError | None = None,
    ) -> Reply | None:
        """None if the request may pass; otherwise the 401 answer (logged)."""
        try:
            self.auth.check(body, headers, presented)
        except AuthError as exc:
            fields = {"reason": str(exc)}
            if unreadable is not None:
                fields["body_error"] = str(unreadable)
            logger.bind(**fields).warning("auth.rejected")
            return Reply(exc.status, exc.as_json(), exc.headers)
        return None

    def _invalid(self, exc: AlertError) -> Reply:
        # An error may quote a field's value; a sender that put a secret in
        # the wrong field must not see it echoed, in the answer or the log.
        error = self.auth.redact(str(exc))
        logger.bind(error=error, field=exc.field).warning("alert.rejected")
        return Reply(400, {**exc.as_json(), "error": error})


def _busy(message: str) -> Reply:
    return Reply(503, {"error": message}, {"Retry-After": str(RETRY_AFTER_S)})
