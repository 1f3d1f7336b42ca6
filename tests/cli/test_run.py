"""Process-wide tuning done by the CLI runner before its event loop starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_idle_trim_trims_once_after_work_when_quiet() -> None:
    from anytls.cli._run import IdleTrim

    now = [0.0]
    trims: list[int] = []
    trimmer = IdleTrim(lambda pad: trims.append(pad) or 1, lambda: now[0])

    def interval(cpu: float) -> bool:
        now[0] += cpu
        return trimmer.check()

    assert not interval(0.0)  # quiet, but nothing was done: nothing to give back
    assert not interval(0.5)  # busy: never trimmed while working
    assert not interval(0.3)
    assert interval(0.001)  # the first quiet interval after work
    assert trims == [0]
    assert not interval(0.0) and not interval(0.001)  # once per burst
    assert trimmer.trims == 1


RSS_PROBE = """
from anytls.cli import _run
trim = _run.tune_malloc()

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

base = rss()
# a burst of relay-sized buffers, freed in an order that leaves holes in the heap
blocks = [bytearray(256 * 1024) for _ in range(400)]
keep = blocks[::50]
del blocks
peak = rss()
trimmer = _run.IdleTrim(trim, lambda: 0.0)
trimmer.work = 1.0
trimmer.check()
print(base, peak, rss(), len(keep))
"""


def test_idle_trim_gives_a_burst_heap_back() -> None:
    """With the raised thresholds glibc keeps ~100 MiB a burst freed; the trim returns it."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    base, peak, after, _ = map(int, out)
    assert peak - base > 80  # kept by malloc after the burst
    assert after - base < 10  # back to about where it started


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


STALLED_LOOKUP = """
import asyncio
from anytls.cli import _run

async def main(stop):
    loop = asyncio.get_running_loop()
    # a name lookup that the resolver never answers, given up (as a dial times out)
    lookup = loop.create_task(loop.getaddrinfo("blocked.example", 80))
    await asyncio.sleep(0.5)
    lookup.cancel()
    print("main done", flush=True)
    if END is not None:
        raise SystemExit(END)

_run.run(main)
"""


@pytest.mark.parametrize(
    ("end", "status", "stderr", "hole_ip"),
    # (each its own black hole, for parallel test workers)
    [
        (None, 0, "", "127.0.0.9"),
        (3, 3, "", "127.0.0.10"),
        ("'cannot go on'", 1, "cannot go on\n", "127.0.0.11"),
    ],
    ids=["returns", "exits 3", "exits with a message"],
)
def test_the_program_exits_at_once_with_a_name_lookup_still_stalled(
    tmp_path: Path, end: str | int | None, status: int, stderr: str, hole_ip: str
) -> None:
    # A resolver that never answers (20 s per query), for this process alone: a mount
    # namespace with its own /etc/resolv.conf.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {hole_ip}\noptions timeout:20 attempts:1\n")
    script = tmp_path / "stalled.py"
    script.write_text(f"END = {end}\n" + STALLED_LOOKUP)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind((hole_ip, 53))  # takes the query, never answers
    try:
        started = time.monotonic()
        result = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} {script}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started
        assert hole.recv(4096)  # the lookup did reach the black hole
    finally:
        hole.close()
    assert result.returncode == status, result.stderr
    assert result.stdout == "main done\n" and result.stderr == stderr
    assert elapsed < 8, elapsed  # not the resolver's 20 s


POOL_PROBE = """
import asyncio, os
from anytls.cli import _run

async def main(stop):
    await asyncio.get_running_loop().getaddrinfo("localhost", 80)
    print(len(os.listdir("/proc/self/task")), flush=True)

_run.run(main)
"""


def test_name_lookups_get_a_pool_of_64_threads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "UV_THREADPOOL_SIZE"}
    out = subprocess.run(
        [sys.executable, "-c", POOL_PROBE], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 64  # the main thread, libuv's 64, maybe a few others
    # an operator's own setting is kept
    out = subprocess.run(
        [sys.executable, "-c", POOL_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "UV_THREADPOOL_SIZE": "6"},
    )
    assert 6 < int(out.stdout) < 20
