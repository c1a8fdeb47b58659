"""Deduplication: which alerts are resends of one already acknowledged.

The key is, in order of preference: the alert's own ``id`` field, the
``webhook-id`` header (Standard Webhooks), or a hash of the normalised body.
An id or header is the sender's promise that two sends are one alert, so it is
remembered for the whole retention period. A body hash is only a guess: the
same strategy legitimately sends the same alert again on a later bar. It is
remembered for a short window (10 s by default) that covers a provider's
resends after a timeout or a lost answer, a few seconds apart, and is shorter
than the shortest bar that repeats an identical alert (15 s on TradingView's
seconds charts; in practice 1 min).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DedupKey:
    key: str
    ttl_s: float


class Deduplicator:
    """Remembers recent keys in memory; the journal keeps them across restarts."""

    def __init__(
        self,
        *,
        window_s: float,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.retention_s = retention_s
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}

    def load(self, keys: dict[str, tuple[str, float]]) -> None:
        self._seen.update(keys)

    def key_for(
        self, data: dict[str, Any], alert_id: str | None, webhook_id: str | None
    ) -> DedupKey:
        if alert_id is not None:
            return DedupKey("id:" + alert_id, self.retention_s)
        if webhook_id:
            return DedupKey("webhook-id:" + webhook_id[:256], self.retention_s)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return DedupKey("body:" + digest, self.window_s)

    def first(self, key: DedupKey) -> str | None:
        """The task id of the earlier alert with this key, if still remembered."""
        seen = self._seen.get(key.key)
        if seen is None:
            return None
        task_id, expires = seen
        if expires <= self._clock():
            del self._seen[key.key]
            return None
        return task_id

    def remember(self, key: DedupKey, task_id: str) -> None:
        self._seen[key.key] = (task_id, self._clock() + key.ttl_s)

    def forget(self, key: DedupKey) -> None:
        self._seen.pop(key.key, None)

    def prune(self) -> int:
        now = self._clock()
        expired = [k for k, (_, expires) in self._seen.items() if expires <= now]
        for k in expired:
            del self._seen[k]
        return len(expired)

    def __len__(self) -> int:
        return len(self._seen)
