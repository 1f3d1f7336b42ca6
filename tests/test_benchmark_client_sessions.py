"""Smoke run of ``benchmarks/client_sessions.py`` (ours and sing-box's client, verified and
pinned) so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "client_sessions.py"


def test_client_sessions_prints_both_clients_in_both_modes() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--sessions", "5", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    assert set(rows) == {
        f"{impl}, {mode}" for impl in ("ours", "sing-box") for mode in ("verified", "pinned")
    }, out.stdout
    for p50, cpu in rows.values():
        assert 0 < p50 < 1000
        assert cpu >= 0
