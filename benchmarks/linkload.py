#!/usr/bin/env python3
"""Load generator for ``benchmarks/bench_link.py``: runs in the client namespace of an
emulated link, hosts its targets in the server namespace, drives the proxy client's
SOCKS5 port and prints ONE line of JSON.

    ip netns exec CLIENT_NS python benchmarks/linkload.py --socks 127.0.0.1:1080 \\
        --server-ns SERVER_NS --base-port 7000

The target sockets are created inside the server namespace (``setns`` for the moment of
``socket()``; the sockets stay there), so the proxy server reaches them on its own loopback
and only the AnyTLS link crosses the emulated link. Targets listen on 0.0.0.0 in the
server namespace, so every 127.x.y.z address is a distinct destination reaching the
same echo server ("a destination not reached before").

Phases, in this order, on freshly started proxy processes:

- ``cold_ms``: the first request after the client started: SOCKS5 CONNECT, write 1 byte,
  time until the echoed byte is back (includes the client's TLS session set-up);
- ``warm_new_ms``: the same to a destination never used before, on the now warm session
  (0.3 s after the previous stream closed, so the session is back in the pool); the median
  of ``--new-dests`` tries;
- ``seq_p50_ms`` / ``seq_p95_ms``: ``--seq`` sequential open + 1-byte echo + close to the
  destination of the cold request;
- ``udp_p50_ms``: SOCKS5 UDP ASSOCIATE, sequential 512-byte pings (loadgen's UDP phase);
- ``par_s``: ``--parallel`` downloads of ``--par-kib`` KiB at once, wall time;
- ``bulk_MBps``: one download for ``--bulk-seconds`` (time-bounded: with loss on a long
  link a fixed size would take anything from seconds to minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import loadgen
from linkemu import in_netns

ECHO_HOST = "127.0.0.1"


def _listener(ns: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


async def echo_once(proxy: tuple[str, int], host: str, port: int) -> float:
    """SOCKS5 CONNECT to host:port, send 1 byte, wait for it to come back: seconds."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    sock, _ = await loadgen.socks_request(proxy, 1, (host, port))
    try:
        await loop.sock_sendall(sock, b"x")
        await loadgen.recv_exact(sock, 1)
        return time.perf_counter() - t0
    finally:
        sock.close()


async def bulk_for(proxy: tuple[str, int], port: int, seconds: float) -> float:
    """One download for ``seconds`` from the request on: MB/s."""
    loop = asyncio.get_running_loop()
    sock = await loadgen.socks_connect(proxy, port)
    try:
        t0 = time.perf_counter()
        await loop.sock_sendall(sock, b"D" + struct.pack("!Q", 1 << 40))
        buf = bytearray(1 << 20)
        got = 0
        end = t0 + seconds

        async def pump() -> None:
            nonlocal got
            while True:
                n = await loop.sock_recv_into(sock, buf)
                if n == 0:
                    raise ConnectionError(f"bulk EOF after {got} bytes")
                got += n

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pump(), end - time.perf_counter())
        return got / 1e6 / (time.perf_counter() - t0)
    finally:
        sock.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    host, _, p = args.socks.rpartition(":")
    proxy = (host, int(p))
    loop = asyncio.get_running_loop()
    echo_port, bulk_port, udp_port = args.base_port, args.base_port + 1, args.base_port + 2
    servers = [
        await loop.create_server(loadgen.Echo, sock=_listener(args.server_ns, echo_port)),
        await loop.create_server(loadgen.Bulk, sock=_listener(args.server_ns, bulk_port)),
    ]
    udp, _ = await loop.create_datagram_endpoint(
        loadgen.UdpEcho, sock=_listener(args.server_ns, udp_port, socket.SOCK_DGRAM)
    )
    out: dict[str, float] = {}

    def done(name: str, t0: float) -> None:
        print(f"linkload: {name} done in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    try:
        t0 = time.perf_counter()
        out["cold_ms"] = await echo_once(proxy, ECHO_HOST, echo_port) * 1000
        done("cold", t0)

        t0 = time.perf_counter()
        warm = []
        for i in range(args.new_dests):
            await asyncio.sleep(0.3)
            warm.append(await echo_once(proxy, f"127.0.{args.run_id % 250}.{10 + i}", echo_port))
        out["warm_new_ms"] = statistics.median(warm) * 1000
        done("warm new destination", t0)

        t0 = time.perf_counter()
        await asyncio.sleep(0.3)
        seq = [await echo_once(proxy, ECHO_HOST, echo_port) * 1000 for _ in range(args.seq)]
        out["seq_p50_ms"] = loadgen.percentile(seq, 50)
        out["seq_p95_ms"] = loadgen.percentile(seq, 95)
        done("sequential", t0)

        t0 = time.perf_counter()
        await asyncio.sleep(0.3)
        loadgen.HOST = ECHO_HOST
        udp_res = await loadgen.phase_udp(proxy, udp_port, args.udp_pings, 64, 8)
        out["udp_p50_ms"] = udp_res["udp_p50_ms"]
        done("udp", t0)

        t0 = time.perf_counter()

        async def one() -> None:
            sock = await loadgen.socks_connect(proxy, bulk_port)
            try:
                await loadgen._download(sock, args.par_kib << 10)
            finally:
                sock.close()

        await asyncio.gather(*(one() for _ in range(args.parallel)))
        out["par_s"] = time.perf_counter() - t0
        done("parallel", t0)

        t0 = time.perf_counter()
        out["bulk_MBps"] = await bulk_for(proxy, bulk_port, args.bulk_seconds)
        done("bulk", t0)
    finally:
        for s in servers:
            s.close()
        udp.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socks", required=True, metavar="HOST:PORT")
    parser.add_argument("--server-ns", required=True)
    parser.add_argument("--base-port", type=int, default=7000)
    parser.add_argument("--run-id", type=int, default=0, help="picks the new destinations")
    parser.add_argument("--new-dests", type=int, default=3)
    parser.add_argument("--seq", type=int, default=30)
    parser.add_argument("--udp-pings", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--par-kib", type=int, default=256)
    parser.add_argument("--bulk-seconds", type=float, default=4.0)
    args = parser.parse_args()
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
