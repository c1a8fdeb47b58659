"""Per-source rate limit: one token bucket per client address, on Trio's clock.

A bucket holds up to a minute's worth of requests and refills continuously, so
a strategy that fires a burst of alerts on one bar close gets through, while a
flood from one address is answered 429 before any of its bodies is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

# Bound on remembered sources: a flood from many addresses cannot grow memory
# without limit. The least recently seen source is forgotten first.
MAX_SOURCES = 10_000


@dataclass(frozen=True)
class Refusal:
    """A refused request: when to retry, and whether it starts a refusal spell."""

    retry_after_s: float
    first: bool

    @property
    def retry_after_header(self) -> str:
        # Retry-After takes whole seconds; rounding down would invite a retry
        # that is refused again.
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter:
    """Allows ``per_minute`` requests per source, in bursts of up to as many."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_sources = max_sources
        self._clock = clock
        # source -> (tokens, last update, refused since last allowed)
        self._buckets: dict[str, tuple[float, float, bool]] = {}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, source: str) -> Refusal | None:
        """Take one request from ``source``'s bucket; a Refusal if it is empty."""
        if not self.enabled:
            return None

        now = self._clock()
        # pop and re-insert keeps the dict ordered by last use.
        tokens, updated, refusing = self._buckets.pop(
            source, (self.capacity, now, False)
        )
        tokens = min(self.capacity, tokens + (now - updated) * self._rate)

        if tokens >= 1.0:
            self._buckets[source] = (tokens - 1.0, now, False)
            self._forget_oldest()
            return None
        self._buckets[source] = (tokens, now, True)
        self._forget_oldest()
        return Refusal(retry_after_s=(1.0 - tokens) / self._rate, first=not refusing)

    def _forget_oldest(self) -> None:
        while len(self._buckets) > self._max_sources:
            del self._buckets[next(iter(self._buckets))]
