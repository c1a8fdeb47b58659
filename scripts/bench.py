"""Benchmarks of the daemon on this machine; prints a table, optionally JSON.

Every scenario starts its own daemon on 127.0.0.1 (paper broker, a fresh state
folder, durable journal on) pinned to one core, with the load generator pinned
to the other, and sends a bounded amount of traffic.

Scenarios (pick with --only, comma-separated):
  ack16       POST /webhook closed loop at 16 connections (wrk): ack latency
              p50/p99 with durability on (the journal's figure)
  saturation  POST /webhook at 1 and 64 connections (wrk) against the daemon
              and against the floor (scripts/bench_floor.py: a bare ASGI
              callable on the same hypercorn-trio stack doing the same
              validation and enqueue); goal: daemon/floor >= 0.9 at 64.
              Also, for reference, the floor app on the daemon's own
              connection layer at 64 (floor_own, ratio_own_c64).
              Floor and daemon take turns, three rounds each (--rounds), and
              the figure is the median of each round's ratio: this machine's
              speed drifts by a third from minute to minute, so a floor taken
              once is no reference for a daemon run a minute later
  openloop    200 alerts/s for 10 s on keep-alive connections, latency counted
              from each alert's scheduled send time, after one uncounted
              second at the same rate (a new journal's first commits grow its
              files); goal: p99 <= 10 ms. Also the journal commits of the
              counted window from /metrics, and how many took over 10 ms (a
              stalled disk sync holds every acknowledgement waiting on it)
  burst       1,000 clients open new connections at once and send one alert
              each; goal: all acknowledged within 3 s
  priority    submit-to-start time of a CRITICAL task while every other slot
              runs LOW work and 1,000 LOW tasks wait (200 samples, the real
              scheduler in this process); goal: p99 <= 10 ms
  e2e         alert to order acknowledged by the ProjectX simulator
              (scripts/bench_projectx, 200 alerts at 20/s): p50, p99; daemon,
              simulator and client are not pinned
  memory      daemon RSS idle and with 10,000 tasks queued; goal: idle <= 60
              MiB and at most 40 MiB more with the queue

The daemon runs as in production (paper broker, durable journal, INFO logs,
orders executed as alerts arrive) except for what the load itself needs: logs
go to a file, the per-source rate limit is off (all traffic comes from
127.0.0.1), the task queue limit is raised so no alert is refused with 503, and
the burst's listen backlog is 4096. Python clients run in this process, which
moves itself to the load generator's core for them; the priority scenario runs
the scheduler in this process too.

Usage: scripts/bench [--only a,b] [--json FILE] [--duration S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = "0"
CLIENT_CPU = "1"

# wrk script: unique alert ids (a repeated body would be answered as a duplicate,
# which is a cheaper path than the one being measured), latency percentiles out
# as JSON on the last line.
WRK_POST_UNIQUE = r"""
local counter = 0
local thread_id = 0
function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end
function request()
  counter = counter + 1
  local body = string.format(
    '{"action":"buy","symbol":"MNQ1!","quantity":"1","id":"b-%s-%d-%d"}',
    RUN, tid, counter)
  return wrk.format("POST", "/webhook", {["Content-Type"] = "text/plain"}, body)
