"""TCP Fast Open (anytls.aio.tfo): in a fresh network namespace (so the host's sysctl is
untouched), sessions after the first carry the ClientHello in the SYN when both ends have
--tcp-fast-open, and none do without it (kernel counters and TCP_INFO checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from anytls.aio import tfo

ROOT = Path(__file__).resolve().parents[2]


def probe(*args: str) -> dict[str, object]:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.helpers.tfo_probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_reconnects_carry_the_client_hello_in_the_syn() -> None:
    result = probe("--fast-open", "--sessions", "4")
    sessions = result["sessions"]
    assert isinstance(sessions, list)
    # the first session fetches the server's cookie; every later one sends data in its SYN
    assert [s["syn_data"] for s in sessions] == [False, True, True, True]
    counters = result["counters"]
    assert isinstance(counters, dict)
    assert counters["TCPFastOpenActive"] == 3
    assert counters["TCPFastOpenPassive"] == 3


def test_no_fast_open_without_the_option() -> None:
    result = probe("--sessions", "3")
    sessions = result["sessions"]
    assert isinstance(sessions, list)
    assert not any(s["syn_data"] for s in sessions)
    assert result["counters"] == {
        "TCPFastOpenActive": 0,
        "TCPFastOpenPassive": 0,
        "TCPFastOpenCookieReqd": 0,
    }


def test_sysctl_problem_names_the_missing_bit(tmp_path: Path) -> None:
    path = tmp_path / "tcp_fastopen"
    path.write_text("1\n")
    assert tfo.sysctl_problem(False, str(path)) is None
    problem = tfo.sysctl_problem(True, str(path))
    assert problem is not None and "net.ipv4.tcp_fastopen=3" in problem
    path.write_text("3\n")
    assert tfo.sysctl_problem(True, str(path)) is None
    assert tfo.sysctl_problem(True, str(tmp_path / "missing")) is not None
