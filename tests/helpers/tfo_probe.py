"""Run inside a fresh network namespace (``unshare -n``): sessions through our client and
server with or without TCP Fast Open; prints JSON with the kernel's TFO counters and, per
session, whether the client's SYN carried data (TCP_INFO) and the time to the first byte.

    unshare -n python -m tests.helpers.tfo_probe [--fast-open] [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import time

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from tests.helpers.echo import tcp_echo_server

PASSWORD = "tfo-pw"
TCPI_OPT_SYN_DATA = 32  # linux/tcp.h: the SYN carried data that the peer acknowledged


def tcp_ext() -> dict[str, int]:
    """TcpExt counters of this namespace (/proc/net/netstat)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    names, values = lines[0][1:], lines[1][1:]
    return dict(zip(names, map(int, values), strict=True))


def syn_data(sock: socket.socket) -> bool:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return bool(info[5] & TCPI_OPT_SYN_DATA)  # tcpi_options is the sixth byte


async def main(fast_open: bool, sessions: int) -> dict[str, object]:
    server = await serve(
        ServerConfig(users={"u": PASSWORD}, allow_private=True, tcp_fast_open=fast_open),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig(
        "127.0.0.1", port, PASSWORD, insecure=True, tcp_fast_open=fast_open, reuse_sessions=False
    )
    before = tcp_ext()
    results = []
    async with tcp_echo_server() as echo, Client(config) as client:
        for _ in range(sessions):
            started = time.perf_counter()
            reader, writer = await client.open_connection(*echo)
            writer.write(b"x")
            await reader.readexactly(1)
            elapsed = time.perf_counter() - started
            (conn,) = client.sessions.values()
            results.append({"syn_data": syn_data(conn.get_extra_info("socket")), "s": elapsed})
            writer.close()
            await conn.wait_closed()
    after = tcp_ext()
    await server.close()
    counters = ("TCPFastOpenActive", "TCPFastOpenPassive", "TCPFastOpenCookieReqd")
    return {
        "sessions": results,
        "counters": {k: after.get(k, 0) - before.get(k, 0) for k in counters},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast-open", action="store_true")
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/tcp_fastopen", "w") as f:
        f.write("3")
    print(json.dumps(asyncio.run(main(args.fast_open, args.sessions))))
