"""HTTP routes, through quart's in-memory test client over a running daemon core.

The journal commits on a worker thread, which the autojump clock would count as
idle time, so these tests use the real clock and poll for the outcome.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support import until
from venues import core

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.http_app import create_app
from trading_daemon.priority import Priority
from trading_daemon.tasks import Task

TV_ALERT = b'{"action":"buy","symbol":"MNQ1!","quantity":"1"}'


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    settings = Settings(
        state_dir=tmp_path,
        paper_prices={"MNQ": 21000.0},
        max_queue=5,
        trading_hours="always",
    )
    async with core(Daemon(settings)) as daemon:
        yield daemon


async def post(daemon: Daemon, body: bytes, content_type: str = "text/plain") -> tuple:
    client = create_app(daemon).test_client()
    response = await client.post(
        "/webhook", data=body, headers={"Content-Type": content_type}
    )
    return response.status_code, await response.get_json(), response.headers


async def test_webhook_text_plain_tradingview_alert_fills(daemon: Daemon) -> None:
    """The TradingView form sent as text/plain is acknowledged 202 and then filled."""
    status, body, _ = await post(daemon, TV_ALERT)
    assert status == 202
    assert body["status"] == "queued"

    await until(lambda: daemon.scheduler.stats.completed == 1)
    client = create_app(daemon).test_client()
    state = await (await client.get("/status")).get_json()

    assert state["positions"] == [
        {
            "account": "paper",
            "symbol": "MNQ",
            "size": 1,
            "side": "long",
            "average_price": 21000.0,
            "realized_pnl": 0.0,
        }
    ]
    finished = {t["id"]: t for t in state["recent_tasks"]}
    assert finished[body["id"]]["state"] == "done"
    assert "buy 1 MNQ filled @ 21000" in finished[body["id"]]["result"]


async def test_webhook_json_content_type_is_accepted(daemon: Daemon) -> None:
    """application/json bodies are parsed the same way."""
    status, body, _ = await post(daemon, TV_ALERT, "application/json")
    assert (status, body["status"]) == (202, "queued")


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (b'{"action":"buy","symbol":"MNQ1!","quantity":"0.5"}', "quantity", "'0.5'"),
        (b'{"action":"buy","symbol":"MNQ1!","quantity":0}', "quantity", "0"),
        (b'{"action":"hold","symbol":"MNQ1!","quantity":1}', "action", "'hold'"),
        (b'{"action":"buy","quantity":1}', "symbol", "symbol is required"),
        (b"{{strategy.order.action}}", None, "not valid JSON"),
        (b"", None, "empty"),
    ],
)
async def test_webhook_bad_alert_is_400_and_creates_no_task(
    daemon: Daemon, raw: bytes, field: str | None, fragment: str
) -> None:
    """Bad input gets 400 with a JSON error naming the field and value, no task."""
    status, body, _ = await post(daemon, raw)

    assert status == 400
    assert body.get("field") == field
    assert fragment in body["error"]
    assert daemon.scheduler.stats.submitted == 0


async def test_webhook_body_over_limit_is_413(daemon: Daemon) -> None:
    """A body over 64 KiB is refused with 413 and a JSON error, and makes no task."""
    big = b'{"action":"buy","symbol":"MNQ","quantity":1,"pad":"' + b"x" * 70_000 + b'"}'
    status, body, _ = await post(daemon, big)

    assert status == 413
    assert "65536 byte limit" in body["error"]
    assert daemon.scheduler.stats.submitted == 0


async def test_webhook_full_queue_is_503_with_retry_after(daemon: Daemon) -> None:
    """With max_queue tasks waiting, the webhook answers 503 and Retry-After."""
    release = trio.Event()

    async def block(task: Task) -> str:
        await release.wait()
        return "ok"

    daemon.scheduler.register("block", block)
    for _ in range(20):
        daemon.scheduler.submit(Task("block", Priority.CRITICAL), internal=True)
    await until(lambda: daemon.scheduler.active == 20)
    for _ in range(5):
        daemon.scheduler.submit(Task("block", Priority.LOW))

    status, body, headers = await post(daemon, TV_ALERT)
    release.set()

    assert status == 503
    assert headers["Retry-After"] == "5"
    assert "queue is full" in body["error"]


async def test_health_reports_uptime_then_503_when_stopping(daemon: Daemon) -> None:
    """/health is 200 healthy while running and 503 once a stop is requested."""
    client = create_app(daemon).test_client()
    ok = await client.get("/health")
    body = await ok.get_json()
    assert ok.status_code == 200
    assert body["status"] == "healthy"
    assert body["uptime_s"] >= 0

    daemon.request_stop("test")
    stopping = await client.get("/health")
    assert stopping.status_code == 503
    assert (await stopping.get_json())["status"] == "stopping"


async def test_metrics_text_parses_and_counts_the_alert(daemon: Daemon) -> None:
    """/metrics is Prometheus text that parses and counts submitted tasks."""
    await post(daemon, TV_ALERT)
    await until(lambda: daemon.scheduler.stats.completed == 1)
    client = create_app(daemon).test_client()
    response = await client.get("/metrics")
    text = (await response.get_data()).decode()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    submitted = families["trading_daemon_tasks_submitted"].samples[0].value
    fills = families["trading_daemon_fills"].samples
    assert response.headers["Content-Type"].startswith("text/plain")
    assert submitted == 1
    assert [(s.labels["symbol"], s.value) for s in fills if s.name.endswith("_total")]
    assert "trading_daemon_webhook_ack_seconds" in families


async def test_metrics_json_has_task_queue_object(daemon: Daemon) -> None:
    """/metrics?format=json carries the task_queue object DESIGN.md names."""
    await post(daemon, TV_ALERT)
    await until(lambda: daemon.scheduler.stats.completed == 1)
    client = create_app(daemon).test_client()
    body = await (await client.get("/metrics?format=json")).get_json()

    queue = body["task_queue"]
    assert set(queue) >= {
        "queue_size",
        "active_tasks",
        "max_concurrent",
        "workers",
        "tasks_submitted",
        "tasks_completed",
        "tasks_failed",
        "tasks_timeout",
        "tasks_cancelled",
        "success_rate",
    }
    assert queue["tasks_completed"] == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/webhook", 405), ("GET", "/nope", 404), ("POST", "/status", 405)],
)
async def test_unknown_routes_answer_json_errors(
    daemon: Daemon, method: str, path: str, status: int
) -> None:
    """Wrong paths and methods get their 4xx with a JSON error body."""
    client = create_app(daemon).test_client()
    response = await client.open(path, method=method)
    body = json.loads(await response.get_data())

    assert response.status_code == status
    assert body["error"]
