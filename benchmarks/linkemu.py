#!/usr/bin/env python3
"""A user-space link emulator: two network namespaces joined by a relay with delay, loss,
a rate limit, a bounded queue and a link-down switch (the kernel here has no ``sch_netem``).

    python benchmarks/linkemu.py calibrate              # the relay's ceiling + accuracy checks
    python benchmarks/linkemu.py run --rtt 40ms --loss 0.5 --rate 50mbit -- CMD ...

Layout (needs root; network namespaces and ``/dev/net/tun``)::

    client netns  lemu<pid>x<n>c            server netns  lemu<pid>x<n>s
      lo 127.0.0.1                            lo 127.0.0.1
      tun0 10.77.0.1/24  <== relay process ==>  tun0 10.77.0.2/24

The relay (a child process, ``_relay`` sub-command) opens one TUN device inside each
namespace (the TUN's file descriptor keeps working from any namespace), reads raw IPv4/IPv6
packets from one and writes them into the other. TCP, UDP and ICMP run end to end between
the namespaces' own kernel stacks; only the relay sits in between. Per direction it models:

- loss: each packet is dropped at random with the given probability (on arrival);
- rate: a bottleneck serialising ``len * 8 / rate`` seconds per packet (a FIFO drained at
  the rate; 0 = unlimited);
- queue: at most ``queue`` packets (default 1000) waiting for the bottleneck; more are
  tail-dropped. Packets already serialised ("on the wire") do not count;
- delay: a constant one-way propagation delay after serialisation (RTT = the two delays);
- down: a switch that drops every packet (queued and in-flight ones too) until it is up.

A constant delay and a FIFO keep every direction in order, so a deque per direction with
release times is the timer (no heap needed); the loop is one thread on ``select`` with
microsecond timeouts, reading packets in batches. ``calibrate`` prints its ceiling.

Python API (used by ``benchmarks/bench_link.py`` and the tests)::

    with LinkEmulator(LinkConfig.symmetric(rtt=0.04, loss=0.005, rate=50e6)) as link:
        subprocess.run(link.exec_argv(link.server_ns, ["..."]))   # a process in a namespace
        with in_netns(link.client_ns):                            # or a socket made there
            sock = socket.create_connection((SERVER_IP, port))
        link.set(down=LinkParams(up=False))                       # pull the cable one way

Namespaces get unique names (pid + counter) and are deleted on exit, also on errors,
Ctrl-C and SIGTERM (kill processes you started inside them first).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import itertools
import json
import os
import random
import re
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

CLIENT_IP = "10.77.0.1"
SERVER_IP = "10.77.0.2"
PREFIX = 24
TUN_NAME = "tun0"
MTU = 1500
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

_COUNTER = itertools.count(1)


class LinkEmulatorError(RuntimeError):
    """The emulator could not be set up (not root, no netns/TUN support, relay died)."""


# ----------------------------------------------------------------------------- settings


@dataclass
class LinkParams:
    """One direction of the link."""

    delay: float = 0.0  # one-way propagation delay, seconds
    loss: float = 0.0  # probability a packet is dropped, 0..1
    rate: float = 0.0  # bottleneck, bits per second (0 = unlimited)
    queue: int = 1000  # packets that may wait for the bottleneck (tail drop beyond)
    up: bool = True  # False: drop everything

    def describe(self) -> str:
        rate = f"{self.rate / 1e6:g} Mbit/s" if self.rate else "unlimited"
        state = "" if self.up else ", DOWN"
        return (
            f"delay {self.delay * 1000:g} ms, loss {self.loss * 100:g}%, rate {rate},"
            f" queue {self.queue}{state}"
        )


@dataclass
class LinkConfig:
    """Both directions: ``up`` = client → server, ``down`` = server → client."""

    up: LinkParams = field(default_factory=LinkParams)
    down: LinkParams = field(default_factory=LinkParams)
    seed: int | None = None

    @classmethod
    def symmetric(
        cls, rtt: float = 0.0, loss: float = 0.0, rate: float = 0.0, queue: int = 1000
    ) -> LinkConfig:
        """Half the RTT each way; the same loss probability and rate in both directions."""
        p = LinkParams(delay=rtt / 2, loss=loss, rate=rate, queue=queue)
        return cls(up=p, down=replace(p))

    def describe(self) -> str:
        if self.up == self.down:
            return f"each direction: {self.up.describe()}"
        return f"client→server: {self.up.describe()}; server→client: {self.down.describe()}"


def parse_duration(text: str) -> float:
    """``40ms``, ``0.04s``, ``40`` (milliseconds) → seconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|us)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 40ms, 0.15s)")
    value, unit = float(m.group(1)), m.group(2) or "ms"
    return value * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]


