"""The short CI version of soak/soak.py: concurrent streams, every byte sha-checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "soak" / "soak.py"


def test_short_soak_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "8", "--streams", "100", "--max-size", "65536"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 errors" in result.stdout
    streams = int(result.stdout.split(" streams,")[0].rsplit(" ", 1)[1])
    assert streams > 200
