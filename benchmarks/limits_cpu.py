#!/usr/bin/env python3
"""CPU the per-user token buckets add at full bulk speed: A/B, interleaved, many rounds.

    python benchmarks/limits_cpu.py [--rounds 8] [--mib 128]

Two ``anytls-server --workers 1`` processes on loopback, one plain and one with
``--speed-limit 100000`` (a limit loopback never reaches: the buckets are charged on every
read and flush but never wait). Each round downloads and uploads ``--mib`` MiB through each
of them (alternating which goes first) with an in-process client, and reads the server's
CPU time (utime + stime from /proc) around each transfer. Prints the median server
CPU-seconds per GB of each and their ratio; medians over interleaved rounds keep a busy
machine's noise out of the comparison as far as it can be.

Imports nothing from ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anytls import Client, ClientConfig

PASSWORD = "bench"
CHUNK = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(port: int, extra: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "anytls-server"
    argv = [str(exe), "-l", f"127.0.0.1:{port}", "-p", PASSWORD, "--workers", "1"]
    argv += ["--log-level", "warning", "--stats-interval", "0", "--no-share-links", *extra]
    log = open(workdir / f"server-{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=workdir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server on {port} did not start; see {workdir}")


async def source(nbytes: int) -> tuple[asyncio.Server, int]:
    block = bytes(CHUNK)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while sent < nbytes:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def sink(nbytes: int) -> tuple[asyncio.Server, int, asyncio.Queue[None]]:
    done: asyncio.Queue[None] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < nbytes and (data := await reader.read(1 << 20)):
            got += len(data)
        done.put_nowait(None)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), done


async def transfer(
    client: Client, pid: int, nbytes: int, src: int, dst: int, done: asyncio.Queue[None]
) -> tuple[float, float]:
    """(download, upload) server CPU-seconds per GB."""
    before = cpu_seconds(pid)
    reader, writer = await client.open_connection("127.0.0.1", src)
    got = 0
    while got < nbytes and (data := await reader.read(1 << 20)):
        got += len(data)
    writer.close()
    down = (cpu_seconds(pid) - before) / (nbytes / 1e9)
    before = cpu_seconds(pid)
    reader, writer = await client.open_connection("127.0.0.1", dst)
    block = bytes(CHUNK)
    for _ in range(nbytes // CHUNK):
        writer.write(block)
        await writer.drain()
    await done.get()
    writer.close()
    up = (cpu_seconds(pid) - before) / (nbytes / 1e9)
    return down, up


async def main(rounds: int, mib: int) -> None:
    nbytes = mib << 20
    work = Path(tempfile.mkdtemp(prefix="anytls-limits-cpu-"))
    ports = {"plain": free_port(), "limited": free_port()}
    procs = {
        "plain": start_server(ports["plain"], [], work),
        "limited": start_server(ports["limited"], ["--speed-limit", "100000"], work),
    }
    src_server, src = await source(nbytes)
    dst_server, dst, done = await sink(nbytes)
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "limited": []}
    try:
        for index in range(rounds):
            order = ["plain", "limited"] if index % 2 == 0 else ["limited", "plain"]
            for name in order:
                config = ClientConfig("127.0.0.1", ports[name], PASSWORD, insecure=True)
                async with Client(config) as client:
                    figures = await transfer(client, procs[name].pid, nbytes, src, dst, done)
                results[name].append(figures)
                print(f"round {index + 1} {name}: down {figures[0]:.3f} up {figures[1]:.3f}")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()
        src_server.close()
        dst_server.close()
    for column, label in ((0, "download"), (1, "upload")):
        plain = statistics.median(r[column] for r in results["plain"])
        limited = statistics.median(r[column] for r in results["limited"])
        print(
            f"server CPU-s/GB {label}: plain {plain:.3f}, with buckets {limited:.3f} "
            f"({(limited / plain - 1) * 100:+.1f} %)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--mib", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.mib))