end
function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"""


@dataclass
class Result:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    goal: str = ""
    met: bool | None = None


class DaemonProcess:
    """The daemon as a subprocess pinned to SERVER_CPU."""

    def __init__(self, work: Path, **env: str) -> None:
        self.log = work / "daemon.log"
        self.state = work / "state"
        self.port = free_port()
        full_env = {
            **os.environ,
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(self.port),
            "TRADING_STATE_DIR": str(self.state),
            # Production logs one line per lifecycle step; the figure is taken
            # with INFO logging on, as a trader would run it.
            "TRADING_LOG_LEVEL": "INFO",
            # All traffic comes from 127.0.0.1: the per-source limit would
            # refuse it.
            "TRADING_RATE_LIMIT": "0",
            **env,
        }
        full_env.pop("JOURNAL_STREAM", None)
        command = [sys.executable, "-m", "trading_daemon", "serve"]
        if shutil.which("taskset"):
            command = ["taskset", "-c", SERVER_CPU, *command]
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            command, env=full_env, stdout=subprocess.DEVNULL, stderr=self._log_file
        )
        wait_listening(self.proc, self.port, f"daemon (see {self.log})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


def wait_listening(
    proc: subprocess.Popen[Any], port: int, what: str, limit_s: float = 30.0
) -> None:
    """Return once ``proc`` accepts connections on ``port``; raise if it exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {limit_s:g} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("bench: installing wrk from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        path = shutil.which("wrk")
    if not path:
        raise SystemExit("bench: wrk is required (apt-get install wrk)")
    return path


def run_wrk(url: str, connections: int, duration: float, work: Path) -> dict[str, Any]:
    script = work / "post.lua"
    run_id = str(time.monotonic_ns())
    script.write_text(f'RUN = "{run_id}"\n' + WRK_POST_UNIQUE)
    command = [
        need_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url + "/webhook",
    ]
    if shutil.which("taskset"):
        command = ["taskset", "-c", CLIENT_CPU, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def scenario_ack16(work: Path, duration: float) -> Result:
    daemon = DaemonProcess(work, TRADING_MAX_QUEUE="100000")
    try:
        wrk = run_wrk(daemon.url, 16, duration, work)
    finally:
        daemon.stop()
    return Result(
        "ack16",
        {
            "requests": wrk["requests"],
            "rps": round(wrk["rps"]),
            "p50_ms": wrk["p50_us"] / 1000,
            "p99_ms": wrk["p99_us"] / 1000,
            "max_ms": wrk["max_us"] / 1000,
            "non2xx": wrk["non2xx"],
            "errors": wrk["errors"],
        },
        goal="every request acknowledged (figure only)",
        met=wrk["non2xx"] == 0 and wrk["errors"] == 0,
    )


class FloorProcess:
    """scripts/bench_floor.py as a subprocess pinned to SERVER_CPU."""

    def __init__(self, work: Path, *options: str) -> None:
        self.port = free_port()
        script = str(ROOT / "scripts/bench_floor.py")
        command = [sys.executable, script, str(self.port), *options]
        if shutil.which("taskset"):
            command = ["taskset", "-c", SERVER_CPU, *command]
        self._log = (work / "floor.log").open("w")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=self._log)
        wait_listening(self.proc, self.port, f"floor server (see {work / 'floor.log'})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def scenario_saturation(work: Path, duration: float, rounds: int = 3) -> Result:
    # runs[(server, connections)]: one wrk result per round.
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    servers: list[tuple[str, Callable[[Path], Any], tuple[int, ...]]] = [
        ("floor", FloorProcess, (1, 64)),
        # The floor app on the daemon's own connection layer: what is left of
        # the gap is the daemon's webhook work (see bench_floor.py).
        ("floor_own", lambda f: FloorProcess(f, "--own-connections"), (64,)),
        ("daemon", _bench_daemon, (1, 64)),
    ]
    for index in range(rounds):
        for name, start, connection_counts in servers:
            # A fresh state folder each round: a journal left by the last one
            # would be recovered and executed during this one.
            folder = work / f"round{index}-{name}"
            folder.mkdir()
            server = start(folder)
            try:
                for connections in connection_counts:
                    wrk = run_wrk(server.url, connections, duration, folder)
                    runs.setdefault((name, connections), []).append(wrk)
            finally:
                server.stop()

    figures: dict[str, Any] = {"rounds": rounds}
    for connections in (1, 64):
        floor = runs[("floor", connections)]
        daemon = runs[("daemon", connections)]
        ratios = [d["rps"] / f["rps"] for f, d in zip(floor, daemon, strict=True)]
        for name, results in (("floor", floor), ("daemon", daemon)):
            figures[f"{name}_c{connections}_rps"] = round(
                statistics.median(r["rps"] for r in results)
            )
            figures[f"{name}_c{connections}_p99_ms"] = (
                statistics.median(r["p99_us"] for r in results) / 1000
            )
            failed = sum(r["non2xx"] + r["errors"] for r in results)
            if failed:
                figures[f"{name}_c{connections}_failed"] = failed
        figures[f"ratio_c{connections}"] = round(statistics.median(ratios), 3)
        figures[f"ratio_c{connections}_rounds"] = "/".join(f"{r:.2f}" for r in ratios)
    own = runs[("floor_own", 64)]
    own_ratios = [
        d["rps"] / f["rps"] for f, d in zip(own, runs[("daemon", 64)], strict=True)
    ]
    figures["floor_own_c64_rps"] = round(statistics.median(r["rps"] for r in own))
    figures["ratio_own_c64"] = round(statistics.median(own_ratios), 3)
    figures["ratio_own_c64_rounds"] = "/".join(f"{r:.2f}" for r in own_ratios)
    failed = any(k.endswith("_failed") for k in figures)
    return Result(
        "saturation",
        figures,
        goal="daemon/floor >= 0.9 at 64 connections (median of the rounds)",
        met=figures["ratio_c64"] >= 0.9 and not failed,
    )


def _bench_daemon(work: Path, **env: str) -> DaemonProcess:
    return DaemonProcess(work, TRADING_MAX_QUEUE="1000000", **env)


def _alert(index: int, tag: str) -> bytes:
    return json.dumps(
        {"action": "buy", "symbol": "MNQ1!", "quantity": "1", "id": f"{tag}-{index}"}
    ).encode()


def scenario_openloop(work: Path, duration: float) -> Result:
    import httpx
    import trio

    rate, seconds, warmup_s = 200, 10.0, 1.0
    daemon = _bench_daemon(work)
    latencies: list[float] = []
    failures = 0
    commits: dict[str, float] = {}

    async def run() -> None:
        nonlocal failures
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=daemon.url, limits=limits, timeout=10
        ) as client:
            # Warm the pool so connection set-up is not in the figures.
            for _ in range(8):
                await client.get("/health")

            async def one(index: int, start: float, counted: bool) -> None:
                nonlocal failures
                due = start + index / rate
                await trio.sleep_until(due)
                response = await client.post(
                    "/webhook", content=_alert(index, f"ol{start}")
                )
                # From the scheduled time, so a stalled server is not hidden
                # by the client sending late (coordinated omission).
                if counted:
                    latencies.append(trio.current_time() - due)
                    if response.status_code != 202:
                        failures += 1

            async def schedule(length_s: float, counted: bool) -> None:
                start = trio.current_time() + 0.1
                async with trio.open_nursery() as nursery:
                    for index in range(int(rate * length_s)):
                        nursery.start_soon(one, index, start, counted)

            await schedule(warmup_s, counted=False)
            before = await _commit_counts(client)
            await schedule(seconds, counted=True)
            after = await _commit_counts(client)
            commits.update({k: after[k] - before[k] for k in after})

    try:
        with client_core():
            trio.run(run)
    finally:
        daemon.stop()
    p50, p99, top = _percentiles(latencies)
    return Result(
        "openloop",
        {
            "rate": rate,
            "sent": len(latencies),
            "failed": failures,
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": top * 1000,
            "commits": round(commits["count"]),
            "commits_over_10ms": round(commits["count"] - commits["le_10ms"]),
        },
        goal="p99 <= 10 ms at 200 alerts/s",
        met=failures == 0 and p99 <= 0.010,
    )


async def _commit_counts(client: Any) -> dict[str, float]:
    """Journal commits so far, and how many took 10 ms or less (from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    counts = {"count": 0.0, "le_10ms": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "trading_daemon_journal_commit_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                counts["count"] = sample.value
            elif sample.name.endswith("_bucket") and sample.labels["le"] == "0.01":
                counts["le_10ms"] = sample.value
    return counts


@contextmanager
def client_core() -> Iterator[None]:
    """Run this process (the Python load generators) on CLIENT_CPU meanwhile.

    The daemon is pinned to SERVER_CPU by taskset; a client left free to run
    on that core would take its time from the server it measures.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    if not ordered:
        return (math.nan, math.nan, math.nan)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return at(0.5), at(0.99), ordered[-1]


def scenario_burst(work: Path, duration: float) -> Result:
    import trio

    clients = 1000
    daemon = _bench_daemon(work, WEBHOOK_BACKLOG="4096")
    times: list[float] = []
    statuses: list[int] = []

    async def one(index: int, start: float) -> None:
        body = _alert(index, f"burst{start}")
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n"
        ).encode()
        try:
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
                async with stream:
                    await stream.send_all(head + body)
                    data = b""
                    while b"\r\n" not in data:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
            statuses.append(int(data.split(b" ", 2)[1]))
        except (OSError, trio.TooSlowError, ValueError, IndexError):
            statuses.append(0)
        times.append(trio.current_time() - start)

    async def run() -> None:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(one, index, start)

    try:
        with client_core():
            trio.run(run)
    finally:
        daemon.stop()
    acked_in_time = sum(
        1 for t, s in zip(times, statuses, strict=True) if s == 202 and t <= 3.0
    )
    p50, p99, top = _percentiles(times)
    share = acked_in_time / clients
    return Result(
        "burst",
        {
            "clients": clients,
            "acked_within_3s": acked_in_time,
            "share": round(share, 4),
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": top * 1000,
        },
        goal="100% acknowledged within 3 s",
        met=share == 1.0,
    )