def parse_rate(text: str) -> float:
    """``50mbit``, ``50M``, ``1gbit``, ``800kbit``, ``0`` (unlimited) → bits per second."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmg]?)(bit|bps|b)?(/s)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a rate: {text!r} (e.g. 50mbit, 1gbit)")
    return float(m.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


# ----------------------------------------------------------------------------- namespaces


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name``.

    Sockets (and TUN devices) created inside stay in that namespace after the block; the
    thread returns to its previous namespace on exit.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LinkEmulatorError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def open_tun(name: str = TUN_NAME) -> int:
    """Create a TUN device (IPv4/IPv6 packets, no header) in this thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


# ----------------------------------------------------------------------------- the relay


class Direction:
    """One direction: packets read from ``src`` are written to ``dst`` when due."""

    __slots__ = (
        "bytes",
        "down_drops",
        "dst",
        "forwarded",
        "in_flight",
        "loss_drops",
        "max_queue",
        "name",
        "p",
        "packets",
        "queue_drops",
        "serial_end",
        "src",
        "tracer",
        "waiting",
        "write_errors",
    )

    def __init__(self, name: str, src: int, dst: int, p: LinkParams) -> None:
        self.name, self.src, self.dst, self.p = name, src, dst, p
        self.tracer: Any = None  # callable(now, direction, packet, fate) or None
        self.in_flight: deque[tuple[float, bytes]] = deque()  # (release time, packet)
        self.waiting: deque[float] = deque()  # serialisation end times not yet reached
        self.serial_end = 0.0
        self.packets = self.bytes = self.forwarded = 0
        self.loss_drops = self.queue_drops = self.down_drops = self.write_errors = 0
        self.max_queue = 0

    def set(self, p: LinkParams) -> None:
        self.p = p
        if not p.up:
            self.down_drops += len(self.in_flight)
            self.in_flight.clear()
            self.waiting.clear()
            self.serial_end = 0.0

    def receive(self, now: float, rnd: Any, batch: int = 64) -> None:
        """Read up to ``batch`` packets and schedule them."""
        p = self.p
        read, src, tr = os.read, self.src, self.tracer
        for _ in range(batch):
            try:
                pkt = read(src, 65536)
            except BlockingIOError:
                return
            self.packets += 1
            n = len(pkt)
            self.bytes += n
            if not p.up:
                self.down_drops += 1
                if tr is not None:
                    tr(now, self.name, pkt, "drop:down")
                continue
            if p.loss and rnd() < p.loss:
                self.loss_drops += 1
                if tr is not None:
                    tr(now, self.name, pkt, "drop:loss")
                continue
            if p.rate:
                waiting = self.waiting
                while waiting and waiting[0] <= now:
                    waiting.popleft()
                if len(waiting) >= p.queue:
                    self.queue_drops += 1
                    if tr is not None:
                        tr(now, self.name, pkt, "drop:queue")
                    continue
                end = max(now, self.serial_end) + n * 8 / p.rate
                self.serial_end = end
                waiting.append(end)
                if len(waiting) > self.max_queue:
                    self.max_queue = len(waiting)
                at = end + p.delay
            else:
                at = now + p.delay
            self.in_flight.append((at, pkt))
            if tr is not None:
                tr(now, self.name, pkt, f"due+{(at - now) * 1000:.1f}ms")

    def release(self, now: float) -> float | None:
        """Write every packet that is due; the time of the next one (None: none left)."""
        q = self.in_flight
        write, dst = os.write, self.dst
        while q:
            at, pkt = q[0]
            if at > now:
                return at
            q.popleft()
            try:
                write(dst, pkt)
                self.forwarded += 1
            except OSError:  # EIO while the device is going away, ENOBUFS ...
                self.write_errors += 1
        return None

    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "forwarded": self.forwarded,
            "loss_drops": self.loss_drops,
            "queue_drops": self.queue_drops,
            "down_drops": self.down_drops,
            "write_errors": self.write_errors,
            "max_queue": self.max_queue,
            "in_flight": len(self.in_flight),
        }


