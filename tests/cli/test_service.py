"""Running as a service: SIGHUP reloads users and certificate, SIGTERM drains gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anytls import AnyTLSServer, Client, ClientConfig, ServerConfig
from anytls.errors import SessionClosedError, StreamOpenError
from tests.helpers.aio import async_test, poll_until, wait_until
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess, program

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fingerprint(writer: asyncio.StreamWriter) -> str:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


async def echo_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    writer.write(data)
    assert await reader.readexactly(len(data)) == data


def write_config(path: Path, users: dict[str, str]) -> None:
    table = "\n".join(f'{name} = "{pw}"' for name, pw in users.items())
    path.write_text(f'cert = "tls/cert.pem"\nkey = "tls/key.pem"\n[users]\n{table}\n')


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection reached the backlog of a listener closing at that moment.
        return True
    writer.close()
    return False


@async_test
async def test_sighup_reloads_users_and_certificate(tmp_path: Path) -> None:
    cert_a, key_a = make_self_signed_cert(tmp_path / "a")
    cert_b, key_b = make_self_signed_cert(tmp_path / "b")
    (tmp_path / "tls").mkdir()
    shutil.copy(cert_a, tmp_path / "tls/cert.pem")
    shutil.copy(key_a, tmp_path / "tls/key.pem")
    config = tmp_path / "server.toml"
    write_config(config, {"alice": "a-pw"})
    port = free_port()
    # Two workers (SIGHUP goes to the parent, which passes it on).
    args = ["-c", str(config), "--workers", "2"]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, args, tmp_path / "run") as server,
    ):
        assert server.proc is not None
        alice = Client(ClientConfig("127.0.0.1", port, "a-pw", insecure=True))
        reader, writer = await alice.open_connection(*echo)
        await echo_once(reader, writer, b"before")
        old_print = fingerprint(writer)
        bob_config = ClientConfig("127.0.0.1", port, "b-pw", insecure=True, reuse_sessions=False)
        async with Client(bob_config) as bob:
            with pytest.raises(SessionClosedError):
                await bob.open_connection(*echo)

        write_config(config, {"alice": "a-pw", "bob": "b-pw"})
        shutil.copy(cert_b, tmp_path / "tls/cert.pem")
        shutil.copy(key_b, tmp_path / "tls/key.pem")
        server.proc.send_signal(signal.SIGHUP)
        reloaded = r"reloaded \(2 users; added: bob; certificate"
        await wait_until(lambda: len(server.log_lines(reloaded)) == 2, 10)  # one per worker
        assert len(server.log_lines(reloaded)) == 2, server.log_text()

        # New sessions (spread over both workers): bob is known, certificate B is shown.
        async with Client(bob_config) as bob:
            for i in range(6):
                r, w = await bob.open_connection(*echo)
                await echo_once(r, w, b"bob %d" % i)
                assert fingerprint(w) != old_print
                w.close()
        # Alice's session from before the reload is still there, on the old certificate.
        await echo_once(reader, writer, b"after")
        assert fingerprint(writer) == old_print
        assert not server.log_lines(r"user alice\) ended")

        # A broken file is reported and changes nothing.
        config.write_text("users = 5\n")
        server.proc.send_signal(signal.SIGHUP)
        await server.wait_log(
            r"reload failed, keeping the running settings: .*server\.toml: "
            r"users: expected a table"
        )
        async with Client(bob_config) as bob:
            r, w = await bob.open_connection(*echo)
            await echo_once(r, w, b"still bob")
            w.close()
        writer.close()
        await alice.close()


@async_test
async def test_sigterm_lets_open_streams_finish(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "pw", "--shutdown-grace", "8", "--workers", "2"]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, args, tmp_path) as server,
        Client(ClientConfig("127.0.0.1", port, "pw", insecure=True)) as client,
    ):
        proc = server.proc
        assert proc is not None
        reader, writer = await client.open_connection(*echo)
        await echo_once(reader, writer, b"one")
        proc.send_signal(signal.SIGTERM)
        await server.wait_log(
            r"shutting down: no new connections; waiting up to 8 s for "
            r"1 open stream"
        )
        # No new connections (in every worker) ...
        assert await poll_until(lambda: refused(port), bool, 5), "the server still accepts"
        # ... but the open stream goes on.
        await asyncio.sleep(0.3)  # time passes: the draining server does not cut it
        await echo_once(reader, writer, b"two")
        assert proc.poll() is None
        started = time.monotonic()
        writer.close()
        await wait_until(lambda: proc.poll() is not None, 5)
        assert proc.returncode == 0, server.log_text()
        assert time.monotonic() - started < 3  # well inside the 8 s grace
        assert server.log_lines(r"INFO anytls\.server: stopped$")
        assert not server.log_lines("cut off")


@contextlib.asynccontextmanager
async def _serving_one_stream(
    tmp_path: Path, grace: str
) -> AsyncIterator[tuple[AnyTLSProcess, subprocess.Popen[bytes], asyncio.StreamReader]]:
    """A server (``--shutdown-grace grace``) with one stream open through it."""
    port = free_port()
    args = ["-p", "pw", "--shutdown-grace", grace, "--workers", "1"]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, args, tmp_path) as server,
        Client(ClientConfig("127.0.0.1", port, "pw", insecure=True)) as client,
    ):
        proc = server.proc
        assert proc is not None
        reader, writer = await client.open_connection(*echo)
        await echo_once(reader, writer, b"x")
        yield server, proc, reader


async def _cut_off_then_exit(reader: asyncio.StreamReader, proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(SessionClosedError):  # cut off: ends with the session
        assert await asyncio.wait_for(reader.read(), 5) == b""
    await wait_until(lambda: proc.poll() is not None, 5)
    assert proc.returncode == 0


@async_test
async def test_sigterm_cuts_streams_after_the_grace_period(tmp_path: Path) -> None:
    async with _serving_one_stream(tmp_path, "0.5") as (server, proc, reader):
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await _cut_off_then_exit(reader, proc)
        assert 0.4 < time.monotonic() - started < 3
        assert server.log_lines(r"stopped \(1 stream cut off after the grace period\)")


@async_test
async def test_a_second_ctrl_c_cuts_streams_at_once_and_says_so(tmp_path: Path) -> None:
    async with _serving_one_stream(tmp_path, "30") as (server, proc, reader):
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await server.wait_log(r"waiting up to 30 s for 1 open stream")
        proc.send_signal(signal.SIGINT)
        await _cut_off_then_exit(reader, proc)
        assert time.monotonic() - started < 5  # not the 30 s grace
        assert server.log_lines(r"stopped \(1 stream cut off by a second Ctrl-C\)")


@async_test
async def test_draining_server_refuses_new_streams() -> None:
    server = AnyTLSServer(ServerConfig({"u": "pw"}, allow_private=True), _context())
    await server.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, "pw", insecure=True, max_streams_per_session=4)
    async with tcp_echo_server() as echo, Client(config) as client:
        reader, writer = await client.open_connection(*echo)
        await echo_once(reader, writer, b"a")
        drain = asyncio.create_task(server.shutdown(10))
        await wait_until(lambda: server.draining)
        # Same session, new stream: refused with a reason; the open one keeps working.
        with pytest.raises((StreamOpenError, SessionClosedError), match=r"shutting down|ended"):
            await client.open_connection(*echo)
        await echo_once(reader, writer, b"b")
        writer.close()
        assert await asyncio.wait_for(drain, 5) == 0


def _context():  # type: ignore[no-untyped-def]
    from anytls.aio.tls import server_context

    return server_context(hosts=["localhost"])


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = (EXAMPLES / "anytls-server.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    unit = tmp_path / "anytls-server.service"
    exe = program("server")[0]
    unit.write_text(re.sub(r"ExecStart=\S+", f"ExecStart={exe}", text))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "anytls-server.service" in line
    ]
    assert not problems, problems
