"""ratelimit: token buckets per source on Trio's clock (the autojump clock here)."""

from __future__ import annotations

import pytest
import trio

from trading_daemon.ratelimit import RateLimiter, Refusal


async def test_rate_limiter_allows_a_burst_then_refuses(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A minute's worth of requests passes at once; the next one is refused."""
    limiter = RateLimiter(60)

    allowed = [limiter.check("203.0.113.7") for _ in range(60)]
    refused = limiter.check("203.0.113.7")

    assert allowed == [None] * 60
    assert isinstance(refused, Refusal)
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.retry_after_header == "1"


async def test_rate_limiter_refills_with_time(autojump_clock: trio.abc.Clock) -> None:
    """An empty bucket refills at per_minute / 60 requests a second."""
    limiter = RateLimiter(6)
    for _ in range(6):
        assert limiter.check("a") is None
    assert limiter.check("a") is not None

    await trio.sleep(9.9)
    still_empty = limiter.check("a")
    await trio.sleep(0.2)
    refilled = limiter.check("a")

    assert still_empty is not None
    assert refilled is None


async def test_rate_limiter_retry_after_is_rounded_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Retry-After is whole seconds, never less than the real wait, at least 1."""
    limiter = RateLimiter(2)
    limiter.check("a")
    limiter.check("a")

    refusal = limiter.check("a")

    assert refusal is not None
    assert refusal.retry_after_s == pytest.approx(30.0)
    assert refusal.retry_after_header == "30"
    assert Refusal(0.2, first=True).retry_after_header == "1"
    assert Refusal(1.01, first=True).retry_after_header == "2"


async def test_rate_limiter_sources_are_independent() -> None:
    """One source's flood does not use up another source's bucket."""
    limiter = RateLimiter(3)
    for _ in range(10):
        limiter.check("flood")

    assert limiter.check("calm") is None
    assert limiter.check("flood") is not None


async def test_rate_limiter_first_marks_the_start_of_a_refusal_spell(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Only the first refusal after an allowed request is marked first (logged)."""
    limiter = RateLimiter(60)
    for _ in range(60):
        limiter.check("a")

    spell = [limiter.check("a") for _ in range(3)]
    await trio.sleep(1.0)
    allowed = limiter.check("a")
    again = limiter.check("a")

    assert [r.first for r in spell if r is not None] == [True, False, False]
    assert allowed is None
    assert again is not None and again.first


async def test_rate_limiter_zero_disables() -> None:
    """per_minute = 0 turns the limit off and remembers nothing."""
    limiter = RateLimiter(0)

    results = [limiter.check("a") for _ in range(1000)]

    assert not limiter.enabled
    assert results == [None] * 1000
    assert len(limiter) == 0


async def test_rate_limiter_memory_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    """Beyond max_sources the least recently seen source is forgotten."""
    limiter = RateLimiter(1, max_sources=100)
    limiter.check("old")
    await trio.sleep(1)
    for index in range(100):
        limiter.check(f"10.0.0.{index}")

    assert len(limiter) == 100
    # Forgotten, so it starts again with a full bucket.
    assert limiter.check("old") is None


async def test_rate_limiter_recently_seen_source_is_kept() -> None:
    """A source seen again moves to the back of the forgetting order."""
    limiter = RateLimiter(1, max_sources=2)
    limiter.check("kept")
    limiter.check("other")
    refused = limiter.check("kept")  # refused, and now the most recent
    limiter.check("third")  # forgets "other"

    assert refused is not None
    assert limiter.check("kept") is not None
