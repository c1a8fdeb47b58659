"""Crash safety: the small version of scripts/crash_test in the suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "crash_test.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_test"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_crash_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """After SIGKILL mid-burst and a restart, each acked alert ran exactly once."""
    crash_test = load_script()

    results = crash_test.run(rounds=2, alerts=80, seed=7, work=tmp_path)

    assert len(results) == 2
    for result in results:
        assert result.sent == 80
        assert result.lost == 0
        assert result.duplicated == 0
        assert result.book_mismatch == []
        assert result.executed == result.acked
    assert sum(r.acked for r in results) > 0
