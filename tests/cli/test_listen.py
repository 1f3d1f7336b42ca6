"""Listening sockets: bound once by the parent and shared by the workers (issue 17 #1, #2)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from anytls.core.auth import build_preface
from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess


def _second_instance(kind: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = run_cli(kind, "-l", f"127.0.0.1:{port}", "--workers", "2", *extra, timeout=5)
    assert time.monotonic() - started < 5
    return result


def test_second_server_on_a_held_port_exits_nonzero(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "first-password", "--workers", "2", "--log-level", "info"]
    with AnyTLSProcess.server(port, args, tmp_path):
        result = _second_instance("server", port, "-p", "other-password")
        assert result.returncode != 0
        assert "address already in use" in result.stderr.lower()
        assert "listening on" not in result.stderr


def test_second_client_on_a_held_port_exits_nonzero(tmp_path: Path) -> None:
    port = free_port()
    args = ["-s", "127.0.0.1:9", "-p", "pw", "--workers", "2", "--log-level", "info"]
    with AnyTLSProcess.client(port, args, tmp_path):
        result = _second_instance("client", port, "-s", "127.0.0.1:9", "-p", "pw")
        assert result.returncode != 0
        assert "address already in use" in result.stderr.lower()


def _accepts(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(2)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def test_ipv4_wildcard_listens_on_ipv4_only(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "pw", "--workers", "1", "--log-level", "info"]
    with AnyTLSProcess.server(port, args, tmp_path, listen_host="0.0.0.0") as server:
        assert _accepts("127.0.0.1", port)
        assert not _accepts("::1", port)
        assert f"listening on 0.0.0.0:{port} (IPv4 only)" in server.log_text()


def test_ipv6_wildcard_is_dual_stack_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "pw", "--workers", "1", "--log-level", "info"]
    with AnyTLSProcess.server(port, args, tmp_path, listen_host="[::]") as server:
        assert _accepts("::1", port)
        assert _accepts("127.0.0.1", port)
        assert f"listening on [::]:{port} (IPv4 and IPv6)" in server.log_text()


def test_bound_socket_has_no_reuseport() -> None:
    from anytls.cli import _run

    (sock,) = _run.bind_tcp("127.0.0.1", 0)
    with sock:
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with pytest.raises(OSError):
            _run.bind_tcp("127.0.0.1", sock.getsockname()[1])


@async_test
async def test_proxy_protocol_server_accepts_on_the_parents_socket(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "a-long-password", "--accept-proxy-protocol", "--workers", "2"]
    async with AnyTLSProcess.server(port, args, tmp_path) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 443\r\n")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(build_preface("wrong-password", 0))
        await server.wait_log(r"rejected 192\.0\.2\.7:4711: wrong password")
        writer.close()


def _connections_queued(port: int, count: int, timeout: float) -> int:
    """Open ``count`` connections to a listener that does not accept; return how many the
    kernel completed (queued for ``accept``) within ``timeout``. A full accept queue drops
    the SYNs of the rest, which would then wait a second for their retransmission."""
    import select

    socks = [socket.socket() for _ in range(count)]
    try:
        poller = select.poll()
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            poller.register(sock, select.POLLOUT)
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < count and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                done.add(fd)
                poller.unregister(fd)
        return len(done)
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("kind", ["client", "server"])
def test_listener_queues_a_burst_of_connections(kind: str, tmp_path: Path) -> None:
    """Both programs listen with a backlog of thousands, not asyncio's default 100: 300
    connections at once (a browser or a benchmark opening many) all complete at once."""
    import signal

    port = free_port()
    if kind == "client":
        args = ["-s", "127.0.0.1:9", "-p", "pw", "--workers", "1"]
        proc = AnyTLSProcess.client(port, args, tmp_path)
    else:
        proc = AnyTLSProcess.server(port, ["-p", "pw", "--workers", "1"], tmp_path)
    with proc:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGSTOP)  # accepts nothing while the burst comes
        try:
            assert _connections_queued(port, 300, timeout=0.9) == 300
        finally:
            proc.proc.send_signal(signal.SIGCONT)