def scenario_priority(work: Path, duration: float) -> Result:
    import trio

    sys.path.insert(0, str(ROOT))
    from trading_daemon.priority import Priority
    from trading_daemon.scheduler import Scheduler, SchedulerConfig
    from trading_daemon.tasks import Task

    waits: list[float] = []

    async def run() -> None:
        scheduler = Scheduler(SchedulerConfig(max_queue=5000))
        release = trio.Event()
        started = trio.Event()

        async def low(task: Task) -> str:
            await release.wait()
            return "ok"

        async def critical(task: Task) -> str:
            waits.append(trio.current_time() - task.submitted_at)
            started.set()
            return "ok"

        scheduler.register("low", low)
        scheduler.register("critical", critical)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            for _ in range(scheduler.config.max_concurrent + 1000):
                scheduler.submit(Task("low", Priority.LOW))
            await trio.sleep(0.2)
            for _ in range(200):
                started = trio.Event()
                scheduler.submit(Task("critical", Priority.CRITICAL), internal=True)
                await started.wait()
                await trio.sleep(0.001)
            release.set()
            await scheduler.shutdown(0)

    from trading_daemon.logs import setup_logging

    setup_logging("WARNING", sink=open(os.devnull, "w"))  # noqa: SIM115
    trio.run(run)
    p50, p99, top = _percentiles(waits)
    return Result(
        "priority",
        {
            "samples": len(waits),
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": top * 1000,
        },
        goal="CRITICAL start p99 <= 10 ms under a LOW flood",
        met=p99 <= 0.010,
    )


