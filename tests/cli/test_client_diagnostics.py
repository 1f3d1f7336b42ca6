"""The client says why the server cannot be used (issue 17 #6, #7)."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

from anytls.aio.tls import server_context
from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.echo import tcp_echo_server
from tests.helpers.httpd import http_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_socks5_raw


def test_check_names_a_plain_http_port() -> None:
    with http_server() as web:
        plain = run_cli("client", "-s", f"127.0.0.1:{web.port}", "-p", "pw", "--check", "x:80")
    assert plain.returncode == 1
    assert "does not speak TLS" in plain.stdout, plain.stdout
    assert "WRONG_VERSION_NUMBER" not in plain.stdout


@async_test
async def test_running_client_names_a_plain_http_port(tmp_path: Path) -> None:
    port = free_port()
    with http_server() as web:
        args = ["-s", f"127.0.0.1:{web.port}", "-p", "pw", "--log-level", "info"]
        async with AnyTLSProcess.client(port, args, tmp_path) as cli:
            answer = await _http_get_via(port, "http://example.com/")
            assert answer.startswith(b"HTTP/1.1 502"), answer
            assert b"does not speak TLS" in answer
            line = await cli.wait_log(r"WARNING .*does not speak TLS")
            assert "WRONG_VERSION_NUMBER" not in line


async def _answer_400(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # What nginx does with bytes that are not HTTP: 400 and close.
    await reader.read(1)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


@async_test
async def test_check_names_an_https_site_that_is_not_anytls() -> None:
    site = await asyncio.start_server(
        _answer_400, "127.0.0.1", 0, ssl=server_context(hosts=["localhost"])
    )
    port = site.sockets[0].getsockname()[1]
    async with site:
        answered = await asyncio.to_thread(
            run_cli, "client", "-s", f"127.0.0.1:{port}", "-p", "pw", "--insecure", "--check"
        )
    assert answered.returncode == 1
    assert "the server answered in HTTP ('HTTP/1.1 400 Bad Request')" in answered.stdout, (
        answered.stdout
    )


async def _http_get_via(proxy_port: int, url: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    # One request, read to the end: it asks to close (the proxy keeps connections alive).
    writer.write(f"GET {url} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@async_test
async def test_running_client_warns_once_per_cause_and_explains_502(tmp_path: Path) -> None:
    server_port, proxy_port = free_port(), free_port()
    udp_port = free_port(kind=socket.SOCK_DGRAM)
    client_args = [
        *("-s", f"127.0.0.1:{server_port}", "-p", "wrong-password", "--insecure"),
        *("--udp-forward", f"127.0.0.1:{udp_port}=127.0.0.1:9", "--log-level", "debug"),
    ]
    async with (
        AnyTLSProcess.server(
            server_port, ["-p", "right-password-123", "--workers", "1"], tmp_path / "s"
        ),
        AnyTLSProcess.client(proxy_port, client_args, tmp_path) as cli,
    ):
        for _ in range(3):
            answer = await _http_get_via(proxy_port, "http://example.com/")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 502 Bad Gateway"), answer
            assert b"Content-Type: text/plain; charset=utf-8" in head
            assert b"most likely a wrong password" in body, body
        await cli.wait_log(r"WARNING .*GET example\.com:80 failed: .*most likely a wrong password")
        for _ in range(2):  # two local UDP peers, each needing a session: same cause
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"ping", ("127.0.0.1", udp_port))
                await cli.wait_log(
                    rf"DEBUG .*udp forward .* for 127\.0\.0\.1:{udp.getsockname()[1]}"
                )
        warnings = cli.log_lines(r"WARNING .*failed|WARNING .*udp forward")
        assert len(warnings) == 1, warnings


def test_password_flag_ignored_for_a_link_with_one_is_warned_about() -> None:
    link = "anytls://in-the-link@127.0.0.1:9/?insecure=1"
    result = run_cli("client", "-s", link, "-p", "given-too", "--check", "127.0.0.1:9")
    assert "-p is ignored: the anytls:// link already carries a password" in result.stderr
    same = run_cli("client", "-s", link, "-p", "in-the-link", "--check", "127.0.0.1:9")
    assert "-p is ignored" not in same.stderr


@async_test
async def test_client_reloads_its_config_on_sighup(tmp_path: Path) -> None:
    server_port, port = free_port(), free_port()
    config = tmp_path / "client.toml"
    config.write_text(
        f'server = "127.0.0.1:{server_port}"\npassword = "wrong-one"\ninsecure = true\n'
    )
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(server_port, ["-p", "right-password-123"], tmp_path / "s"),
        AnyTLSProcess.client(port, ["-c", str(config), "--log-level", "info"], tmp_path) as cli,
    ):
        assert cli.proc is not None
        answer = await _http_get_via(port, f"http://127.0.0.1:{echo.port}/")
        assert answer.startswith(b"HTTP/1.1 502")
        config.write_text("password = [\n")  # broken: the running settings stay
        cli.proc.send_signal(signal.SIGHUP)
        await cli.wait_log(r"ERROR .*reload failed, keeping the running settings")
        config.write_text(
            f'server = "127.0.0.1:{server_port}"\npassword = "right-password-123"\n'
            "insecure = true\n"
        )
        cli.proc.send_signal(signal.SIGHUP)
        await cli.wait_log(rf"reloaded: server 127\.0\.0\.1:{server_port}")
        reader, writer, _ = await open_socks5_raw("127.0.0.1", port, *echo)
        writer.write(b"after reload")
        assert await reader.readexactly(12) == b"after reload"
        writer.close()
        assert cli.proc.poll() is None


@async_test
async def test_client_reload_keeps_saying_a_setting_needs_a_restart(tmp_path: Path) -> None:
    # A setting a reload cannot apply stays at its running value, so every reload says so
    # (not only the first; the second used to report "no change" with the file still
    # asking for 2 workers).
    port = free_port()
    config = tmp_path / "client.toml"
    config.write_text('server = "127.0.0.1:9"\npassword = "first-password"\n')
    async with AnyTLSProcess.client(
        port, ["-c", str(config), "--log-level", "info"], tmp_path
    ) as cli:
        assert cli.proc is not None
        config.write_text('server = "127.0.0.1:9"\npassword = "second-password"\nworkers = 2\n')
        cli.proc.send_signal(signal.SIGHUP)
        await cli.wait_log(r"reloaded: server 127\.0\.0\.1:9")
        cli.proc.send_signal(signal.SIGHUP)
        await cli.wait_log(r"reloaded: no change")
        assert len(cli.log_lines(r"WARNING .*reload: workers changed; restart the client")) == 2
