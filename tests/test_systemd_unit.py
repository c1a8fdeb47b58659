"""The systemd unit and the example settings in systemd/.

systemd-analyze comes with Debian's and Ubuntu's ``systemd`` package; the
checks that need it are skipped, with that reason, where it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "trading-daemon.service"
ENV_EXAMPLE = REPO / "systemd" / "trading-daemon.env.example"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu package: systemd)",
)

# The daemon's drain default plus hypercorn's graceful timeout: the unit must
# give at least this long between SIGTERM and SIGKILL.
DRAIN_TIMEOUT_S = 20
HYPERCORN_GRACEFUL_S = 3

SECRETS = (
    "PROJECT_X_API_KEY",
    "TRADING_WEBHOOK_SECRET",
    "TRADING_WEBHOOK_TOKEN",
    "TRADING_WEBHOOK_SIGNING_SECRETS",
    "TRADING_ADMIN_TOKEN",
)
SETTINGS = (
    "WEBHOOK_HOST",
    "WEBHOOK_PORT",
    "WEBHOOK_BACKLOG",
    "TRADING_BROKER",
    "TRADING_STATE_DIR",
    "TRADING_WORKERS",
    "TRADING_MAX_CONCURRENT",
    "TRADING_MAX_QUEUE",
    "TRADING_MAX_RETRIES",
    "TRADING_RETRY_BASE_DELAY",
    "TRADING_DRAIN_TIMEOUT",
    "TRADING_LOG_LEVEL",
    "PROJECT_X_USERNAME",
    "PROJECT_X_BASE_URL",
    "PROJECT_X_ACCOUNT",
    "WEBHOOK_MAX_CONNECTIONS",
    "WEBHOOK_READ_TIMEOUT",
    "WEBHOOK_KEEP_ALIVE_TIMEOUT",
    "TRADING_ALLOWED_SOURCES",
    "TRADING_TRUSTED_PROXIES",
    "TRADING_RATE_LIMIT",
    "TRADING_STATUS_PUBLIC",
    *SECRETS,
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Map section -> key -> every value assigned, in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line in the unit: {raw!r}"
        sections[section][key.strip()].append(value.strip())

    return sections


def seconds(span: str) -> float:
    """Parse the systemd time spans this unit uses: '45', '45s', '1min 30s'."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"

    return sum(float(number) * units[unit] for number, unit in parts)


def env_assignments(text: str) -> dict[str, str]:
    """The NAME=value lines of an environment file that systemd would apply."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not a NAME=value line in the env file: {line!r}"
            values[name] = value

    return values


def verifiable_copy(tmp_path: Path, extra: str = "") -> Path:
    """A copy of the unit whose ExecStart names a binary that exists here.

    `systemd-analyze verify` checks that ExecStart is executable; the real
    path (/opt/trading-daemon/venv/bin/...) only exists on an installed host.
    """
    true = shutil.which("true")
    assert true is not None
    text = re.sub(
        r"^ExecStart=\S+", f"ExecStart={true}", UNIT.read_text(), flags=re.MULTILINE
    )
    assert f"ExecStart={true} serve" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text + extra)

    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
    )


@needs_systemd_analyze
def test_unit_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single message."""
    result = analyze("verify", "--man=no", str(verifiable_copy(tmp_path)))

    # verify exits 0 even for lines it ignores ("Invalid syntax, ignoring"),
    # so any output at all counts as a failure.
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@needs_systemd_analyze
def test_unit_verify_reports_a_bad_line(tmp_path: Path) -> None:
    """The verify check above can fail: a bogus key is reported."""
    bad = verifiable_copy(tmp_path, extra="\n[Service]\nNoSuchSetting=yes\n")

    result = analyze("verify", "--man=no", str(bad))

    assert "NoSuchSetting" in result.stdout + result.stderr


@needs_systemd_analyze
def test_unit_security_exposure_at_most_2() -> None:
    """The offline security review rates the unit 2.0 ("OK") or better."""
    result = analyze("security", "--offline=true", str(UNIT))
    match = re.search(
        r"Overall exposure level for trading-daemon\.service:\s*(\d+(?:\.\d+)?)",
        result.stdout,
    )
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))

    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0, result.stdout


def test_unit_lifecycle_settings() -> None:
    """The unit is Type=notify with a watchdog and a stop timeout above the drain."""
    service = parse_unit(UNIT.read_text())["Service"]

    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == ["/opt/trading-daemon/venv/bin/trading-daemon serve"]
    assert seconds(service["WatchdogSec"][-1]) == 30
    assert service["Restart"] == ["on-failure"]
    assert seconds(service["TimeoutStopSec"][-1]) > (
        DRAIN_TIMEOUT_S + HYPERCORN_GRACEFUL_S
    )


def test_unit_stop_timeout_covers_example_drain() -> None:
    """The example env file's drain timeout plus hypercorn's 3 s fits the unit."""
    service = parse_unit(UNIT.read_text())["Service"]
    drain = float(env_assignments(ENV_EXAMPLE.read_text())["TRADING_DRAIN_TIMEOUT"])

    assert drain + HYPERCORN_GRACEFUL_S < seconds(service["TimeoutStopSec"][-1])


def test_unit_state_and_credentials() -> None:
    """State goes to StateDirectory; each secret is an optional credential."""
    service = parse_unit(UNIT.read_text())["Service"]
    loaded = dict(v.split(":", 1) for v in service["LoadCredential"])
    defaults = dict(v.split(":", 1) for v in service["SetCredential"])

    assert service["DynamicUser"] == ["yes"]
    assert service["StateDirectory"] == ["trading-daemon"]
    assert service["EnvironmentFile"] == ["-/etc/trading-daemon/trading-daemon.env"]
    for name in SECRETS:
        assert loaded[name] == f"/etc/trading-daemon/credentials/{name}"
        # The SetCredential= fallback keeps a missing file from failing the
        # start; it must not carry a value that could pass as a secret.
        assert defaults[name].strip() in ("", r"\n")


def test_unit_allows_what_the_daemon_needs() -> None:
    """The sandbox still allows IPv4/IPv6 sockets, the notify socket and MDWE."""
    service = parse_unit(UNIT.read_text())["Service"]
    families = " ".join(service["RestrictAddressFamilies"]).split()

    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert service["MemoryDenyWriteExecute"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert "ReadWritePaths" not in service


def test_env_example_lists_every_setting() -> None:
    """Every documented variable appears; secrets are empty; no state dir override."""
    text = ENV_EXAMPLE.read_text()
    active = env_assignments(text)
    mentioned = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))

    assert set(SETTINGS) <= mentioned
    for name in SECRETS:
        assert active[name] == ""
    # Set here, it would point the daemon away from $STATE_DIRECTORY, the only
    # writable place under the unit's sandbox.
    assert "TRADING_STATE_DIR" not in active
    assert active["WEBHOOK_HOST"] == "127.0.0.1"
    assert active["WEBHOOK_PORT"] == "8080"
    assert active["TRADING_BROKER"] == "paper"
