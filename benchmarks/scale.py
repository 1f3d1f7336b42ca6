#!/usr/bin/env python3
"""Scale figures of a panel node with many users, in one process, on loopback.

    python benchmarks/scale.py [--users 10000]

* pull: one ``GET user`` of N users from a loopback HTTP server answering with an Xboard
  shaped body (``{"users": [{"id", "uuid", "speed_limit", "device_limit"}]}``), parsed,
  then applied to a running server (user table, limits, counters): wall time of each part;
  and a 304 pull (``If-None-Match``), which is what every interval costs when nothing
  changed;
* memory: the Python heap the N users add to a server (tracemalloc), and RSS growth;
* lookup: the cost of checking one auth preface against N users (the digest lookup), for
  N = 10 and N = the given count: it must not grow with N;
* accounting: one per-second traffic collection over N users (``ServerStats.traffic``).

Imports nothing from ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import resource
import sys
import time
import tracemalloc
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

from anytls.aio.control import apply_users
from anytls.aio.server import AnyTLSServer, ServerConfig
from anytls.aio.tls import server_context
from anytls.core.auth import PrefaceReader, UserTable, build_preface
from anytls.panel.xboard import XboardClient, parse_users


def users_body(count: int) -> bytes:
    users = [
        {
            "id": i,
            "uuid": str(uuid.UUID(int=i)),
            "speed_limit": 100 if i % 3 == 0 else None,
            "device_limit": 3 if i % 5 == 0 else None,
        }
        for i in range(1, count + 1)
    ]
    return json.dumps({"users": users}, separators=(",", ":")).encode()


def serve_panel(body: bytes) -> tuple[ThreadingHTTPServer, int]:
    etag = hashlib.sha1(body).hexdigest()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if etag in (self.headers.get("If-None-Match") or ""):
                self.send_response(304)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_call_us(fn: Any, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def lookup_us(count: int, shared: bool = True) -> float:
    """One preface check; ``shared=False`` hashes every password per connection (as before)."""
    users = {str(i): str(uuid.UUID(int=i)) for i in range(1, count + 1)}
    table = UserTable(users) if shared else users
    preface = build_preface(str(uuid.UUID(int=count // 2 or 1)), 0)

    def check() -> None:
        assert PrefaceReader(table).feed(preface) is not None

    return per_call_us(check, 20000 if shared else 20)


async def main(count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"users": count}
    body = users_body(count)
    out["user_list_bytes"] = len(body)
    panel, port = serve_panel(body)
    client = XboardClient(f"http://127.0.0.1:{port}", "token", 1)

    t0 = time.perf_counter()
    fetched = await client.fetch("user", None)
    t1 = time.perf_counter()
    assert fetched is not None
    names, limits = parse_users(fetched[0])
    t2 = time.perf_counter()
    out["pull_http_ms"] = (t1 - t0) * 1000
    out["pull_parse_ms"] = (t2 - t1) * 1000

    t3 = time.perf_counter()
    assert await client.fetch("user", fetched[1]) is None
    out["pull_304_ms"] = (time.perf_counter() - t3) * 1000

    context = server_context(hosts=["localhost"])
    timed = AnyTLSServer(ServerConfig(users={}), context)
    t4 = time.perf_counter()
    apply_users(timed, names, limits)
    out["apply_ms"] = (time.perf_counter() - t4) * 1000
    # A second apply (a changed list) replaces the tables; what it costs each time.
    t5 = time.perf_counter()
    apply_users(timed, dict(names), limits)
    out["reapply_ms"] = (time.perf_counter() - t5) * 1000

    server = AnyTLSServer(ServerConfig(users={}), context)
    gc.collect()
    rss0 = rss_mib()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    apply_users(server, names, limits)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    heap = sum(s.size_diff for s in after.compare_to(before, "filename"))
    out["heap_mib"] = heap / 2**20
    out["rss_growth_mib"] = rss_mib() - rss0
    out["lookup_us_10_users"] = lookup_us(10)
    out[f"lookup_us_{count}_users"] = lookup_us(count)
    out[f"lookup_us_{count}_users_hashing_per_connection"] = lookup_us(count, shared=False)

    t6 = time.perf_counter()
    for _ in range(20):
        server.stats.traffic()
    out["accounting_tick_ms"] = (time.perf_counter() - t6) / 20 * 1000
    panel.shutdown()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    result = asyncio.run(main(parser.parse_args().users))
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    sys.exit(0)
