"""Shared runner for the command-line programs: event loop choice and shutdown."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

#: Process ids of the worker processes this (parent) process forked.
WORKER_PIDS: list[int] = []
#: Parent: one socket per worker, for statistics requests (see anytls.aio.stats).
WORKER_CHANNELS: list[socket.socket] = []
#: Worker: its socket to the parent (None in the parent or without workers).
PARENT_CHANNEL: socket.socket | None = None


def fork_workers(count: int) -> int:
    """Fork ``count - 1`` copies of this process; return this process's worker index.

    Every worker binds the same port with SO_REUSEPORT and the kernel spreads new
    connections across them. The parent (index 0) terminates and reaps the others when it
    exits (signal handlers that should reach them, e.g. a reload, can use
    :data:`WORKER_PIDS`); a worker is sent SIGTERM if its parent dies. Each worker gets a
    socket pair to the parent (:data:`WORKER_CHANNELS` / :data:`PARENT_CHANNEL`).
    """
    global PARENT_CHANNEL
    if count <= 1 or not hasattr(os, "fork"):
        return 0
    pairs = [socket.socketpair() for _ in range(count - 1)]
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            WORKER_PIDS.clear()
            WORKER_CHANNELS.clear()
            for i, (parent_end, child_end) in enumerate(pairs, 1):
                parent_end.close()
                if i == index:
                    PARENT_CHANNEL = child_end
                else:
                    child_end.close()
            _die_with_parent()
            return index
        WORKER_PIDS.append(pid)
    for parent_end, child_end in pairs:
        child_end.close()
        WORKER_CHANNELS.append(parent_end)
    atexit.register(_reap_workers)
    return 0


def worker_count(requested: int, listen: object) -> int:
    """Processes to run: ``requested``, or one per core for 0; 1 where that cannot work.

    ``listen`` is the listen address (its ``port`` 0 means "any": each worker would get a
    different port, so one process serves it).
    """
    count = requested if requested > 0 else (os.cpu_count() or 1)
    if count > 1 and not hasattr(os, "fork"):
        logging.getLogger("anytls").warning("no fork() here: running one process")
        return 1
    if count > 1 and getattr(listen, "port", None) == 0:
        logging.getLogger("anytls").warning(
            "listening on port 0 (any free port): running one process, since each worker "
            "would get a port of its own"
        )
        return 1
    return count


def forked() -> bool:
    """True when this process is one of several workers (so sockets need SO_REUSEPORT)."""
    return bool(WORKER_PIDS) or PARENT_CHANNEL is not None


def signal_workers(sig: int) -> None:
    """Send ``sig`` to every worker still running."""
    for pid in WORKER_PIDS:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def wait_for_workers(timeout: float) -> None:  # noqa: ASYNC109
    """Reap workers as they exit, for up to ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while WORKER_PIDS:
        for pid in list(WORKER_PIDS):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - does not block
            except ChildProcessError:
                done = pid
            if done:
                WORKER_PIDS.remove(pid)
        if not WORKER_PIDS or loop.time() >= deadline:
            return
        await asyncio.sleep(0.05)


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


def tune_malloc() -> None:
    """Keep glibc from returning and re-faulting heap memory on every bulk burst.

    A relay allocates and frees megabytes per loop iteration; with glibc's defaults the
    heap grows and is trimmed back about 150 times per 256 MiB and nearly every byte sent
    lands on freshly faulted pages. Raising the mmap and trim thresholds keeps those pages
    (about 9 MiB more resident) and cut the sender's CPU per GB by about 45 % in the
    benchmark. A no-op where glibc's ``mallopt`` is missing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 8 * 1024 * 1024)
    mallopt(m_trim_threshold, 64 * 1024 * 1024)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one, as Go programs (sing-box) do at
    start; returns the soft limit now in force.

    Every session holds descriptors: a socket, and on the client's default (browser
    fingerprint) path also the eventfd of the curl multi handle that owns the connection,
    so a distro's default soft limit of 1024 would cap a client near 500 sessions.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tune_gc() -> None:
    """Leave start-up objects out of garbage collection and collect young objects less often.

    Everything imported and configured so far lives until exit: ``gc.freeze()`` moves it to
    the permanent generation, so full collections no longer walk it. A proxy allocates
    thousands of short-lived objects per second that are freed by reference counting; a
    higher first threshold runs the cycle collector about ten times less often.
    """
    import gc

    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


#: Allocations (minus deallocations) between young-generation collections (CPython: 700).
GC_YOUNG_THRESHOLD = 7000


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` on uvloop when available; SIGINT/SIGTERM set the event."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    tune_malloc()
    tune_gc()
    raise_fd_limit()
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
