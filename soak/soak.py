"""Soak test: many concurrent streams for a long time, every byte checked, resources flat.

Starts ``anytls-server`` and ``anytls-client`` as processes on loopback, plus an echo target
in this process, then keeps ``--streams`` SOCKS5 connections busy for ``--duration``
seconds: each connection sends a random amount of random bytes, reads the echo back and
compares sha256, closes, and starts over. It samples RSS and open file descriptors of both
programs, and fails (exit 1) on any error, any mismatch, or resources that keep growing
after warm-up.

    python soak/soak.py --duration 600 --streams 1000      # the full soak
    python soak/soak.py --duration 10 --streams 50          # the CI version
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# The benchmark's helpers: ports picked below the ephemeral range, our programs' argv.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench import free_port
from bench import ours as program


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Stats:
    streams: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def socks_connect(
    port: int, host: str, dport: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    name = host.encode()
    writer.write(
        b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", dport)
    )
    head = await reader.readexactly(2 + 4)
    if head[:2] != b"\x05\x00" or head[3] != 0:
        raise ConnectionError(f"SOCKS5 refused: {head.hex()}")
    atyp = head[5]
    await reader.readexactly({1: 6, 4: 18}.get(atyp, 0) or (await reader.readexactly(1))[0] + 2)
    return reader, writer


async def worker(
    n: int, proxy: int, target: int, deadline: float, max_size: int, stats: Stats
) -> None:
    rng = random.Random(n)
    while time.monotonic() < deadline:
        size = rng.randint(1, max_size)
        payload = rng.randbytes(size)
        try:
            async with asyncio.timeout(60):
                reader, writer = await socks_connect(proxy, "127.0.0.1", target)
                writer.write(payload)
                got = await reader.readexactly(size)
                writer.close()
        except Exception as exc:  # every failure is recorded
            stats.errors.append(f"worker {n}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
            continue
        if hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
            stats.errors.append(f"worker {n}: sha256 mismatch on {size} bytes")
        stats.streams += 1
        stats.bytes += size


async def sampler(server: int, client: int, stats: Stats, start: float, every: float) -> None:
    while True:
        stats.samples.append(
            (
                time.monotonic() - start,
                rss_kib(server),
                fd_count(server),
                rss_kib(client),
                fd_count(client),
            )
        )
        await asyncio.sleep(every)


async def wait_port(port: int, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def start_programs(
    args: argparse.Namespace, sport: int, cport: int, logdir: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start our server and client with their logs in ``logdir``."""
    server_argv = [
        *program("server"),
        "-l",
        f"127.0.0.1:{sport}",
        "-p",
        "soak",
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--allow-private",
    ]  # fmt: skip  (the echo target is on loopback)
    client_argv = [*program("client"), "-l", f"127.0.0.1:{cport}", "-s", f"127.0.0.1:{sport}",
                   "-p", "soak", "--insecure", "--log-level", "warning",
                   "--max-streams-per-session", str(args.streams_per_session)]  # fmt: skip
    procs = []
    for name, argv in (("server", server_argv), ("client", client_argv)):
        with open(logdir / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs[0], procs[1]


async def soak(args: argparse.Namespace) -> int:
    sport, cport = free_port(), free_port()
    logdir = Path(tempfile.mkdtemp(prefix="anytls-soak-"))
    server, client = start_programs(args, sport, cport, logdir)
    echo = await asyncio.start_server(echo_handler, "127.0.0.1", 0, backlog=4096)
    target = echo.sockets[0].getsockname()[1]
    stats = Stats()
    try:
        await wait_port(sport)
        await wait_port(cport)
        for proc, name in ((server, "server"), (client, "client")):
            if proc.poll() is not None:  # e.g. its port was taken: another program answered
                raise RuntimeError(f"the {name} exited at start-up; see {logdir}/{name}.log")
        start = time.monotonic()
        deadline = start + args.duration
        sample = asyncio.create_task(
            sampler(server.pid, client.pid, stats, start, max(1.0, args.duration / 60))
        )
        await asyncio.gather(
            *(worker(i, cport, target, deadline, args.max_size, stats) for i in range(args.streams))
        )
        await asyncio.sleep(2)  # let every stream and idle session settle
        sample.cancel()
        stats.samples.append(
            (
                time.monotonic() - start,
                rss_kib(server.pid),
                fd_count(server.pid),
                rss_kib(client.pid),
                fd_count(client.pid),
            )
        )
    finally:
        for proc in (client, server):
            proc.send_signal(signal.SIGTERM)
        for proc in (client, server):
            proc.wait(10)
        echo.close()
    return report(args, stats, time.monotonic() - start, logdir)


def report(args: argparse.Namespace, stats: Stats, elapsed: float, logdir: Path) -> int:
    print(
        f"soak: {args.streams} concurrent workers, {elapsed:.0f} s, {stats.streams} streams, "
        f"{stats.bytes / 1e9:.2f} GB sha-checked, {len(stats.errors)} errors"
    )
    print("   t(s)  server RSS MiB  server fds  client RSS MiB  client fds")
    step = max(1, len(stats.samples) // 12)
    for t, srss, sfd, crss, cfd in stats.samples[::step] + stats.samples[-1:]:
        print(f"{t:7.0f}  {srss / 1024:14.1f}  {sfd:10d}  {crss / 1024:14.1f}  {cfd:10d}")
    failures = list(stats.errors[:10])
    warm = [s for s in stats.samples if s[0] >= elapsed * 0.25]
    if len(warm) >= 2:
        first, last = warm[0], warm[-1]
        for name, a, b in (("server RSS", first[1], last[1]), ("client RSS", first[3], last[3])):
            if b > a * 1.25 + 8192:
                failures.append(f"{name} grew after warm-up: {a / 1024:.1f} → {b / 1024:.1f} MiB")
    base = stats.samples[0]
    end = stats.samples[-1]
    # Idle pooled sessions stay open (one fd each on both sides) until their idle timeout.
    pooled = -(-args.streams // args.streams_per_session)
    if end[2] > base[2] + pooled + 16:
        failures.append(
            f"server fds {base[2]} at start, {end[2]} after all streams closed "
            f"(at most {pooled} idle sessions expected)"
        )
    if stats.streams == 0:
        failures.append("no stream completed")
    for line in failures:
        print("FAIL:", line)
    print(f"logs in {logdir}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--max-size", type=int, default=256 * 1024)
    parser.add_argument("--streams-per-session", type=int, default=50)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
