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


FD_PROBE = """
import resource
from anytls.cli import _run
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
print(min(256, hard), _run.raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    out = subprocess.run(
        [sys.executable, "-c", FD_PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(min(256, hard)), str(expected), str(expected)]