def relay_main(client_ns: str, server_ns: str, config: LinkConfig) -> int:
    """Open the TUNs, print ``ready``, forward until stdin closes (or SIGTERM).

    Commands on stdin, one JSON object per line: ``{"up": {...}, "down": {...}}`` sets
    parameters (fields of :class:`LinkParams`, missing ones keep their value);
    ``{"stats": true}`` prints the counters as one JSON line.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the controller, which
    # closes our stdin: that is how the relay stops.
    with contextlib.suppress(OSError):  # punctual timers on a busy machine (root only)
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    with in_netns(client_ns):
        tun_c = open_tun()
    with in_netns(server_ns):
        tun_s = open_tun()
    up = Direction("c>s", tun_c, tun_s, config.up)
    down = Direction("s>c", tun_s, tun_c, config.down)
    rnd = random.Random(config.seed).random
    ctl = sys.stdin.fileno()
    os.set_blocking(ctl, False)
    pending = b""
    print("ready", flush=True)
    fds = [tun_c, tun_s, ctl]
    now = time.monotonic
    timeout: float | None = None
    while True:
        readable, _, _ = select.select(fds, [], [], timeout)
        t = now()
        for fd in readable:
            if fd == tun_c:
                up.receive(t, rnd)
            elif fd == tun_s:
                down.receive(t, rnd)
            else:
                try:
                    data = os.read(ctl, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return 0
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        _command(json.loads(line), up, down)
        t = now()
        n1 = up.release(t) if up.in_flight else None
        n2 = down.release(t) if down.in_flight else None
        nxt = n1 if n2 is None else (n2 if n1 is None else min(n1, n2))
        timeout = None if nxt is None else max(0.0, nxt - now())


class Tracer:
    """Writes one line per packet the relay reads: time, direction, a summary, its fate."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - closed by the trace command
        self.t0 = time.monotonic()

    def __call__(self, now: float, direction: str, pkt: bytes, fate: str) -> None:
        self.file.write(
            f"{(now - self.t0) * 1000:10.3f} {direction} {describe_packet(pkt)} {fate}\n"
        )

    def close(self) -> None:
        self.file.close()


TCP_FLAGS = "FSRPAUEC"


