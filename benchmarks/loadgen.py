#!/usr/bin/env python3
"""Load generator and target servers for ``benchmarks/bench.py`` (one process).

    python benchmarks/loadgen.py --socks 127.0.0.1:1080 --client-pid P --server-pid Q ...

Starts its own targets on loopback (TCP echo, TCP idle, TCP bulk source/sink, UDP echo),
drives them through the SOCKS5 port of a proxy client, and prints ONE line of JSON with the
figures. The proxy client/server processes are only observed (``/proc/<pid>/stat`` CPU
times, ``/proc/<pid>/status`` VmRSS, each summed over the process and its descendants, so
forked server workers count), never touched.

Imports nothing from the project: only the standard library (+ uvloop when installed).

Targets:

* echo: writes back what it reads.
* idle: writes one byte ``!`` on accept, then reads and discards.
* bulk: a 9-byte header ``D``/``U`` + big-endian u64 ``n``. ``D``: the target sends ``n``
  bytes. ``U``: the target counts ``n`` bytes received, then answers ``OK``.
* UDP echo: sends every datagram back to where it came from.

Units: MB = 10^6 bytes, GB = 10^9 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

HOST = "127.0.0.1"
CHUNK = 256 * 1024
PAYLOAD = os.urandom(CHUNK)
UDP_SIZE = 512
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), utime/stime fields 14/15.
    return data[data.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. forked server workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all threads), in seconds."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(p)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def cpu_ns(pid: int) -> int:
    """On-CPU time of a process tree (every thread of ``pid`` and its descendants) in
    nanoseconds, from ``/proc/<tid>/schedstat``: fine enough for a few hundred pings,
    where utime/stime count in 10 ms ticks."""
    total = 0
    for tid in threads([pid]):
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{tid}/schedstat") as f,
        ):
            total += int(f.read().split()[0])
    return total


def threads(pids: list[int]) -> list[int]:
    """Every thread id of the process trees of ``pids`` (those gone meanwhile skipped)."""
    out: list[int] = []
    for p in {q for pid in pids for q in process_tree(pid)}:
        with contextlib.suppress(OSError):
            out += map(int, os.listdir(f"/proc/{p}/task"))
    return out


def pin_threads(pids: list[int], cpus: set[int]) -> dict[int, set[int]]:
    """Set the CPU affinity of every thread of the process trees of ``pids`` to ``cpus``;
    return each thread's mask from before, to restore it with :func:`restore_threads`."""
    before: dict[int, set[int]] = {}
    for tid in threads(pids):
        with contextlib.suppress(OSError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return before


def restore_threads(masks: dict[int, set[int]]) -> None:
    """Undo :func:`pin_threads` (threads gone since are skipped)."""
    for tid, mask in masks.items():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, mask)


def busy_processes(before: dict[int, float], after: dict[int, float]) -> int:
    """How many processes used at least a quarter of the tree's CPU between two samples."""
    used = {p: after[p] - before.get(p, 0.0) for p in after}
    total = sum(used.values())
    return sum(1 for u in used.values() if total > 0 and u >= total / 4)


def cpu_by_process(pid: int) -> dict[int, float]:
    """utime + stime in seconds of ``pid`` and each descendant, by pid."""
    out = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(p)
            out[p] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of a process plus its descendants', in MiB (pages shared after fork count
    once per process)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# ----------------------------------------------------------------------------- targets


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class Idle(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        transport.write(b"!")

    def data_received(self, data: bytes) -> None:
        pass


class Bulk(asyncio.BufferedProtocol):
    """Source (``D n``) or sink (``U n``) of n bytes."""

    def __init__(self) -> None:
        self.buf = bytearray(CHUNK)
        self.header = b""
        self.mode = b""
        self.remaining = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        got = nbytes
        if not self.mode:
            need = 9 - len(self.header)
            self.header += bytes(self.buf[: min(need, nbytes)])
            got -= min(need, nbytes)
            if len(self.header) < 9:
                return
            self.mode = self.header[:1]
            self.remaining = struct.unpack("!Q", self.header[1:])[0]
            if self.mode == b"D":
                self._pump()
            elif self.mode != b"U":
                self.transport.close()
                return
        if self.mode == b"U" and got and self.remaining > 0:
            self.remaining -= got
            if self.remaining <= 0:
                self.transport.write(b"OK")

    def _pump(self) -> None:
        while self.remaining > 0 and not self.paused:
            n = min(CHUNK, self.remaining)
            self.transport.write(PAYLOAD if n == CHUNK else PAYLOAD[:n])
            self.remaining -= n

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == b"D":
            self._pump()

    def eof_received(self) -> bool:
        return False


class Http(asyncio.Protocol):
    """A tiny HTTP/1.1 origin: every request gets 1 KiB; ``Connection: close`` is honoured."""

    BODY = b"x" * 1024
    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + BODY
    CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n" + BODY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if b"connection: close" in head.lower():
                self.transport.write(self.CLOSING)
                self.transport.close()
                return
            self.transport.write(self.RESPONSE)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)


