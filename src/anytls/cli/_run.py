"""Shared runner for the command-line programs: event loop choice and shutdown."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable

#: Process ids of the worker processes this (parent) process forked.
WORKER_PIDS: list[int] = []


def fork_workers(count: int) -> int:
    """Fork ``count - 1`` copies of this process; return this process's worker index.

    Every worker binds the same port with SO_REUSEPORT and the kernel spreads new
    connections across them. The parent (index 0) terminates and reaps the others when it
    exits (signal handlers that should reach them, e.g. a reload, can use
    :data:`WORKER_PIDS`); a worker is sent SIGTERM if its parent dies.
    """
    if count <= 1 or not hasattr(os, "fork"):
        return 0
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            WORKER_PIDS.clear()
            _die_with_parent()
            return index
        WORKER_PIDS.append(pid)
    atexit.register(_reap_workers)
    return 0


def _reap_workers() -> None:
    for pid in WORKER_PIDS:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in WORKER_PIDS:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _die_with_parent() -> None:
    # Linux: get SIGTERM when the parent goes away, so no worker outlives a kill -9.
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` on uvloop when available; SIGINT/SIGTERM set the event."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop missing
        asyncio.run(wrapper())
    else:
        if sys.version_info >= (3, 12):  # pragma: no cover
            asyncio.run(wrapper(), loop_factory=uvloop.new_event_loop)
        else:
            uvloop.install()
            asyncio.run(wrapper())
