"""CI smoke run of the benchmark (``benchmarks/bench.py --quick``) so it cannot rot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"
PAIRS = [
    "ours:ours",
    "ours-client:sing-box-server",
    "sing-box-client:ours-server",
    "sing-box:sing-box",
]
CELL = re.compile(r"^-?[\d,]+(\.\d+)?( \(\d+(\.\d+)?×\))?$")


def _table(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _check_table(text: str) -> None:
    rows = _table(text)
    assert rows, f"no table in:\n{text}"
    header, body = rows[0], rows[1:]
    # The four pairs, plus "ours:ours-workers" when our server has --workers,
    # "ours:ours-speed-limit" (token buckets that never wait) and our client with Python's
    # own TLS (--fingerprint openssl) instead of the browser hello.
    assert header[1:5] == PAIRS
    assert header[5:] in (
        ["ours:ours-speed-limit", "ours-openssl:ours"],
        ["ours:ours-workers", "ours:ours-speed-limit", "ours-openssl:ours"],
    )
    ref = header.index("sing-box:sing-box")
    assert len(body) >= 15
    labels = " ".join(r[0] for r in body)
    for word in (
        "download",
        "upload",
        "CPU-s/GB",
        "p50",
        "p99",
        "echo streams",
        "UDP",
        "RSS growth",
    ):
        assert word in labels, word
    for row in body:
        assert len(row) == len(header), row
        for cell in row[1:]:
            assert CELL.match(cell), f"not a number: {cell!r} in {row}"
    # sing-box:sing-box is the reference: its own ratio is 1.00× wherever it is non-zero.
    for row in body:
        if "(" in row[ref]:
            assert row[ref].endswith("(1.00×)"), row


# Seven pairs of about 3 s each in quick mode (unloaded); room for a busy machine.
@pytest.mark.timeout(300)
def test_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,  # seven pairs, each started fresh; about 20 s on this machine
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    _check_table(proc.stdout)
    assert out.exists()
    text = out.read_text()
    assert text.startswith("# anytls benchmark results")
    assert "- machine:" in text and "- date:" in text
    # how an idle vCPU waits decides what a cross-CPU wake-up costs (the UDP ping rows)
    assert "cpuidle " in text.split("- machine:", 1)[1].split("\n", 1)[0]
    _check_table(text)
    # ... and the JSON beside it, which benchmarks/plot.py draws (tests/test_benchmark_plot.py)
    results = json.loads(out.with_suffix(".json").read_text())
    (table,) = results["tables"]
    assert table["pairs"][:4] == PAIRS and table["reference"] == "sing-box:sing-box"
    keys = {m["key"] for m in table["metrics"]}
    for pair in table["pairs"]:
        assert set(table["medians"][pair]) >= keys - {"down2_server_busy_procs"}


@pytest.mark.timeout(120)
def test_benchmark_one_phase(tmp_path: Path) -> None:
    """``--phases`` runs only the named load-generator phases; the table has their rows."""
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--pairs",
            "ours:ours",
            "--phases",
            "udp",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    rows = _table(out.read_text())
    assert rows[0][1:] == ["ours:ours"]
    labels = [r[0] for r in rows[1:]]
    assert labels and all("UDP" in label for label in labels), labels
    # ... with the client's and server's CPU per ping (schedstat, so never a 0 of coarse ticks)
    cpu_rows = [r for r in rows[1:] if "CPU µs per UDP ping" in r[0]]
    assert len(cpu_rows) == 2 and all(float(r[1].split()[0]) > 0 for r in cpu_rows), cpu_rows
    # ... and the p50 again with every thread of the three processes on one CPU
    (one_cpu,) = [r for r in rows[1:] if r[0].startswith("UDP echo p50 ms, all processes on one")]
    assert float(one_cpu[1].split()[0]) > 0, one_cpu
    assert "--phases udp" in out.read_text()
    for row in rows[1:]:
        assert CELL.match(row[1]), row


def test_benchmark_refuses_an_unknown_phase() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--phases", "udp,warp-speed"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2 and "warp-speed" in proc.stderr
