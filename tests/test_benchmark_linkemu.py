"""The link emulator (``benchmarks/linkemu.py``) and the emulated-link benchmark.

Needs root, network namespaces and /dev/net/tun (CI runs as root on this machine). When
they are missing the tests fail with the emulator's message; they do not skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.benchmod import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
BENCH_LINK = ROOT / "benchmarks" / "bench_link.py"


def _load() -> ModuleType:
    return load_benchmark("linkemu")


le = _load()


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@contextlib.contextmanager
def hashing_server(ns: str, port: int) -> Iterator[None]:
    """In ``ns``: read until EOF, answer with the SHA-256 of what arrived."""
    with le.in_netns(ns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(8)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                with conn:
                    h = hashlib.sha256()
                    while data := conn.recv(1 << 16):
                        h.update(data)
                    conn.sendall(h.digest())

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        srv.close()


def test_tcp_runs_end_to_end_with_the_configured_rtt_and_rate() -> None:
    rtt, rate = 0.020, 20e6
    with le.LinkEmulator(le.LinkConfig.symmetric(rtt=rtt, rate=rate)) as link:
        with hashing_server(link.server_ns, 9000):
            syn = le.tcp_connect_times(link.client_ns, le.SERVER_IP, 9000, 5)
            icmp = le.ping(link.client_ns, le.SERVER_IP, 5)
            # The relay only adds delay: never below the setting; scheduling on a busy
            # machine may add a little.
            assert rtt <= statistics.median(syn) < rtt + 0.015, syn
            assert len(icmp) == 5 and rtt <= statistics.median(icmp) < rtt + 0.015, icmp

            payload = os.urandom(2 << 20)
            with le.in_netns(link.client_ns):
                sock = socket.socket()
            with sock:
                sock.settimeout(30)
                sock.connect((le.SERVER_IP, 9000))
                t0 = time.perf_counter()
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                digest = b""
                while len(digest) < 32 and (chunk := sock.recv(32)):
                    digest += chunk
                elapsed = time.perf_counter() - t0
        assert digest == hashlib.sha256(payload).digest()
        goodput = len(payload) * 8 / elapsed
        # The bottleneck is exact (1448 bytes of payload per 1500-byte packet at most);
        # slow start and a loaded machine may cost some of it.
        assert 0.4 * rate < goodput <= rate * 1448 / 1500, goodput
        stats = link.stats()
        assert stats["up"]["forwarded"] >= len(payload) // 1500
        assert stats["up"]["loss_drops"] == stats["up"]["queue_drops"] == 0
        names = {link.client_ns, link.server_ns}
        assert names <= _netns_names()
    assert not names & _netns_names(), "namespaces left behind"


def test_loss_queue_and_link_down() -> None:
    with le.LinkEmulator(le.LinkConfig(seed=1)) as link:
        # Random loss, one direction only.
        link.set(up=le.LinkParams(loss=0.2))
        lost = le.udp_loss(link, 1000)
        assert 0.14 < lost < 0.26, lost
        assert link.stats()["up"]["loss_drops"] == pytest.approx(lost * 1000, abs=5)

        # A 10-packet queue in front of a 1 Mbit/s bottleneck: a burst of 100 datagrams
        # of 1000 bytes (8 ms each on the wire) mostly tail-drops.
        link.set(up=le.LinkParams(rate=1e6, queue=10))
        with le.in_netns(link.server_ns):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with le.in_netns(link.client_ns):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind(("0.0.0.0", 9001))
            for _ in range(100):
                tx.sendto(bytes(1000), (le.SERVER_IP, 9001))
            got = 0
            rx.settimeout(1.0)  # the queue drains in 10 × 8 ms
            with contextlib.suppress(TimeoutError):
                while True:
                    rx.recv(2048)
                    got += 1
        stats = link.stats()["up"]
        assert 10 <= got <= 20, got
        assert stats["queue_drops"] == 100 - got
        assert stats["max_queue"] == 10

        # Link down: nothing crosses (a TCP connect times out); up again: it works.
        link.set(up=le.LinkParams())
        with le.in_netns(link.server_ns):
            srv = socket.socket()
        with srv:
            srv.bind(("0.0.0.0", 9002))
            srv.listen(8)
            link.link_down()
            with le.in_netns(link.client_ns):
                sock = socket.socket()
            with sock, pytest.raises(TimeoutError):
                sock.settimeout(0.5)
                sock.connect((le.SERVER_IP, 9002))
            assert link.stats()["up"]["down_drops"] >= 1
            link.link_up()
            assert le.tcp_connect_times(link.client_ns, le.SERVER_IP, 9002, 1)[0] < 0.5


def test_namespaces_are_deleted_after_an_error() -> None:
    names: set[str] = set()
    with pytest.raises(RuntimeError, match="boom"), le.LinkEmulator() as link:
        names = {link.client_ns, link.server_ns}
        assert names <= _netns_names()
        raise RuntimeError("boom")
    assert names and not names & _netns_names()


def test_bench_link_quick_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# loopback table\n\nkeep me\n")
    loopback = {"name": "loopback", "medians": {}}
    out.with_suffix(".json").write_text(json.dumps({"tables": [loopback]}))
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH_LINK),
            "--quick",
            "--link",
            "10ms,20ms",  # two profiles on one link: set-up repeated per profile
            "--pairs",
            "ours:ours,sing-box:sing-box",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    text = out.read_text()
    assert text.startswith("# loopback table\n\nkeep me\n")
    assert "## Emulated link" in text
    for rtt in (10, 20):
        assert f"**{rtt} ms RTT, 0.5% loss each way, 50 Mbit/s**" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and "**" not in line]
    assert len(lines) == 1 + 2 * 7, lines  # header + 7 rows per profile
    cells_of = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells_of[0] == ["metric (median of 1 run)", "ours:ours", "sing-box:sing-box"]
    rows = {r[0]: r[1:] for r in cells_of[1:8]}  # the 10 ms profile
    assert len(rows) == 7
    for label, cells in rows.items():
        values = [float(re.match(r"[\d,.]+", c).group().replace(",", "")) for c in cells]  # type: ignore[union-attr]
        assert all(v > 0 for v in values), (label, cells)
        if label.startswith("first byte"):
            # Across the link: at least one 10 ms round trip (cold: TCP + TLS + request).
            assert min(values) >= (30 if "cold" in label else 10), (label, cells)
    assert rows["UDP echo p50 ms ↓"][1].endswith("(1.00×)")
    tables = json.loads(out.with_suffix(".json").read_text())["tables"]
    assert [t["name"] for t in tables] == ["loopback", "link-10ms", "link-20ms"]
    assert tables[1]["medians"]["ours:ours"]["cold_ms"] >= 30


def test_bench_py_keeps_the_emulated_link_results(tmp_path: Path) -> None:
    bench = load_benchmark("bench")
    md, js = tmp_path / "results.md", tmp_path / "results.json"
    section = f"{bench.LINK_SECTION_START}\n## Emulated link\n| x |\n{bench.LINK_SECTION_END}"
    md.write_text(f"# old loopback table\n\n{section}\n")
    js.write_text(json.dumps({"tables": [{"name": "loopback"}, {"name": "link-40ms"}]}))
    assert bench.kept_link_section(md).strip() == section
    assert bench.kept_link_tables(js) == [{"name": "link-40ms"}]
    assert bench.kept_link_section(tmp_path / "none.md") == ""


def test_cleanup_deletes_namespaces_of_dead_processes() -> None:
    dead = "lemu99999x1c"  # a pid no process has (above pid_max here)
    if Path("/proc/99999").exists():
        dead = "lemu99998x1c"
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        with le.LinkEmulator() as link:
            assert dead in le.stale_namespaces()
            assert link.client_ns not in le.stale_namespaces()  # its process runs
            proc = subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "linkemu.py"), "cleanup"],
                capture_output=True,
                text=True,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            assert f"deleting {dead}" in proc.stdout
            assert dead not in _netns_names()
            assert {link.client_ns, link.server_ns} <= _netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True, check=False)
