"""scripts/install: a dry run changes nothing; a --root install is complete."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install"
UNIT = REPO / "systemd" / "trading-daemon.service"
ENV_EXAMPLE = REPO / "systemd" / "trading-daemon.env.example"

PREFIX = "/opt/trading-daemon"


def run_install(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Start from a clean slate: a PREFIX or SYSTEMD_DIR in the caller's
    # environment would move every path the assertions look at.
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFIX", "SYSTEMD_DIR", "PYTHON")
    }
    return subprocess.run(
        [str(SCRIPT), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_script_is_executable() -> None:
    """The script is committed executable, so `sudo scripts/install` works."""
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    """--dry-run prints every planned action and creates nothing."""
    root = tmp_path / "root"

    result = run_install("--dry-run", "--root", str(root))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    venv = f"{root}{PREFIX}/venv"
    assert f"-m venv {venv}" in out
    assert f"{venv}/bin/python -m pip install" in out
    assert f"{root}/etc/systemd/system/trading-daemon.service" in out
    assert f"install -m 0600 {ENV_EXAMPLE} {root}/etc/trading-daemon/" in out
    assert f"install -d -m 0700 {root}/etc/trading-daemon/credentials" in out
    assert "systemctl" not in out
    assert not root.exists()


def test_install_dry_run_honours_prefix_and_systemd_dir(tmp_path: Path) -> None:
    """PREFIX and SYSTEMD_DIR move the venv and the unit, and the unit follows."""
    root = tmp_path / "root"

    result = run_install(
        "--dry-run",
        "--root",
        str(root),
        env={"PREFIX": "/srv/td", "SYSTEMD_DIR": "/usr/local/lib/systemd/system"},
    )

    assert result.returncode == 0, result.stderr
    assert f"-m venv {root}/srv/td/venv" in result.stdout
    assert f"{root}/usr/local/lib/systemd/system/trading-daemon.service" in (
        result.stdout
    )
    assert "/opt/trading-daemon replaced by /srv/td" in result.stdout
    assert not root.exists()


def test_install_rejects_unknown_option() -> None:
    """A mistyped option stops the script before it does anything."""
    result = run_install("--dryrun")

    assert result.returncode != 0
    assert "unknown option '--dryrun'" in result.stderr


@pytest.mark.slow
def test_install_into_root_then_upgrade_keeps_env(tmp_path: Path) -> None:
    """A --root install is complete, and a second run keeps the edited env file."""
    root = tmp_path / "root"
    # --no-deps: the runtime dependencies are not needed to check the layout,
    # and skipping them keeps the test fast and off the network except for
    # the build backend (setuptools), which pip normally has cached.
    args = ("--root", str(root), "--python", sys.executable, "--pip-args", "--no-deps")

    first = run_install(*args)

    if first.returncode != 0 and "No matching distribution found for setuptools" in (
        first.stdout + first.stderr
    ):
        pytest.skip("pip cannot reach an index for the setuptools build backend")
    assert first.returncode == 0, first.stdout + first.stderr
    venv = root / PREFIX.lstrip("/") / "venv"
    entry = venv / "bin" / "trading-daemon"
    assert entry.is_file()
    assert os.access(entry, os.X_OK)
    assert "trading_daemon.cli" in entry.read_text()
    # The console script is registered as the unit expects, whether or not
    # trading_daemon.cli can be imported yet.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from importlib.metadata import entry_points;"
            "print(entry_points(group='console_scripts')['trading-daemon'].value)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip() == "trading_daemon.cli:main"

    unit = root / "etc/systemd/system/trading-daemon.service"
    assert unit.read_text() == UNIT.read_text()
    assert mode(unit) == 0o644
    env_file = root / "etc/trading-daemon/trading-daemon.env"
    assert env_file.read_text() == ENV_EXAMPLE.read_text()
    assert mode(env_file) == 0o600
    assert mode(root / "etc/trading-daemon/credentials") == 0o700
    assert "systemctl enable --now trading-daemon" in first.stdout
    assert "journalctl -u trading-daemon -f" in first.stdout
    assert "/health" in first.stdout

    edited = env_file.read_text() + "TRADING_WORKERS=7\n"
    env_file.write_text(edited)
    second = run_install(*args)

    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing the virtual environment" in second.stdout
    assert f"keeping the existing {env_file}" in second.stdout
    assert env_file.read_text() == edited
    assert entry.is_file()