def scenario_e2e(work: Path, duration: float) -> Result:
    command = [
        sys.executable,
        str(ROOT / "scripts/bench_projectx"),
        "--count",
        "200",
        "--rate",
        "20",
        "--json",
        str(work / "e2e.json"),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    data = json.loads((work / "e2e.json").read_text())
    return Result(
        "e2e",
        {k: data[k] for k in ("alerts", "p50_ms", "p99_ms", "max_ms") if k in data},
        goal="figure only",
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def scenario_memory(work: Path, duration: float) -> Result:
    import httpx
    import trio

    queued = 10_000
    daemon = _bench_daemon(
        work,
        TRADING_MAX_CONCURRENT="1",
        TRADING_WORKERS="1",
        TRADING_PAPER_FILL_DELAY="3600",
        TRADING_CRITICAL_RESERVE="0",
        TRADING_DRAIN_TIMEOUT="0",
    )
    try:
        time.sleep(1.0)
        idle = rss_mib(daemon.proc.pid)

        async def fill() -> None:
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(
                base_url=daemon.url, limits=limits, timeout=30
            ) as client:
                sem = trio.Semaphore(16)

                async def one(index: int) -> None:
                    async with sem:
                        answer = await client.post(
                            "/webhook", content=_alert(index, "m")
                        )
                        assert answer.status_code == 202, answer.text

                async with trio.open_nursery() as nursery:
                    for index in range(queued):
                        nursery.start_soon(one, index)

        with client_core():
            trio.run(fill)
        time.sleep(1.0)
        loaded = rss_mib(daemon.proc.pid)
    finally:
        daemon.stop()
    extra = loaded - idle
    return Result(
        "memory",
        {"idle_mib": idle, "queued": queued, "loaded_mib": loaded, "extra_mib": extra},
        goal="idle <= 60 MiB, +<= 40 MiB with 10,000 queued",
        met=idle <= 60 and extra <= 40,
    )


SCENARIOS: dict[str, Callable[[Path, float], Result]] = {
    "ack16": scenario_ack16,
    "saturation": scenario_saturation,
    "openloop": scenario_openloop,
    "burst": scenario_burst,
    "priority": scenario_priority,
    "e2e": scenario_e2e,
    "memory": scenario_memory,
}


def print_table(results: list[Result]) -> None:
    print(f"{'scenario':<10} {'met':<5} figures")
    for r in results:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        figures = "  ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.figures.items()
        )
        print(f"{r.scenario:<10} {met:<5} {figures}")
        if r.goal:
            print(f"{'':<10} {'':<5} goal: {r.goal}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturation: floor/daemon turns"
    )
    args = parser.parse_args()
    scenarios: dict[str, Callable[[Path, float], Result]] = {
        **SCENARIOS,
        "saturation": partial(scenario_saturation, rounds=args.rounds),
    }

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {list(SCENARIOS)}")

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"td-bench-{name}-") as tmp:
            results.append(scenarios[name](Path(tmp), args.duration))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0 if all(r.met is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