def describe_packet(pkt: bytes) -> str:
    """``TCP 10.77.0.1:4000>10.77.0.2:443 [S] len=0`` and the like (IPv4; else a size)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return f"non-IPv4 {len(pkt)} B"
    ihl = (pkt[0] & 0x0F) * 4
    proto = pkt[9]
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    if proto in (6, 17) and len(pkt) >= ihl + 8:
        sport, dport = struct.unpack_from("!HH", pkt, ihl)
        if proto == 6 and len(pkt) >= ihl + 20:
            flags = pkt[ihl + 13]
            seq, ack = struct.unpack_from("!II", pkt, ihl + 4)
            names = "".join(c for i, c in enumerate(TCP_FLAGS) if flags >> i & 1)
            payload = len(pkt) - ihl - (pkt[ihl + 12] >> 4) * 4
            return f"TCP {src}:{sport}>{dst}:{dport} [{names}] seq={seq} ack={ack} len={payload}"
        return f"UDP {src}:{sport}>{dst}:{dport} len={len(pkt) - ihl - 8}"
    return f"proto {proto} {src}>{dst} {len(pkt)} B"


def _command(cmd: dict[str, Any], up: Direction, down: Direction) -> None:
    for key, d in (("up", up), ("down", down)):
        if key in cmd:
            d.set(replace(d.p, **cmd[key]))
    if "trace" in cmd:
        if isinstance(up.tracer, Tracer):
            up.tracer.close()
        tracer = Tracer(cmd["trace"]) if cmd["trace"] else None
        up.tracer = down.tracer = tracer
    if cmd.get("stats"):
        if isinstance(up.tracer, Tracer):
            up.tracer.file.flush()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "up": up.stats(),
            "down": down.stats(),
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "params": {"up": asdict(up.p), "down": asdict(down.p)},
        }
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


# ----------------------------------------------------------------------------- controller

_ACTIVE: list[LinkEmulator] = []


@atexit.register
def _close_all() -> None:
    for link in list(_ACTIVE):
        with contextlib.suppress(Exception):
            link.close()


class LinkEmulator:
    """Two namespaces and the relay between them; a context manager.

    ``client_ns`` / ``server_ns`` are the namespace names, reachable from each other at
    :data:`CLIENT_IP` / :data:`SERVER_IP`; each has its own loopback.
    """

    def __init__(self, config: LinkConfig | None = None, tag: str = "") -> None:
        self.config = config or LinkConfig()
        base = f"lemu{os.getpid()}x{next(_COUNTER)}{tag}"
        self.client_ns, self.server_ns = base + "c", base + "s"
        self.relay: subprocess.Popen[str] | None = None
        self._created: list[str] = []
        self._lock = threading.Lock()

    # -- life cycle

    def __enter__(self) -> LinkEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LinkEmulatorError("the link emulator needs root (network namespaces, TUN)")
        if not os.path.exists("/dev/net/tun"):
            raise LinkEmulatorError("/dev/net/tun is missing: no TUN support in this kernel")
        _ACTIVE.append(self)
        try:
            for ns in (self.client_ns, self.server_ns):
                _ip("netns", "add", ns)
                self._created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            self.relay = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "_relay",
                    self.client_ns,
                    self.server_ns,
                    json.dumps(_config_json(self.config)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            assert self.relay.stdout is not None
            line = self.relay.stdout.readline().strip()
            if line != "ready":
                self.relay.wait(5)
                raise LinkEmulatorError(
                    f"the relay did not start (rc={self.relay.returncode}, said {line!r})"
                )
            for ns, ip in ((self.client_ns, CLIENT_IP), (self.server_ns, SERVER_IP)):
                _ip("-n", ns, "link", "set", TUN_NAME, "mtu", str(MTU), "txqueuelen", "1000")
                _ip("-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", TUN_NAME)
                _ip("-n", ns, "link", "set", TUN_NAME, "up")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the relay and delete both namespaces (idempotent)."""
        relay, self.relay = self.relay, None
        if relay is not None:
            with contextlib.suppress(Exception):
                assert relay.stdin is not None
                relay.stdin.close()
            try:
                relay.wait(3)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
            with contextlib.suppress(Exception):
                assert relay.stdout is not None
                relay.stdout.close()
        while self._created:
            ns = self._created.pop()
            with contextlib.suppress(LinkEmulatorError):
                _ip("netns", "del", ns)
        with contextlib.suppress(ValueError):
            _ACTIVE.remove(self)

    # -- control

    def _send(self, cmd: dict[str, Any], reply: bool = False) -> dict[str, Any]:
        relay = self.relay
        if relay is None or relay.poll() is not None:
            raise LinkEmulatorError("the relay is not running")
        assert relay.stdin is not None and relay.stdout is not None
        with self._lock:
            relay.stdin.write(json.dumps(cmd) + "\n")
            relay.stdin.flush()
            if not reply:
                return {}
            line = relay.stdout.readline()
        if not line:
            raise LinkEmulatorError("the relay exited")
        out: dict[str, Any] = json.loads(line)
        return out

    def set(self, up: LinkParams | None = None, down: LinkParams | None = None) -> None:
        """Change one or both directions (takes effect for the next packet)."""
        cmd: dict[str, Any] = {}
        if up is not None:
            self.config.up = up
            cmd["up"] = asdict(up)
        if down is not None:
            self.config.down = down
            cmd["down"] = asdict(down)
        self._send(cmd)
        self.stats()  # a round trip: the relay has applied it when this returns

    def link_down(self) -> None:
        """Drop everything in both directions (queued and in-flight packets too)."""
        self.set(replace(self.config.up, up=False), replace(self.config.down, up=False))

    def link_up(self) -> None:
        self.set(replace(self.config.up, up=True), replace(self.config.down, up=True))

    def trace(self, path: str | Path | None) -> None:
        """Log every packet (time, direction, addresses, TCP flags, fate) to ``path``,
        appending; ``None`` stops and closes the file."""
        self._send({"trace": str(path) if path else None})
        self.stats()

    def stats(self) -> dict[str, Any]:
        """The relay's counters per direction and its CPU seconds."""
        return self._send({"stats": True}, reply=True)

    # -- running things

    def sysctl(self, setting: str) -> None:
        """``KEY=VALUE`` (e.g. ``net.ipv4.tcp_fastopen=3``) in both namespaces."""
        for ns in (self.client_ns, self.server_ns):
            proc = subprocess.run(
                self.exec_argv(ns, ["sysctl", "-q", "-w", setting]),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise LinkEmulatorError(f"sysctl {setting} in {ns}: {proc.stderr.strip()}")

    @staticmethod
    def exec_argv(ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns`` (``ip netns exec``; the pid stays the same)."""
        return ["ip", "netns", "exec", ns, *argv]


def _config_json(config: LinkConfig) -> dict[str, Any]:
    return {"up": asdict(config.up), "down": asdict(config.down), "seed": config.seed}


def _config_from_json(data: dict[str, Any]) -> LinkConfig:
    return LinkConfig(LinkParams(**data["up"]), LinkParams(**data["down"]), data.get("seed"))


# ----------------------------------------------------------------------------- measuring


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(
    ns: str, host: str, count: int = 10, interval: float = 0.0, timeout: float = 2.0
) -> list[float]:
    """ICMP echo round trips in seconds from namespace ``ns`` (lost ones are left out)."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    out: list[float] = []
    ident = os.getpid() & 0xFFFF
    try:
        sock.settimeout(timeout)
        for seq in range(count):
            payload = struct.pack("!d", time.perf_counter()) + bytes(48)
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload
            t0 = time.perf_counter()
            sock.sendto(pkt, (host, 0))
            deadline = t0 + timeout
            while True:
                sock.settimeout(max(0.001, deadline - time.perf_counter()))
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if typ == 0 and rid == ident and rseq == seq:
                    out.append(time.perf_counter() - t0)
                    break
            if interval:
                time.sleep(interval)
    finally:
        sock.close()
    return out


def tcp_connect_times(ns: str, host: str, port: int, count: int = 10) -> list[float]:
    """Seconds per TCP handshake (SYN → SYNACK, one round trip) from namespace ``ns``."""
    out = []
    for _ in range(count):
        with in_netns(ns):
            sock = socket.socket()
        with sock:
            t0 = time.perf_counter()
            sock.connect((host, port))
            out.append(time.perf_counter() - t0)
    return out


@contextlib.contextmanager
def tcp_sink(ns: str, port: int = 5201) -> Iterator[dict[str, int]]:
    """A TCP server in ``ns`` (a thread) that counts and discards what it receives; also
    serves ``D<n>``: sends n bytes. Yields a dict with ``received``."""
    with in_netns(ns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    counters = {"received": 0}
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                first = conn.recv(65536)
                if first[:1] == b"D":
                    n = int(first[1:].split(b"\n")[0])
                    chunk = bytes(1 << 20)
                    while n > 0:
                        conn.sendall(chunk[: min(n, len(chunk))])
                        n -= len(chunk)
                    return
                counters["received"] += len(first)
                while data := conn.recv(1 << 20):
                    counters["received"] += len(data)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield counters
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        srv.close()
        t.join(5)


def tcp_download(ns: str, host: str, port: int, nbytes: int, timeout: float = 60.0) -> float:
    """Download ``nbytes`` from a :func:`tcp_sink` over TCP; seconds from connect to last byte."""
    with in_netns(ns):
        sock = socket.socket()
    with sock:
        sock.settimeout(timeout)
        t0 = time.perf_counter()
        sock.connect((host, port))
        sock.sendall(b"D%d\n" % nbytes)
        got = 0
        buf = bytearray(1 << 20)
        while got < nbytes:
            n = sock.recv_into(buf)
            if n == 0:
                raise ConnectionError(f"download EOF after {got} of {nbytes} bytes")
            got += n
        return time.perf_counter() - t0


def tcp_download_for(ns: str, host: str, port: int, seconds: float) -> float:
    """Download from a :func:`tcp_sink` for ``seconds`` (from connect on): MB/s."""
    with in_netns(ns):
        sock = socket.socket()
    with sock:
        sock.settimeout(seconds + 10)
        t0 = time.perf_counter()
        sock.connect((host, port))
        sock.sendall(b"D%d\n" % (1 << 40))
        got = 0
        buf = bytearray(1 << 20)
        while time.perf_counter() - t0 < seconds:
            n = sock.recv_into(buf)
            if n == 0:
                raise ConnectionError(f"download EOF after {got} bytes")
            got += n
        return got / 1e6 / (time.perf_counter() - t0)


def udp_loss(link: LinkEmulator, count: int = 2000, port: int = 5202) -> float:
    """Fraction of ``count`` small UDP datagrams client → server that did not arrive."""
    with in_netns(link.server_ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(link.client_ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("0.0.0.0", port))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for i in range(count):
            tx.sendto(struct.pack("!I", i), (SERVER_IP, port))
            if i % 50 == 49:
                time.sleep(0.001)  # stay below any queue
        rx.settimeout(0.5 + 2 * link.config.up.delay)
        seen: set[int] = set()
        with contextlib.suppress(TimeoutError):
            while len(seen) < count:
                seen.add(struct.unpack("!I", rx.recv(64)[:4])[0])
    return 1 - len(seen) / count


def flood_pps(
    link: LinkEmulator, seconds: float = 2.0, size: int = 64, port: int = 5203
) -> dict[str, float]:
    """Blast UDP datagrams client → server for ``seconds``; what the relay forwarded.

    The sender is a separate process so it does not share a GIL with the receiver.
    """
    with in_netns(link.server_ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("0.0.0.0", port))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    rx.settimeout(0.5)
    sender = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"d=b'x'*{size}; a=('{SERVER_IP}',{port}); end=time.monotonic()+{seconds}\n"
        "while time.monotonic()<end:\n"
        "    for _ in range(200):\n"
        "        try: s.sendto(d,a)\n"
        "        except OSError: pass\n"
    )
    before = link.stats()
    proc = subprocess.Popen(link.exec_argv(link.client_ns, [sys.executable, "-c", sender]))
    received = 0
    t_first = t_last = 0.0
    with rx:
        deadline = time.monotonic() + seconds + 10
        while time.monotonic() < deadline:
            try:
                rx.recv(2048)
            except TimeoutError:
                if proc.poll() is not None:
                    break
                continue
            t_last = time.perf_counter()
            if not received:
                t_first = t_last
            received += 1
    proc.wait()
    after = link.stats()
    cpu = after["cpu_s"] - before["cpu_s"]
    fwd = after["up"]["forwarded"] - before["up"]["forwarded"]
    span = max(t_last - t_first, 1e-9)
    return {
        "forwarded": fwd,
        "pps": fwd / span,
        "received": received,
        "relay_cpu_s": cpu,
        "pps_per_cpu_s": fwd / cpu if cpu else 0.0,
        "span_s": span,
    }


def congestion_control() -> str:
    """The kernel's default TCP congestion control (new namespaces inherit it)."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "?"


def calibrate(args: argparse.Namespace) -> int:
    """Print the relay's ceiling and check delay, rate and loss against the settings."""
    print(
        f"link emulator calibration ({os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.2f}, TCP congestion control {congestion_control()})"
    )
    with LinkEmulator(LinkConfig()) as link, tcp_sink(link.server_ns) as sink:
        del sink
        rtts = ping(link.client_ns, SERVER_IP, 20)
        print(f"no delay: ping p50 {statistics.median(rtts) * 1000:.3f} ms (relay floor)")
        flood = flood_pps(link, seconds=args.seconds)
        print(
            f"ceiling, 64-byte UDP flood: {flood['pps']:,.0f} packets/s forwarded with the"
            f" relay at {100 * flood['relay_cpu_s'] / flood['span_s']:.0f}% of a CPU"
            f" ({flood['pps_per_cpu_s']:,.0f} packets per relay CPU-second)"
        )
        for _ in range(2):  # warm-up + measure
            before = link.stats()
            size = args.mib << 20
            secs = tcp_download(link.client_ns, SERVER_IP, 5201, size)
            after = link.stats()
        fwd = after["down"]["forwarded"] - before["down"]["forwarded"]
        cpu = after["cpu_s"] - before["cpu_s"]
        print(
            f"ceiling, TCP download of {args.mib} MiB: {size * 8 / secs / 1e6:,.0f} Mbit/s"
            f" goodput, {fwd / secs:,.0f} data packets/s, relay CPU {100 * cpu / secs:.0f}%"
            f" ({size * 8 / cpu / 1e6:,.0f} Mbit per relay CPU-second)"
        )
    for rtt in (0.040, 0.150):
        with LinkEmulator(LinkConfig.symmetric(rtt=rtt)) as link, tcp_sink(link.server_ns):
            icmp = ping(link.client_ns, SERVER_IP, 10)
            syn = tcp_connect_times(link.client_ns, SERVER_IP, 5201, 10)
            print(
                f"RTT {rtt * 1000:.0f} ms configured: ping p50 {statistics.median(icmp) * 1000:.2f}"
                f" ms (min {min(icmp) * 1000:.2f}, max {max(icmp) * 1000:.2f}), TCP connect p50"
                f" {statistics.median(syn) * 1000:.2f} ms"
            )
    rate = 50e6
    with (
        LinkEmulator(LinkConfig.symmetric(rtt=0.02, rate=rate)) as link,
        tcp_sink(link.server_ns),
    ):
        size = 8 << 20
        tcp_download(link.client_ns, SERVER_IP, 5201, 1 << 20)
        secs = tcp_download(link.client_ns, SERVER_IP, 5201, size)
        st = link.stats()
        print(
            f"rate 50 Mbit/s, RTT 20 ms: TCP goodput {size * 8 / secs / 1e6:.1f} Mbit/s"
            f" (max {rate / 1e6 * 1448 / 1500:.1f} at MSS 1448 in 1500-byte packets);"
            f" queue peak {st['down']['max_queue']} packets, tail drops"
            f" {st['down']['queue_drops']}"
        )
    with LinkEmulator(LinkConfig.symmetric(loss=0.01)) as link:
        lost = udp_loss(link, 5000)
        print(f"loss 1% configured: {lost * 100:.2f}% of 5000 UDP datagrams lost")
    return 0


# ----------------------------------------------------------------------------- CLI


def _add_link_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtt", type=parse_duration, default=0.0, help="round trip, e.g. 40ms")
    p.add_argument("--loss", type=float, default=0.0, help="loss per direction, percent")
    p.add_argument("--rate", type=parse_rate, default=0.0, help="e.g. 50mbit (0 = unlimited)")
    p.add_argument("--queue", type=int, default=1000, help="packets (tail drop beyond)")
    p.add_argument("--seed", type=int, default=None, help="random seed for the loss")


def _link_config(args: argparse.Namespace) -> LinkConfig:
    c = LinkConfig.symmetric(args.rtt, args.loss / 100, args.rate, args.queue)
    c.seed = args.seed
    return c


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


STALE = re.compile(r"lemu(\d+)x\d+\w*[cs]")


def stale_namespaces() -> list[str]:
    """Namespaces named by this module whose creating process no longer runs (left by a
    ``kill -9``; the relay is gone with its TUNs, the names stay)."""
    try:
        names = [p.name for p in NETNS_DIR.iterdir()]
    except OSError:
        return []
    out = []
    for name in names:
        m = STALE.fullmatch(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            out.append(name)
    return sorted(out)


def _console(link: LinkEmulator, words: list[str]) -> None:
    """One command typed at ``linkemu.py run``."""
    if words == ["down"]:
        link.link_down()
    elif words == ["up"]:
        link.link_up()
    elif words == ["stats"]:
        print(json.dumps(link.stats(), indent=1), flush=True)
    elif words[:1] == ["trace"] and len(words) == 2:
        link.trace(None if words[1] == "off" else Path(words[1]).resolve())
    elif words:
        print(f"unknown command {' '.join(words)!r}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_relay"]:
        return relay_main(argv[1], argv[2], _config_from_json(json.loads(argv[3])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate", help="print the relay's ceiling and accuracy")
    cal.add_argument("--seconds", type=float, default=2.0, help="UDP flood duration")
    cal.add_argument("--mib", type=int, default=64, help="TCP download size, MiB")
    run = sub.add_parser(
        "run", help="set up a link, print the namespaces, run CMD in the client namespace"
    )
    _add_link_args(run)
    clean = sub.add_parser(
        "cleanup", help="delete namespaces left by emulators whose process is gone"
    )
    clean.add_argument("--dry-run", action="store_true", help="only list them")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ... (default: wait)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        if args.cmd == "calibrate":
            return calibrate(args)
        if args.cmd == "cleanup":
            for name in stale_namespaces():
                print(("would delete " if args.dry_run else "deleting ") + name)
                if not args.dry_run:
                    _ip("netns", "del", name)
            return 0
        config = _link_config(args)
        with LinkEmulator(config) as link:
            print(
                f"client netns {link.client_ns} ({CLIENT_IP}), server netns {link.server_ns}"
                f" ({SERVER_IP}); {config.describe()}",
                flush=True,
            )
            cmd = [c for c in args.command if c != "--"] if args.command else []
            if cmd:
                return subprocess.run(link.exec_argv(link.client_ns, cmd), check=False).returncode
            print("commands: down, up, stats, trace FILE, trace off; Ctrl-C ends", flush=True)
            for line in sys.stdin:
                _console(link, line.split())
            while True:  # stdin closed (e.g. run in the background): until a signal
                time.sleep(3600)
    except KeyboardInterrupt:
        return 130
    except LinkEmulatorError as exc:
        print(f"linkemu: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
