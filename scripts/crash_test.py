"""Crash test: acknowledged alerts survive SIGKILL and execute exactly once.

Each round starts the daemon on a shared state directory, sends a few hundred
alerts concurrently, kills the daemon with SIGKILL at a random moment, restarts
it, waits until the journal holds no unfinished task, and stops it gracefully.
Then it reads the journal: every alert that got a 202 must have exactly one
paper order, and no alert (acknowledged or not) may have more than one.

Usage: scripts/crash_test [--rounds 20] [--alerts 300] [--seed N]
Exit status 1 on any lost or duplicated alert. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

SYMBOLS = ("MNQ1!", "MES1!", "M2K1!", "MGC1!")
READY = re.compile(r"daemon\.ready .*port=(\d+)")


@dataclass
class RoundResult:
    sent: int = 0
    acked: int = 0
    executed: int = 0
    lost: int = 0
    duplicated: int = 0
    unacked_executed: int = 0
    book_mismatch: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.book_mismatch)


class Daemon:
    """One daemon process on loopback, with its stderr drained to a file."""

    def __init__(self, state_dir: Path, log: Path, fill_delay: float) -> None:
        seen_before = len(READY.findall(log.read_text())) if log.exists() else 0
        env = {
            **os.environ,
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": "0",
            "TRADING_STATE_DIR": str(state_dir),
            "TRADING_PAPER_FILL_DELAY": str(fill_delay),
            "TRADING_MAX_QUEUE": "5000",
            "TRADING_LOG_LEVEL": "INFO",
            # All traffic comes from 127.0.0.1: the per-source limit would
            # refuse it.
            "TRADING_RATE_LIMIT": "0",
            # Every alert adds one contract to its symbol's position, so each
            # acknowledged alert is exactly one order, whatever the hour.
            "TRADING_PYRAMIDING": "true",
            "TRADING_MAX_PYRAMID": "1000000",
            "TRADING_TRADING_HOURS": "always",
        }
        env.pop("JOURNAL_STREAM", None)
        self.log = log
        self._log_file = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trading_daemon", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.port = self._wait_ready(log, seen_before)

    def _wait_ready(self, log: Path, seen_before: int, limit_s: float = 30.0) -> int:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}; see {log}")
            # The log is shared by every start; the newest ready line is ours.
            found = READY.findall(log.read_text())
            if len(found) > seen_before:
                return int(found[-1])
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready within {limit_s} s; see {log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log_file.close()
        return code


async def send_alerts(url: str, ids: list[str], acked: set[str]) -> None:
    """POST one alert per id concurrently; note the ids that got a 202."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5) as client:

        async def one(index: int, alert_id: str) -> None:
            # Longs on half the symbols, shorts on the others: an alert only
            # ever adds (a reversal would be two orders, see intent.py).
            side = "buy" if index % len(SYMBOLS) < len(SYMBOLS) // 2 else "sell"
            body = json.dumps(
                {
                    "action": side,
                    "symbol": SYMBOLS[index % len(SYMBOLS)],
                    "quantity": "1",
                    "id": alert_id,
                }
            )
            try:
                response = await client.post(
                    "/webhook", content=body, headers={"Content-Type": "text/plain"}
                )
            except httpx.HTTPError:
                return
            if response.status_code == 202:
                acked.add(alert_id)

        async with trio.open_nursery() as nursery:
            for index, alert_id in enumerate(ids):
                nursery.start_soon(one, index, alert_id)


async def kill_during_sends(
    daemon: Daemon, ids: list[str], acked: set[str], rng: random.Random
) -> None:
    # Counted from the first acknowledgement, so the kill lands mid-burst
    # rather than before the daemon has answered anything.
    kill_after = rng.uniform(0.0, 0.8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_alerts, daemon.url, ids, acked)
        with trio.move_on_after(10):
            while not acked:  # noqa: ASYNC110 - polled; the set is filled by HTTP
                await trio.sleep(0.002)
        await trio.sleep(kill_after)
        daemon.kill()


