"""Connection limits over real loopback sockets: slow clients, the cap, the limits.

These tests are about the network, so they use real sockets and the real clock,
with timeouts shortened in the test's Settings so each one ends in seconds.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio
from support import serving, until

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.tasks import TaskState

ALERT = b'{"action":"buy","symbol":"MNQ1!","quantity":"1"}'
READ_TIMEOUT_S = 1.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        webhook_port=0,
        state_dir=tmp_path,
        read_timeout=READ_TIMEOUT_S,
        keep_alive_timeout=30.0,
        rate_limit=0,
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[tuple[Daemon, int]]:
    async with serving(settings) as pair:
        yield pair


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return received
        if not chunk:
            return received
        received += chunk


async def read_response(stream: trio.SocketStream) -> bytes:
    """One HTTP response: the head and a Content-Length body."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def trickle(stream: trio.SocketStream, head: bytes, drip: bytes) -> float:
    """Send ``head``, then ``drip`` every 0.1 s until the server hangs up.

    Returns the seconds from connecting to being cut off.
    """
    started = trio.current_time()
    await stream.send_all(head)
    closed = trio.Event()

    async def watch() -> None:
        await read_until_closed(stream)
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.fail_after(10):
            while not closed.is_set():
                try:
                    await stream.send_all(drip)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                with trio.move_on_after(0.1):
                    await closed.wait()
            await closed.wait()
    return trio.current_time() - started


async def post_alerts(port: int, count: int) -> list[tuple[int, float]]:
    """POST ``count`` distinct alerts; (status, seconds) for each."""
    results = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for index in range(count):
            body = json.dumps(
                {"action": "buy", "symbol": "MNQ1!", "quantity": 1, "id": f"ok-{index}"}
            )
            started = trio.current_time()
            answer = await client.post("/webhook", content=body)
            results.append((answer.status_code, trio.current_time() - started))
            await trio.sleep(0.05)
    return results


