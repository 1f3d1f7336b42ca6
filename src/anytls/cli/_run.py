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
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: Process ids of the worker processes this (parent) process forked.
WORKER_PIDS: list[int] = []
#: Parent: one socket per worker, for statistics requests (see anytls.aio.stats).
WORKER_CHANNELS: list[socket.socket] = []
#: Worker: its socket to the parent (None in the parent or without workers).
PARENT_CHANNEL: socket.socket | None = None


def fork_workers(count: int) -> int:
    """Fork ``count - 1`` copies of this process; return this process's worker index.

    The parent binds the listening sockets first (:func:`bind_tcp`) and every worker
    accepts on those same sockets. The parent (index 0) terminates and reaps the others when it
    exits (signal handlers that should reach them, e.g. a reload, can use
    :data:`WORKER_PIDS`); a worker is sent SIGTERM if its parent dies. Each worker gets a
    socket pair to the parent (:data:`WORKER_CHANNELS` / :data:`PARENT_CHANNEL`).
    """
    global PARENT_CHANNEL
    if count <= 1 or not hasattr(os, "fork"):
        return 0
    # A reload (SIGHUP, SIGUSR1) that arrives before a worker's event loop installed its
    # handler must not kill it: ignored until then.
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
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


#: Machines with at most this many cores run one process by default: memory is scarcer
#: there than a second core (one process relays several hundred MB/s on one core).
SMALL_MACHINE_CORES = 2


def default_workers(cores: int | None = None) -> int:
    """Processes for ``--workers 0``: one per core, or 1 on a small machine."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return cores if cores > SMALL_MACHINE_CORES else 1


#: Pending connections the kernel queues per listening socket.
LISTEN_BACKLOG = 4096


def bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on exactly ``host:port``, before any worker is forked.

    ``0.0.0.0`` is IPv4 only; ``::`` is dual-stack (IPv4 and IPv6); an empty host means
    ``0.0.0.0``; a name gets one socket per address it resolves to. No SO_REUSEPORT: the
    workers share these sockets, so a second program on the same port fails with "address
    already in use" instead of silently taking half the connections. Raises ``OSError``.
    """
    if host in ("", "0.0.0.0"):
        targets: list[tuple[int, Any]] = [(socket.AF_INET, ("0.0.0.0", port))]
    elif host == "::":
        targets = [(socket.AF_INET6, ("::", port, 0, 0))]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        targets = list(dict.fromkeys((family, addr) for family, _, _, _, addr in infos))
    sockets: list[socket.socket] = []
    try:
        for family, addr in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(host != "::"))
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def describe_listen(sockets: list[socket.socket]) -> str:
    """``0.0.0.0:8443 (IPv4 only)``, ``[::]:8443 (IPv4 and IPv6)`` ... for the log line."""
    parts = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        if sock.family == socket.AF_INET6:
            dual = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            parts.append(f"[{host}]:{port}" + (" (IPv4 and IPv6)" if dual else ""))
        else:
            parts.append(f"{host}:{port}" + (" (IPv4 only)" if host == "0.0.0.0" else ""))
    return ", ".join(parts)


def worker_count(requested: int, listen: object) -> int:
    """Processes to run: ``requested``, or :func:`default_workers` for 0; 1 where that
    cannot work.

    ``listen`` is the listen address.
    """
    count = requested if requested > 0 else default_workers()
    if count > 1 and not hasattr(os, "fork"):
        logging.getLogger("anytls").warning("no fork() here: running one process")
        return 1
    return count


def forked() -> bool:
    """True when this process is one of several workers (UDP sockets need SO_REUSEPORT)."""
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


def _libc_malloc() -> tuple[Callable[..., int], Callable[[int], int]] | None:
    """glibc's ``mallopt`` and ``malloc_trim`` (None where they are missing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


def tune_malloc() -> Callable[[int], int] | None:
    """Keep glibc from returning and re-faulting heap memory on every bulk burst.

    A relay allocates and frees megabytes per loop iteration; with glibc's defaults the
    heap grows and is trimmed back about 150 times per 256 MiB and nearly every byte sent
    lands on freshly faulted pages. Raising the mmap and trim thresholds keeps those pages
    and cut the sender's CPU per GB by about 45 % in the benchmark. What this keeps after
    a burst is given back by :class:`IdleTrim`. Returns ``malloc_trim`` (None where glibc's
    functions are missing, and then nothing is changed).
    """
    functions = _libc_malloc()
    if functions is None:  # pragma: no cover - not glibc
        return None
    mallopt, malloc_trim = functions
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 8 * 1024 * 1024)
    mallopt(m_trim_threshold, 64 * 1024 * 1024)
    return malloc_trim


class IdleTrim:
    """Return the heap a burst of traffic left behind once the process goes quiet.

    Every :attr:`INTERVAL` seconds the process's own CPU time is read (one clock call):
    after at least :attr:`WORK` CPU-seconds of work, the first interval with less than
    :attr:`QUIET` of a core busy calls ``malloc_trim(0)``, which hands free heap pages
    (also those between live blocks) back to the kernel. Busy processes are never
    trimmed, so the raised malloc thresholds keep their throughput benefit.
    """

    INTERVAL = 1.0
    QUIET = 0.02
    WORK = 0.05

    def __init__(self, trim: Callable[[int], int], clock: Callable[[], float]) -> None:
        self.trim = trim
        self.clock = clock
        self.last = clock()
        self.work = 0.0
        self.trims = 0
        self.handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check every :attr:`INTERVAL` seconds on ``loop`` until :meth:`stop`."""
        self.handle = loop.call_later(self.INTERVAL, self._tick, loop)

    def stop(self) -> None:
        """Stop checking."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def check(self) -> bool:
        """One check; True if it trimmed."""
        now = self.clock()
        used, self.last = now - self.last, now
        if used > self.QUIET * self.INTERVAL:
            self.work += used
            return False
        if self.work < self.WORK:
            return False
        self.work = 0.0
        self.trims += 1
        self.trim(0)
        return True

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.check()
        self.handle = loop.call_later(self.INTERVAL, self._tick, loop)


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


#: Threads in libuv's pool (name lookups), unless UV_THREADPOOL_SIZE says otherwise.
RESOLVER_THREADS = 64

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
        trimmer = IdleTrim(trim, time.process_time) if trim is not None else None
        if trimmer is not None:
            trimmer.start(loop)
        try:
            await main(stop)
        except SystemExit as exc:  # a failed --check, a port in use ...: the same
            exit_now(exc.code)
        finally:
            if trimmer is not None:
                trimmer.stop()
        # Done: exit from here, as the loop's own teardown would wait for them too.
        exit_now()

    trim = tune_malloc()
    tune_gc()
    raise_fd_limit()
    # uvloop looks names up in libuv's thread pool, 4 threads unless told: a resolver
    # slow for some names would hold every lookup of every session behind them.
    os.environ.setdefault("UV_THREADPOOL_SIZE", str(RESOLVER_THREADS))
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


def exit_now(code: int | str | None = 0) -> None:
    """Exit at once, the program done: name lookups may still hold resolver threads
    (libuv's pool under uvloop), and closing the loop and exiting normally wait for
    them, which with a stalled resolver and many queued lookups takes minutes after
    "stopped" was logged."""
    _reap_workers()  # (what atexit would have done)
    logging.shutdown()
    if isinstance(code, str):  # as sys.exit("message") does
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
