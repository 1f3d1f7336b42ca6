"""Helpers of ``benchmarks/loadgen.py`` that the benchmark's figures rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.benchmod import load_benchmark


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_pin_threads_pins_a_process_tree_and_restores_it() -> None:
    loadgen = load_benchmark("loadgen")
    # A parent with a child and an extra thread: every thread of the tree gets pinned.
    code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        tids = [
            (pid, int(tid))
            for pid in (parent.pid, child)
            for tid in os.listdir(f"/proc/{pid}/task")
        ]
        assert len(tids) >= 3
        everywhere = {tid: os.sched_getaffinity(tid) for _, tid in tids}
        cpu = max(os.sched_getaffinity(0))
        masks = loadgen.pin_threads([parent.pid], {cpu})
        assert {tid for _, tid in tids} <= set(masks)
        for _, tid in tids:
            assert os.sched_getaffinity(tid) == {cpu}
        loadgen.restore_threads(masks)
        for _, tid in tids:
            assert os.sched_getaffinity(tid) == everywhere[tid]
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