class Targets:
    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.udp: asyncio.DatagramTransport | None = None
        self.echo = self.idle = self.bulk = self.udp_echo = self.http = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for factory in (Echo, Idle, Bulk, Http):
            server = await loop.create_server(factory, HOST, 0, backlog=4096)
            self.servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        self.echo, self.idle, self.bulk, self.http = ports
        udp, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=(HOST, 0))
        self.udp = udp  # type: ignore[assignment]
        self.udp_echo = udp.get_extra_info("sockname")[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.udp is not None:
            self.udp.close()


# ----------------------------------------------------------------------------- SOCKS5


class SocksError(Exception):
    pass


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


async def _read_bound(sock: socket.socket) -> tuple[str, int]:
    head = await recv_exact(sock, 4)
    if head[0] != 5:
        raise SocksError(f"bad SOCKS version in reply: {head!r}")
    if head[1] != 0:
        raise SocksError(f"SOCKS5 request failed, REP={head[1]}")
    atyp = head[3]
    if atyp == 1:
        raw = await recv_exact(sock, 6)
        return socket.inet_ntop(socket.AF_INET, raw[:4]), struct.unpack("!H", raw[4:])[0]
    if atyp == 4:
        raw = await recv_exact(sock, 18)
        return socket.inet_ntop(socket.AF_INET6, raw[:16]), struct.unpack("!H", raw[16:])[0]
    if atyp == 3:
        n = (await recv_exact(sock, 1))[0]
        raw = await recv_exact(sock, n + 2)
        return raw[:n].decode(), struct.unpack("!H", raw[n:])[0]
    raise SocksError(f"bad ATYP {atyp}")


async def socks_request(
    proxy: tuple[str, int], cmd: int, dst: tuple[str, int]
) -> tuple[socket.socket, tuple[str, int]]:
    """Open a TCP connection to the proxy, negotiate 'no auth', send one request."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, proxy)
        await loop.sock_sendall(sock, b"\x05\x01\x00")
        if await recv_exact(sock, 2) != b"\x05\x00":
            raise SocksError("proxy refused 'no authentication'")
        await loop.sock_sendall(
            sock,
            bytes([5, cmd, 0, 1]) + socket.inet_aton(dst[0]) + struct.pack("!H", dst[1]),
        )
        bound = await _read_bound(sock)
    except BaseException:
        sock.close()
        raise
    return sock, bound


async def socks_connect(proxy: tuple[str, int], port: int) -> socket.socket:
    sock, _ = await socks_request(proxy, 1, (HOST, port))
    return sock


# ----------------------------------------------------------------------------- phases


async def phase_latency(proxy: tuple[str, int], port: int, iters: int) -> dict[str, float]:
    """Sequential CONNECT → write 1 byte → read 1 byte → close, timed end to end."""
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    for i in range(iters + 10):  # the first 10 are warm-up
        t0 = time.perf_counter()
        sock = await socks_connect(proxy, port)
        try:
            await loop.sock_sendall(sock, b"x")
            await recv_exact(sock, 1)
            dt = time.perf_counter() - t0
        finally:
            sock.close()
        if i >= 10:
            samples.append(dt * 1000)
    return {
        "latency_p50_ms": percentile(samples, 50),
        "latency_p99_ms": percentile(samples, 99),
    }


#: Seconds of quiet before an "after traffic" RSS reading (the same for every program:
#: Go's scavenger and our idle trim both return memory in the background). ``--quiet``
#: changes it (bench.py --quick, whose figures are not compared, uses a fraction).
QUIET = 2.5


async def phase_rss_after_bulk(
    client_pid: int, server_pid: int, quiet: float = QUIET
) -> dict[str, float]:
    """RSS of client and server a moment after the bulk phases."""
    await asyncio.sleep(quiet)
    return {
        "rss_client_after_bulk_mib": rss_mib(client_pid),
        "rss_server_after_bulk_mib": rss_mib(server_pid),
    }


async def _read_response(reader: asyncio.StreamReader) -> bool:
    """Read one response; True if the connection may carry another request."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return b"connection: close" not in head


async def phase_small_requests(
    proxy: tuple[str, int], port: int, count: int, parallel: int = 6
) -> dict[str, float]:
    """``count`` 1 KiB HTTP responses fetched ``parallel`` at a time, as a browser does:
    through SOCKS5 each worker keeps one tunnel alive for its requests; through the HTTP
    proxy each sends absolute-URI GETs and keeps its proxy connection for the next one
    unless the proxy answered ``Connection: close``."""
    loop = asyncio.get_running_loop()
    per = [count // parallel + (i < count % parallel) for i in range(parallel)]
    request = f"GET /x HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    absolute = (
        f"GET http://{HOST}:{port}/x HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Proxy-Connection: keep-alive\r\n\r\n"
    ).encode()

    async def socks_worker(n: int) -> None:
        sock = await socks_connect(proxy, port)
        reader, writer = await asyncio.open_connection(sock=sock)
        for _ in range(n):
            writer.write(request)
            await _read_response(reader)
        writer.close()

    async def http_worker(n: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for _ in range(n):
            if conn is None:
                conn = await asyncio.open_connection(*proxy)
            conn[1].write(absolute)
            if not await _read_response(conn[0]):
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    out = {}
    for key, worker in (("small_socks_s", socks_worker), ("small_http_s", http_worker)):
        t0 = loop.time()
        await asyncio.gather(*(worker(n) for n in per))
        out[key] = loop.time() - t0
    return out


async def phase_new_sessions(
    server: tuple[str, int], password: str, port: int, count: int, server_pid: int
) -> dict[str, float]:
    """New AnyTLS sessions straight to the server, 8 at a time, each: TLS handshake, auth
    preface, one stream to the echo target with one byte back, close (our library as the
    client, the same for every server). Also the server's CPU per session."""
    from anytls.aio.client import Client, ClientConfig

    config = ClientConfig(server[0], server[1], password, insecure=True, reuse_sessions=False)
    sem = asyncio.Semaphore(8)
    loop = asyncio.get_running_loop()
    async with Client(config) as client:

        async def one() -> None:
            async with sem:
                reader, writer = await client.open_connection(HOST, port)
                writer.write(b"!")
                await reader.readexactly(1)
                writer.close()

        await asyncio.gather(*(one() for _ in range(8)))  # warm-up
        cpu0 = cpu_seconds(server_pid)
        t0 = loop.time()
        await asyncio.gather(*(one() for _ in range(count)))
        wall = loop.time() - t0
        cpu = cpu_seconds(server_pid) - cpu0
    return {"sessions_per_s": count / wall, "server_ms_per_session": cpu / count * 1000}


#: Idle streams opened at a time by the idle-rss phase (below our client's default
#: --max-handshakes).
IDLE_OPEN_AT_ONCE = 4


async def phase_idle_rss(
    proxy: tuple[str, int],
    port: int,
    count: int,
    client_pid: int,
    server_pid: int,
    quiet: float = QUIET,
) -> dict[str, float]:
    """RSS growth of client and server with ``count`` idle streams open, then with the
    ``count`` sessions that carried them idle in the pools (streams closed)."""
    await asyncio.sleep(quiet)  # the baseline after the same quiet time as the readings
    base_c, base_s = rss_mib(client_pid), rss_mib(server_pid)
    socks: list[socket.socket] = []
    # A few at a time, so that every stream gets a session of its own in both clients (ours
    # shares the sessions being set up once --max-handshakes of them are): the second
    # reading is then that of ``count`` idle sessions.
    sem = asyncio.Semaphore(IDLE_OPEN_AT_ONCE)

    async def one() -> None:
        async with sem:
            sock = await socks_connect(proxy, port)
            socks.append(sock)
            await recv_exact(sock, 1)  # the target's '!': the whole path is up

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(min(1.0, quiet))
        peak_c, peak_s = rss_mib(client_pid), rss_mib(server_pid)
    finally:
        for sock in socks:
            sock.close()
    await asyncio.sleep(quiet)  # both sides tear the streams down; sessions stay pooled
    return {
        "rss_client_base_mib": base_c,
        "rss_server_base_mib": base_s,
        "rss_client_growth_mib": max(0.0, peak_c - base_c),
        "rss_server_growth_mib": max(0.0, peak_s - base_s),
        # (0 when the process gave back more than the sessions hold)
        "rss_client_idle_sessions_mib": max(0.0, rss_mib(client_pid) - base_c),
        "rss_server_idle_sessions_mib": max(0.0, rss_mib(server_pid) - base_s),
    }


async def phase_concurrent(
    proxy: tuple[str, int], port: int, streams: int, size: int
) -> dict[str, float]:
    """``streams`` echo streams at once, each sends and receives ``size`` bytes."""
    loop = asyncio.get_running_loop()
    data = PAYLOAD[: min(size, CHUNK)]

    async def one() -> None:
        sock = await socks_connect(proxy, port)
        try:

            async def send() -> None:
                left = size
                while left > 0:
                    n = min(left, len(data))
                    await loop.sock_sendall(sock, data[:n])
                    left -= n

            async def receive() -> None:
                got = 0
                buf = bytearray(65536)
                while got < size:
                    n = await loop.sock_recv_into(sock, buf)
                    if n == 0:
                        raise ConnectionError(f"echo EOF after {got} of {size} bytes")
                    got += n

            await asyncio.gather(send(), receive())
        finally:
            sock.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    return {"concurrent_s": time.perf_counter() - t0}


async def _download(sock: socket.socket, size: int) -> None:
    """Ask the bulk target for ``size`` bytes and count them in."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"D" + struct.pack("!Q", size))
    buf = bytearray(1 << 20)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, buf)
        if n == 0:
            raise ConnectionError(f"download EOF after {got} of {size} bytes")
        got += n


async def _bulk(
    proxy: tuple[str, int],
    port: int,
    size: int,
    download: bool,
    client_pid: int,
    server_pid: int,
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = await socks_connect(proxy, port)
    try:
        cpu0 = (cpu_seconds(client_pid), cpu_seconds(server_pid), time.process_time())
        t0 = time.perf_counter()
        if download:
            await _download(sock, size)
        else:
            await loop.sock_sendall(sock, b"U" + struct.pack("!Q", size))
            left = size
            view = memoryview(PAYLOAD)
            while left > 0:
                n = min(left, CHUNK)
                await loop.sock_sendall(sock, view[:n])
                left -= n
            if await recv_exact(sock, 2) != b"OK":
                raise ConnectionError("upload: bad acknowledgement")
        elapsed = time.perf_counter() - t0
        cpu1 = (cpu_seconds(client_pid), cpu_seconds(server_pid), time.process_time())
    finally:
        sock.close()
    gb = size / 1e9
    key = "down" if download else "up"
    return {
        f"{key}_MBps": size / 1e6 / elapsed,
        f"{key}_cpu_client_s_per_gb": (cpu1[0] - cpu0[0]) / gb,
        f"{key}_cpu_server_s_per_gb": (cpu1[1] - cpu0[1]) / gb,
        f"{key}_cpu_loadgen_s_per_gb": (cpu1[2] - cpu0[2]) / gb,
    }


async def phase_two_downloads(
    proxy: tuple[str, int], port: int, size: int, server_pid: int
) -> dict[str, float]:
    """Two bulk downloads of ``size // 2`` bytes at once (two streams, two sessions).

    Also counts the server processes that did a real share of the work (a server with
    several workers shows whether the two sessions landed on different ones).
    """
    each = size // 2
    socks = [await socks_connect(proxy, port) for _ in range(2)]
    try:
        cpu0 = cpu_by_process(server_pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(_download(sock, each) for sock in socks))
        elapsed = time.perf_counter() - t0
        busy = busy_processes(cpu0, cpu_by_process(server_pid))
    finally:
        for sock in socks:
            sock.close()
    return {"down2_MBps": 2 * each / 1e6 / elapsed, "down2_server_busy_procs": busy}


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.handler: Callable[[int], None] | None = None
        self.hlen = 10  # SOCKS5 UDP header with an IPv4 address

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.handler is not None and len(data) >= self.hlen + 8 and data[2] == 0:
            self.handler(struct.unpack_from("!Q", data, self.hlen)[0])

    def error_received(self, exc: Exception) -> None:
        pass


class _Flood:
    """Keep ``window`` datagrams in flight; each echo releases the next one. If nothing
    comes back for 0.3 s, the in-flight ones count as lost and the window is refilled."""

    def __init__(self, send: Callable[[int], None], total: int, window: int) -> None:
        self.send = send
        self.total = total
        self.window = window
        self.next = 0
        self.received: set[int] = set()
        self.last = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_datagram(self, seq: int) -> None:
        if seq >= self.total or seq in self.received:
            return
        self.received.add(seq)
        self.last = time.perf_counter()
        if len(self.received) >= self.total:
            if not self.done.done():
                self.done.set_result(None)
        elif self.next < self.total:
            self.send(self.next)
            self.next += 1

    def refill(self) -> None:
        for _ in range(self.window):
            if self.next >= self.total:
                break
            self.send(self.next)
            self.next += 1

    async def run(self) -> tuple[int, float]:
        t0 = self.last = time.perf_counter()
        self.refill()
        while not self.done.done():
            await asyncio.wait([self.done], timeout=0.1)
            now = time.perf_counter()
            if self.done.done():
                break
            if now - self.last > 0.3:
                if self.next >= self.total:
                    break  # everything was sent; the rest is lost
                self.last = now
                self.refill()
            if now - t0 > 120:
                raise TimeoutError("UDP flood did not finish in 120 s")
        return len(self.received), self.last - t0


async def phase_udp(
    proxy: tuple[str, int],
    port: int,
    pings: int,
    datagrams: int,
    window: int,
    pids: tuple[int, int] = (0, 0),
    one_cpu_pings: int = 0,
) -> dict[str, float]:
    """SOCKS5 UDP ASSOCIATE: sequential ping p50, then windowed echo throughput; with
    ``pids`` (client, server) also their CPU per ping, and with ``one_cpu_pings`` the p50
    of that many more pings with every thread of the client, the server and this process
    on one CPU (no cross-CPU wake-ups: the pings then cost the three processes' work
    alone, whichever CPUs the scheduler happened to give them)."""
    loop = asyncio.get_running_loop()
    header = b"\x00\x00\x00\x01" + socket.inet_aton(HOST) + struct.pack("!H", port)
    pad = PAYLOAD[: UDP_SIZE - 8]
    transport, proto = await loop.create_datagram_endpoint(_UdpClient, local_addr=(HOST, 0))
    ctrl: socket.socket | None = None
    try:
        local = transport.get_extra_info("sockname")
        ctrl, (bhost, bport) = await socks_request(proxy, 3, (local[0], local[1]))
        if bhost in ("0.0.0.0", "::"):
            bhost = proxy[0]
        relay = (bhost, bport)

        def send(seq: int) -> None:
            transport.sendto(header + struct.pack("!Q", seq) + pad, relay)

        # Pings use sequence numbers from 2**40 up, so late ones never count in the flood.
        pending: dict[int, asyncio.Future[float]] = {}

        def on_ping(seq: int) -> None:
            fut = pending.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        proto.handler = on_ping
        lost = 0
        next_seq = 1 << 40

        async def ping_p50(count: int) -> float:
            nonlocal lost, next_seq
            samples: list[float] = []
            for _ in range(count):
                seq, next_seq = next_seq, next_seq + 1
                fut: asyncio.Future[float] = loop.create_future()
                pending[seq] = fut
                t0 = time.perf_counter()
                send(seq)
                try:
                    t1 = await asyncio.wait_for(fut, 2.0)
                except TimeoutError:
                    pending.pop(seq, None)
                    lost += 1
                    if lost > max(5, pings // 10):
                        raise ConnectionError(f"UDP: {lost} pings lost") from None
                    continue
                samples.append((t1 - t0) * 1000)
            return percentile(samples, 50) if samples else float("nan")

        await ping_p50(5)  # warm-up (the UoT stream opens)
        cpu0 = [cpu_ns(p) for p in pids] if all(pids) else []
        p50 = await ping_p50(pings)
        cpu_us = [(cpu_ns(p) - c) / 1000 / pings for p, c in zip(pids, cpu0, strict=False)]
        one_cpu: dict[str, float] = {}
        if one_cpu_pings and all(pids):
            masks = pin_threads([*pids, os.getpid()], {min(os.sched_getaffinity(0))})
            try:
                await ping_p50(5)
                one_cpu["udp_p50_one_cpu_ms"] = await ping_p50(one_cpu_pings)
            finally:
                restore_threads(masks)

        flood = _Flood(send, datagrams, window)
        proto.handler = flood.on_datagram
        got, elapsed = await flood.run()
    finally:
        transport.close()
        if ctrl is not None:
            ctrl.close()
    if got < datagrams // 2:
        raise ConnectionError(f"UDP flood: only {got} of {datagrams} echoed")
    per_ping = {"udp_cpu_client_us": cpu_us[0], "udp_cpu_server_us": cpu_us[1]} if cpu_us else {}
    return {
        **per_ping,
        **one_cpu,
        "udp_p50_ms": p50,
        "udp_dps": got / elapsed if elapsed > 0 else 0.0,
        "udp_loss": 1 - got / datagrams,
    }


# ----------------------------------------------------------------------------- main

#: Phase names, in the order they run (``--phases`` picks a subset).
PHASES = (
    "download",
    "upload",
    "two-downloads",
    "rss-after-bulk",
    "latency",
    "small-requests",
    "concurrent",
    "udp",
    "idle-rss",
    "new-sessions",
)


async def run(args: argparse.Namespace) -> dict[str, float]:
    host, _, port = args.socks.rpartition(":")
    proxy = (host, int(port))
    targets = Targets()
    await targets.start()
    results: dict[str, float] = {}

    wanted = set(args.phases.split(",")) if args.phases else set(PHASES)

    async def phase(name: str, coro: Coroutine[Any, Any, dict[str, float]], limit: float) -> None:
        if name not in wanted:
            coro.close()  # not run: no "never awaited" warning
            return
        t0 = time.perf_counter()
        try:
            results.update(await asyncio.wait_for(coro, limit))
        except TimeoutError:
            raise TimeoutError(f"phase {name} took more than {limit:.0f} s") from None
        print(f"loadgen: {name} done in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    try:
        # Bulk first, in fresh processes: later phases (1000 idle streams) grow the heap,
        # which changes the allocator behaviour the bulk figures depend on.
        bulk_timeout = 60 + args.bulk_bytes / 2e6  # at least 2 MB/s
        for download in (True, False):
            await phase(
                "download" if download else "upload",
                _bulk(
                    proxy, targets.bulk, args.bulk_bytes, download, args.client_pid, args.server_pid
                ),
                bulk_timeout,
            )
        await phase(
            "two-downloads",
            phase_two_downloads(proxy, targets.bulk, args.bulk_bytes, args.server_pid),
            bulk_timeout,
        )
        await phase(
            "rss-after-bulk", phase_rss_after_bulk(args.client_pid, args.server_pid, args.quiet), 30
        )
        await phase("latency", phase_latency(proxy, targets.echo, args.latency_iters), 120)
        await phase(
            "small-requests", phase_small_requests(proxy, targets.http, args.small_requests), 120
        )
        await phase(
            "concurrent",
            phase_concurrent(proxy, targets.echo, args.concurrent, args.concurrent_bytes),
            180,
        )
        await phase(
            "udp",
            phase_udp(
                proxy,
                targets.udp_echo,
                args.udp_pings,
                args.udp_datagrams,
                32,
                (args.client_pid, args.server_pid),
                args.udp_pings,
            ),
            180,
        )
        await phase(
            "idle-rss",
            phase_idle_rss(
                proxy,
                targets.idle,
                args.idle_streams,
                args.client_pid,
                args.server_pid,
                args.quiet,
            ),
            180,
        )
        host, _, port = args.server.rpartition(":")
        await phase(
            "new-sessions",
            phase_new_sessions(
                (host, int(port)), args.password, targets.echo, args.new_sessions, args.server_pid
            ),
            180,
        )
    finally:
        await targets.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socks", required=True, metavar="HOST:PORT")
    parser.add_argument("--client-pid", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--bulk-bytes", type=int, default=512 << 20)
    parser.add_argument("--latency-iters", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--concurrent-bytes", type=int, default=256 << 10)
    parser.add_argument("--idle-streams", type=int, default=1000)
    parser.add_argument("--udp-pings", type=int, default=300)
    parser.add_argument("--udp-datagrams", type=int, default=20000)
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="AnyTLS server")
    parser.add_argument("--password", required=True)
    parser.add_argument("--new-sessions", type=int, default=300)
    parser.add_argument("--small-requests", type=int, default=100)
    parser.add_argument(
        "--quiet", type=float, default=QUIET, help="seconds of quiet before RSS readings"
    )
    parser.add_argument(
        "--phases", default="", help=f"comma-separated subset of {', '.join(PHASES)} (default all)"
    )
    args = parser.parse_args()
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(run(args))
    else:
        uvloop.install()
        results = asyncio.run(run(args))
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
