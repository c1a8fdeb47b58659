"""projectx_client pieces that need no gateway: rate limiter, shared reads, errors.

The client's behaviour against a gateway (401, token refresh, 429, 5xx) is
tested over loopback in test_projectx_broker.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trading_daemon.projectx_client import (
    AuthenticationError,
    ClientConfig,
    GatewayError,
    Json,
    ProjectXClient,
    RateLimited,
    RateLimiter,
    ServerError,
    SharedFetch,
    error_code,
    is_transient,
    retry_after_s,
)

KEY = "pxk-test-0123456789abcdef"


async def test_rate_limiter_spreads_calls_over_windows(
    autojump_clock: MockClock,
) -> None:
    """Seven callers at 3 per second go out at 0, 0, 0, 1, 1, 1 and 2 s."""
    limiter = RateLimiter(3, 1.0)
    sent: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            sent.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(7):
            nursery.start_soon(call)

    assert [round(t) for t in sent] == [0, 0, 0, 1, 1, 1, 2]


async def test_rate_limiter_pause_holds_every_caller(autojump_clock: MockClock) -> None:
    """A 429's pause holds back the next call even with room in the window."""
    limiter = RateLimiter(100, 60.0)
    limiter.pause(5.0)

    async with limiter.slot():
        sent_at = trio.current_time()

    assert sent_at == pytest.approx(5.0)


async def test_rate_limiter_counts_the_window_from_the_answer(
    autojump_clock: MockClock,
) -> None:
    """A slow answer keeps its slot: the window starts when the answer arrives."""
    limiter = RateLimiter(1, 1.0)
    sent: list[float] = []

    async def call(duration: float) -> None:
        async with limiter.slot():
            sent.append(trio.current_time())
            await trio.sleep(duration)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 3.0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 0.0)

    # Counting sends would allow the second at 1 s; the gateway may have
    # counted the first as late as its answer at 3 s.
    assert sent == [0.0, 4.0]


async def test_rate_limiter_urgent_callers_go_first(autojump_clock: MockClock) -> None:
    """An urgent caller (the fill check) passes normal ones already waiting."""
    limiter = RateLimiter(1, 1.0)
    order: list[str] = []

    async def call(name: str, urgent: bool) -> None:
        async with limiter.slot(urgent=urgent):
            order.append(f"{name}@{trio.current_time():g}")

    async with trio.open_nursery() as nursery:
        # One at a time, so they queue in this order.
        for name in ("first", "alert-1", "alert-2"):
            nursery.start_soon(call, name, False)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "fill-check", True)

    assert order == ["first@0", "fill-check@1", "alert-1@2", "alert-2@3"]


async def test_rate_limiter_reserve_is_for_urgent_calls(
    autojump_clock: MockClock,
) -> None:
    """With the window used up to its reserve, only urgent calls get through."""
    limiter = RateLimiter(3, 10.0, reserve=1)
    sent: list[tuple[str, float]] = []

    async def call(name: str, urgent: bool) -> None:
        async with limiter.slot(urgent=urgent):
            sent.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for name in ("alert-1", "alert-2", "alert-3"):
            nursery.start_soon(call, name, False)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "fill-check", True)

    assert sent == [
        ("alert-1", 0.0),
        ("alert-2", 0.0),
        ("fill-check", 0.0),
        ("alert-3", 10.0),
    ]


def test_rate_limiter_refuses_nonsense_limits() -> None:
    """A limit below 1 or a window of 0 is a ValueError showing the values."""
    with pytest.raises(ValueError, match="got 0 per 60 s"):
        RateLimiter(0, 60)
    with pytest.raises(ValueError, match="reserve 5"):
        RateLimiter(5, 60, reserve=5)


def test_is_transient_names_retryable_errors_and_unwraps_groups() -> None:
    """Transport, 5xx and 429 are transient, inside groups too; refusals are not."""
    timeout = httpx.ReadTimeout("slow")

    assert is_transient(timeout)
    assert is_transient(ExceptionGroup("one", [ServerError("Order/place", 502)]))
    assert is_transient(RateLimited("Order/place", 1.0))
    assert not is_transient(GatewayError("Order/place", 5, "closed"))
    assert not is_transient(ExceptionGroup("mixed", [timeout, ValueError("bad")]))
    assert not is_transient(AuthenticationError("refused"))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    """Retry-After as seconds or an HTTP date; anything else is None."""
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert retry_after_s("3") == 3.0
    assert 25 <= (retry_after_s(soon) or 0) <= 30
    assert retry_after_s("later") is None
    assert retry_after_s(None) is None


def test_client_config_repr_hides_the_api_key() -> None:
    """The key never shows in a repr (tracebacks, debug logs)."""
    config = ClientConfig("http://127.0.0.1:1", "trader", KEY)

    assert KEY not in repr(config)


async def test_shared_fetch_one_read_answers_everyone_waiting(
    autojump_clock: MockClock,
) -> None:
    """Callers that arrive during a read share the next one: 2 reads for 5 callers."""
    reads = 0

    async def fetch() -> list[Json]:
        nonlocal reads
        reads += 1
        await trio.sleep(1)
        return [{"read": reads}]

    shared = SharedFetch(fetch)
    answers: list[int] = []

    async def ask() -> None:
        answers.append((await shared.get())[0]["read"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(4):
            nursery.start_soon(ask)

    # The first read began before the other four arrived, so it cannot answer
    # them: they share the second.
    assert reads == 2
    assert sorted(answers) == [1, 2, 2, 2, 2]


async def test_shared_fetch_failure_answers_nobody(autojump_clock: MockClock) -> None:
    """A failed read raises for its caller only; the next caller reads again."""
    results = iter([RuntimeError("gateway away"), [{"ok": True}]])

    async def fetch() -> list[Json]:
        await trio.sleep(1)
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    shared = SharedFetch(fetch)

    with pytest.raises(RuntimeError, match="gateway away"):
        await shared.get()
    answer = await shared.get()

    assert answer == [{"ok": True}]


async def test_client_counts_failed_calls_by_kind(autojump_clock: MockClock) -> None:
    """Each failed call is counted under a short kind: gateway code or HTTP status."""
    answers = iter(
        [
            httpx.Response(200, json={"success": True, "token": "tok-1234567890"}),
            httpx.Response(503),
            httpx.Response(200, json={"success": False, "errorCode": 5}),
            httpx.Response(429),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    config = ClientConfig("http://gateway.test", "user", "key-0123456789")
    client = ProjectXClient(config, transport=httpx.MockTransport(handler))
    for _ in range(3):
        with pytest.raises((ServerError, GatewayError, RateLimited)):
            await client.request_once("Order/place", {})
    await client.aclose()

    assert dict(client.errors) == {"http_503": 1, "gateway_5": 1, "http_429": 1}
    assert error_code(TimeoutError()) == "other"
