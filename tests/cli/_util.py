"""Small helpers for the CLI tests: run a program to completion."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers.ourproc import program


def run_cli(
    kind: str, *args: str, cwd: Path | str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``anytls-<kind> args...`` to completion; stdout and stderr as text."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("LOG_LEVEL", None)
    return subprocess.run(
        [*program(kind), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
