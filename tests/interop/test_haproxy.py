"""Our server behind a real HAProxy sending the PROXY protocol (v1 and v2)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from anytls.errors import SessionClosedError
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port, wait_port

PASSWORD = "behind-haproxy"


def haproxy_bin() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(path).exists(), "haproxy is missing: scripts/test installs it"
    return path


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_real_client_address_through_haproxy(
    tmp_path: Path, send_proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anytls")

    async def main() -> None:
        config = ServerConfig(users={"u": PASSWORD}, allow_private=True, accept_proxy_protocol=True)
        server = await serve(config, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(
            "global\n  maxconn 100\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            f"frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n"
            f"backend b\n  server s1 127.0.0.1:{port} {send_proxy}\n"
        )
        log = (tmp_path / "haproxy.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, reaped in finally
            [haproxy_bin(), "-f", str(cfg), "-db"], stdout=log, stderr=log
        )
        try:
            await wait_port("127.0.0.1", front)
            async with (
                tcp_echo_server() as echo,
                Client(ClientConfig("127.0.0.1", front, PASSWORD, insecure=True)) as client,
            ):
                reader, writer = await client.open_connection(*echo)
                writer.write(b"hello through haproxy")
                assert await reader.readexactly(21) == b"hello through haproxy"
                (conn,) = client.sessions.values()
                assert conn.transport is not None
                local_port = conn.transport.get_extra_info("sockname")[1]
                (sconn,) = server.connections
                # the server sees our client's own port, not HAProxy's outgoing one
                assert sconn.peer == f"127.0.0.1:{local_port}"
                writer.close()
        finally:
            proc.terminate()
            proc.wait(5)
            log.close()
            await server.close()

    asyncio.run(main())
    assert any(r.getMessage().startswith("session from 127.0.0.1:") for r in caplog.records)


def test_missing_proxy_header_is_rejected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anytls")

    async def main() -> None:
        config = ServerConfig(users={"u": PASSWORD}, allow_private=True, accept_proxy_protocol=True)
        server = await serve(config, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, connect_timeout=3))
        # The server resets the connection at once (a hang would say "timed out").
        with pytest.raises(SessionClosedError, match=r"reset by peer|closed"):
            await client.open_connection("127.0.0.1", 9)
        await client.close()
        await server.close()

    asyncio.run(main())
    assert any("PROXY" in r.getMessage() for r in caplog.records)
