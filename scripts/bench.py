"""Benchmarks of the daemon on this machine; prints a table, optionally JSON.

Every scenario starts its own daemon on 127.0.0.1 (paper broker, a fresh state
folder, durable journal on) pinned to one core, with the load generator pinned
to the other, and sends a bounded amount of traffic.

Scenarios (pick with --only, comma-separated):
  ack16   POST /webhook closed loop at 16 connections with wrk: ack latency
          p50/p99 with durability on (issue #3's figure)

Usage: scripts/bench [--only ack16] [--json FILE] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
        self._wait_ready()

    def _wait_ready(self, limit_s: float = 30.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("daemon not ready")

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


SCENARIOS: dict[str, Callable[[Path, float], Result]] = {
    "ack16": scenario_ack16,
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
    args = parser.parse_args()

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {list(SCENARIOS)}")

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"td-bench-{name}-") as tmp:
            results.append(SCENARIOS[name](Path(tmp), args.duration))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0 if all(r.met is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
