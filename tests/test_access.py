"""Access lines and the shutdown's Connection: close, over a real loopback socket.

POST /webhook bypasses the AccessLog wrapper (its cost is on every alert), so
the webhook route writes the lines and the header itself; these tests hold both
paths to the same behaviour.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import trio
from support import serving

from trading_daemon.config import Settings

ALERT = b'{"action":"buy","symbol":"MNQ1!","quantity":"1","id":"access-1"}'


def settings(tmp_path: Path) -> Settings:
    return Settings(webhook_port=0, state_dir=tmp_path, rate_limit=0)


def access_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "http.access" in line]


async def test_accepted_alert_has_no_access_line_other_answers_have_one(
    tmp_path: Path, log_sink: io.StringIO
) -> None:
    """202: alert.accepted only; 400 on /webhook and GET /health: one line each."""
    async with (
        serving(settings(tmp_path)) as (_, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        accepted = await client.post("/webhook", content=ALERT)
        invalid = await client.post("/webhook", content=b"not json")
        health = await client.get("/health")

    assert (accepted.status_code, invalid.status_code) == (202, 400)
    assert health.status_code == 200
    lines = access_lines(log_sink.getvalue())
    assert len(lines) == 2
    assert "method=POST path=/webhook status=400 client=127.0.0.1" in lines[0]
    assert "method=GET path=/health status=200 client=127.0.0.1" in lines[1]
    assert "alert.accepted" in log_sink.getvalue()


async def test_webhook_answers_connection_close_while_stopping(
    tmp_path: Path,
) -> None:
    """After a stop request, a webhook answer on a kept-alive connection closes it."""
    async with (
        serving(settings(tmp_path)) as (daemon, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        before = await client.post("/webhook", content=ALERT)
        daemon.request_stop("test")
        during = await client.post(
            "/webhook", content=ALERT.replace(b"access-1", b"access-2")
        )

    assert before.status_code == 202
    assert "close" not in before.headers.get("connection", "")
    assert during.headers["connection"] == "close"


async def test_refused_webhook_logged_even_if_client_hangs_up_at_once(
    tmp_path: Path, log_sink: io.StringIO
) -> None:
    """A client that closes as soon as it has its 400 still leaves an access line."""
    bad = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nnot json"
    async with serving(settings(tmp_path)) as (_, port):
        for _ in range(10):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(bad)
                answer = await stream.receive_some(65536)
                assert answer.startswith(b"HTTP/1.1 400")

    lines = access_lines(log_sink.getvalue())
    assert len(lines) == 10
    assert all("path=/webhook status=400" in line for line in lines)
