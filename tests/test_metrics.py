"""Prometheus exposition: parses, and carries the conventional names and labels."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families
from support import until

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.http_app import create_app


async def test_metrics_exposition_has_the_documented_families(tmp_path: Path) -> None:
    """After real work, /metrics parses and holds every family the operator needs."""
    daemon = Daemon(Settings(state_dir=tmp_path, paper_prices={"MES": 6000.0}))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.journal.run)
        await nursery.start(daemon.scheduler.run)
        await daemon.start_brokers()
        client = create_app(daemon).test_client()
        good = json.dumps({"action": "buy", "symbol": "MES1!", "quantity": 2})
        await client.post("/webhook", data=good)
        await client.post("/webhook", data="not json")
        await until(lambda: daemon.scheduler.stats.completed == 1)
        text = (await (await client.get("/metrics")).get_data()).decode()
        await daemon.scheduler.shutdown(0)
        await daemon.scheduler.wait_stopped()
        daemon.journal.close()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }

    assert families["trading_daemon_tasks_submitted"].type == "counter"
    assert samples[("trading_daemon_tasks_submitted_total", ())] == 1
    finished = (
        "trading_daemon_tasks_finished_total",
        (("outcome", "completed"), ("priority", "normal")),
    )
    assert samples[finished] == 1
    assert families["trading_daemon_queue_length"].type == "gauge"
    assert samples[("trading_daemon_queue_length", (("priority", "critical"),))] == 0
    assert families["trading_daemon_active_tasks"].type == "gauge"
    assert samples[("trading_daemon_max_queue", ())] == 1000
    for histogram in (
        "trading_daemon_task_wait_seconds",
        "trading_daemon_task_run_seconds",
    ):
        assert families[histogram].type == "histogram"
        top = (f"{histogram}_bucket", (("le", "300.0"), ("priority", "normal")))
        assert samples[top] == 1
    commits = families["trading_daemon_journal_commit_seconds"]
    assert commits.type == "histogram"
    # The alert's own commit at least, and no more than the journal counted.
    committed = samples[("trading_daemon_journal_commit_seconds_count", ())]
    assert 1 <= committed <= daemon.journal.commits
    ack = families["trading_daemon_webhook_ack_seconds"]
    assert ack.type == "histogram"
    statuses = {s.labels["status"] for s in ack.samples if s.name.endswith("_count")}
    assert statuses == {"202", "400"}
    order = (
        "trading_daemon_orders_total",
        (("broker", "paper"), ("side", "buy"), ("status", "filled")),
    )
    assert samples[order] == 1
    fills = ("trading_daemon_fills_total", (("broker", "paper"), ("symbol", "MES")))
    assert samples[fills] == 2
    assert samples[("trading_daemon_dead_letters", ())] == 0
    assert families["trading_daemon_broker_errors"].type == "counter"
    alerts = ("trading_daemon_alerts_total", (("result", "invalid"),))
    assert samples[alerts] == 1