async def test_slow_loris_headers_cut_off_while_others_served(
    server: tuple[Daemon, int],
) -> None:
    """A client dribbling headers is cut off after read_timeout; others get 202."""
    _, port = server
    cut_after: list[float] = []
    served: list[tuple[int, float]] = []

    async def slow_client() -> None:
        head = b"POST /webhook HTTP/1.1\r\nHost: slow\r\n"
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            cut_after.append(await trickle(stream, head, b"X-Slow: 1\r\n"))

    async def normal_client() -> None:
        await trio.sleep(0.2)
        served.extend(await post_alerts(port, 10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_client)
        nursery.start_soon(normal_client)

    assert READ_TIMEOUT_S * 0.9 <= cut_after[0] < READ_TIMEOUT_S + 2
    assert [status for status, _ in served] == [202] * 10
    assert max(seconds for _, seconds in served) < 0.5


async def test_slow_loris_body_cut_off(
    log_sink: io.StringIO, server: tuple[Daemon, int]
) -> None:
    """A client whose headers are complete but whose body trickles is cut off.

    The cut is logged, once, naming the client and the limit.
    """
    _, port = server
    head = b"POST /webhook HTTP/1.1\r\nHost: slow\r\nContent-Length: 500\r\n\r\n{"

    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        cut_after = await trickle(stream, head, b" ")

    assert READ_TIMEOUT_S * 0.9 <= cut_after < READ_TIMEOUT_S + 2
    timeouts = [x for x in log_sink.getvalue().splitlines() if "http.read_timeout" in x]
    assert timeouts == [
        f"<4>WARNING http.read_timeout client=127.0.0.1 read_timeout_s={READ_TIMEOUT_S}"
    ]


async def test_idle_new_connection_closed_after_read_timeout(
    server: tuple[Daemon, int],
) -> None:
    """A connection that never sends a byte is closed after read_timeout."""
    _, port = server
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        started = trio.current_time()
        with trio.fail_after(READ_TIMEOUT_S + 3):
            received = await read_until_closed(stream)

    assert received == b""
    assert trio.current_time() - started >= READ_TIMEOUT_S * 0.9


def post(alert_id: str) -> bytes:
    body = json.dumps(
        {"action": "buy", "symbol": "MNQ1!", "quantity": 1, "id": alert_id}
    ).encode()
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def ran(daemon: Daemon, alert_id: str) -> list[TaskState]:
    return [
        t.state
        for t in daemon.scheduler.recent
        if t.payload.get("signal", {}).get("alert_id") == alert_id
    ]


async def test_alert_of_a_client_gone_before_its_answer_still_runs(
    server: tuple[Daemon, int],
) -> None:
    """A client that hangs up right after sending: its journaled alert still runs.

    Not left queued in the journal until a restart, with every resend answered
    "duplicate"; a resend now finds the task that ran.
    """
    daemon, port = server
    for index in range(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(post(f"gone-{index}"))
        await stream.aclose()

    for index in range(5):
        await until(lambda i=index: ran(daemon, f"gone-{i}") == [TaskState.DONE])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        resend = await client.post(
            "/webhook", content=post("gone-0").split(b"\r\n\r\n")[1]
        )
    assert resend.json()["status"] == "duplicate"
    assert await daemon.journal.oldest_unfinished() is None


async def test_client_that_half_closes_still_gets_its_answer(
    server: tuple[Daemon, int],
) -> None:
    """Request sent, then the client's side shut (SHUT_WR): the 202 still arrives."""
    daemon, port = server
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(post("half-1"))
        await stream.send_eof()
        with trio.fail_after(5):
            answer = await read_until_closed(stream)

    assert answer.startswith(b"HTTP/1.1 202")
    await until(lambda: ran(daemon, "half-1") == [TaskState.DONE])


async def test_connection_cap_holds_new_connections_until_one_closes(
    settings: Settings,
) -> None:
    """At max_connections, a new client waits in the backlog until a slot frees."""
    capped = replace(settings, max_connections=2, read_timeout=30.0)
    answers: list[int] = []

    async def third_client(port: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/health")
            answers.append(answer.status_code)

    async with serving(capped) as (_, port), trio.open_nursery() as nursery:
        holders = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        # Both holders are accepted before the third connection: the kernel's
        # accept queue is first in, first out.
        await trio.sleep(0.2)
        nursery.start_soon(third_client, port)
        await trio.sleep(0.5)
        waited = list(answers)

        await holders[0].aclose()
        freed = trio.current_time()
        await until(lambda: bool(answers), limit_s=3)
        served_after = trio.current_time() - freed
        await holders[1].aclose()

    assert waited == []
    assert answers == [200]
    assert served_after < 1.0


async def test_keep_alive_connection_closed_when_idle(
    settings: Settings, log_sink: io.StringIO
) -> None:
    """After an answer, an idle keep-alive connection closes after its timeout.

    That is no slow client: no read timeout is logged.
    """
    quick = replace(settings, keep_alive_timeout=0.5)
    async with (
        serving(quick) as (_, port),
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(stream)
        started = trio.current_time()
        with trio.fail_after(5):
            rest = await read_until_closed(stream)
        idle = trio.current_time() - started

    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""
    assert 0.4 <= idle < 3
    assert "http.read_timeout" not in log_sink.getvalue()


async def test_idle_keep_alive_connection_outlives_the_read_timeout(
    server: tuple[Daemon, int], log_sink: io.StringIO
) -> None:
    """Idle after an answer, a connection is held to keep_alive_timeout (30 s).

    Not to the read timeout of the request it answered (1 s here): hypercorn
    reads while the app answers, and that read must not keep the request's
    deadline.
    """
    _, port = server
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(stream)
        await trio.sleep(READ_TIMEOUT_S * 1.5)
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            second = await read_response(stream)

    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")
    assert "http.read_timeout" not in log_sink.getvalue()


async def test_idle_keep_alive_connection_closed_at_shutdown(
    settings: Settings,
) -> None:
    """At shutdown an idle keep-alive connection closes at once.

    Not after its 30 s keep-alive, nor after the read timeout (1 s here) or
    the 3 s grace that requests in flight get.
    """
    async with (
        serving(settings) as (daemon, port),
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(stream)
        started = trio.current_time()
        daemon.request_stop("test over")
        with trio.fail_after(5):
            rest = await read_until_closed(stream)
        closed_after = trio.current_time() - started

    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""
    assert closed_after < 0.5


async def test_headers_over_limit_get_431(settings: Settings) -> None:
    """Request headers beyond max_header_bytes are refused, and no task is made."""
    small = replace(settings, max_header_bytes=2048)
    async with serving(small) as (daemon, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.post(
                "/webhook", content=ALERT, headers={"X-Padding": "p" * 4096}
            )
            fine = await client.post(
                "/webhook", content=ALERT, headers={"X-Padding": "p" * 512}
            )
        submitted = daemon.scheduler.stats.submitted

    assert answer.status_code == 431
    assert fine.status_code == 202
    assert submitted == 4 + 1  # the periodic jobs, then the one accepted alert


@pytest.mark.parametrize(
    "head",
    [
        # Declared too large: refused before the body is read.
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
        # Chunked, no Content-Length: refused once the running total passes.
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_body_over_limit_is_413_over_the_wire(
    server: tuple[Daemon, int], head: bytes
) -> None:
    """64 KiB + 1 is refused with 413 whether the length is declared or not."""
    daemon, port = server
    chunked = b"chunked" in head
    start = b'{"action":"buy","symbol":"MNQ","quantity":1,"pad":"'
    # With a declared length the answer comes before any body is sent.
    payload = start + b"x" * (65537 - len(start)) if chunked else b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head)
        try:
            for start in range(0, len(payload), 8192):
                piece = payload[start : start + 8192]
                await stream.send_all(
                    b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                )
            if chunked:
                await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            pass  # the server may answer and close before the body is all sent
        with trio.fail_after(5):
            answer = await read_response(stream)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b"65536 byte limit" in answer
    assert daemon.scheduler.stats.submitted == 4  # the periodic jobs only