def wait_drained(url: str, limit_s: float = 120.0) -> None:
    """Poll /status until the journal holds no unfinished task."""
    deadline = time.monotonic() + limit_s
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            status = client.get("/status").json()
            queue = status["task_queue_stats"]
            if (
                status["journal"]["oldest_unfinished_age_s"] is None
                and queue["queue_size"] == 0
                and queue["active_tasks"] == 0
            ):
                return
            time.sleep(0.1)
    raise RuntimeError(f"queue not drained within {limit_s} s")


def verify(state_dir: Path, ids: list[str], acked: set[str]) -> RoundResult:
    conn = sqlite3.connect(state_dir / "journal.sqlite3")
    try:
        tasks = conn.execute("SELECT id, payload FROM tasks").fetchall()
        orders = [row[0] for row in conn.execute("SELECT body FROM paper_orders")]
        books = dict(conn.execute("SELECT symbol, size FROM paper_books").fetchall())
    finally:
        conn.close()

    alert_of_task: dict[str, str] = {}
    for task_id, payload in tasks:
        alert_id = json.loads(payload).get("signal", {}).get("alert_id")
        if alert_id is not None:
            alert_of_task[task_id] = alert_id

    per_alert: Counter[str] = Counter()
    net: Counter[str] = Counter()
    for body in orders:
        order: dict[str, Any] = json.loads(body)
        net[order["symbol"]] += order["size"] * (1 if order["side"] == "buy" else -1)
        # td-<task>-<step>
        task_id = order["client_id"].removeprefix("td-").split("-")[0]
        if task_id in alert_of_task:
            per_alert[alert_of_task[task_id]] += 1

    result = RoundResult(sent=len(ids), acked=len(acked))
    for alert_id in ids:
        count = per_alert[alert_id]
        if alert_id in acked:
            result.executed += min(count, 1)
            result.lost += count == 0
        else:
            result.unacked_executed += count == 1
        result.duplicated += count > 1
    for symbol in set(net) | set(books):
        book = books.get(symbol, 0)
        if net[symbol] != book:
            result.book_mismatch.append(f"{symbol}: orders {net[symbol]}, book {book}")
    return result


def run(rounds: int, alerts: int, seed: int, work: Path) -> list[RoundResult]:
    rng = random.Random(seed)
    state_dir = work / "state"
    log = work / "daemon.log"
    results = []
    for number in range(1, rounds + 1):
        ids = [f"r{number}-{index}" for index in range(alerts)]
        acked: set[str] = set()
        fill_delay = rng.choice((0.0, 0.005, 0.02))

        daemon = Daemon(state_dir, log, fill_delay)
        trio.run(kill_during_sends, daemon, ids, acked, rng)
        daemon = Daemon(state_dir, log, 0.0)
        wait_drained(daemon.url)
        code = daemon.stop()
        if code != 0:
            raise RuntimeError(f"round {number}: graceful stop exited {code}")

        result = verify(state_dir, ids, acked)
        results.append(result)
        print(
            f"round {number:2d}: sent {result.sent} acked {result.acked} "
            f"executed {result.executed} lost {result.lost} "
            f"duplicated {result.duplicated} "
            f"(unacked but executed once: {result.unacked_executed})"
            + (
                f" BOOK MISMATCH {result.book_mismatch}" if result.book_mismatch else ""
            ),
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the state folder")
    args = parser.parse_args()

    print(f"crash test: {args.rounds} rounds x {args.alerts} alerts, seed {args.seed}")
    work = Path(tempfile.mkdtemp(prefix="td-crash-"))
    results = run(args.rounds, args.alerts, args.seed, work)
    totals = RoundResult(
        sent=sum(r.sent for r in results),
        acked=sum(r.acked for r in results),
        executed=sum(r.executed for r in results),
        lost=sum(r.lost for r in results),
        duplicated=sum(r.duplicated for r in results),
        unacked_executed=sum(r.unacked_executed for r in results),
    )
    print(
        f"total: acked {totals.acked}, executed {totals.executed}, "
        f"lost {totals.lost}, duplicated {totals.duplicated}"
    )
    if args.keep:
        print(f"state kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
