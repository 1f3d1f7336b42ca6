"""Process-wide tuning done by the CLI runner before its event loop starts."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from anytls.cli import _run
before = gc.get_threshold()
_run.tune_gc()
after = gc.get_threshold()
print(before[0], after[0], after[1:] == before[1:], gc.get_freeze_count() > 1000)
"""


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["700", "7000", "True", "True"]


def test_python_m_anytls_help_lists_both_programs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anytls", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("server ") for line in lines)
    assert any(line.strip().startswith("client ") for line in lines)
