"""anytls-server as a managed server: --api over workers, per-user tables, quotas, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from anytls import Client, ClientConfig
from anytls.cli._node import check_args, parse_api
from anytls.cli.server import load_args, server_config, user_entries
from anytls.core.address import Address
from anytls.errors import ConfigError, SessionClosedError
from anytls.store import Store
from tests.helpers.aio import async_test, poll_until
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess, program
from tests.helpers.rawclient import API_SECRET as SECRET
from tests.helpers.rawclient import api_request as http
from tests.helpers.rawclient import raw_session

SIZE = 100_000
SESSIONS = 8
OVERHEAD = 16_000


def _single(port: int, password: str) -> Client:
    return Client(ClientConfig("127.0.0.1", port, password, insecure=True, reuse_sessions=False))


async def _echo_once(client: Client, echo: tuple[str, int], size: int = SIZE) -> None:
    reader, writer = await client.open_connection(*echo)
    writer.write(b"x" * size)
    assert len(await reader.readexactly(size)) == size
    writer.close()


@async_test(timeout=60)
async def test_api_sums_and_kicks_over_two_workers(tmp_path: Path) -> None:
    port, api = free_port(), free_port()
    args = ["--user", "alice:a", "--user", "bob:b", "--workers", "2"]
    args += ["--api", f"127.0.0.1:{api}", "--api-secret", SECRET]
    async with tcp_echo_server() as echo, AnyTLSProcess.server(port, args, tmp_path) as server:
        await server.wait_log(r"traffic stats API at http://127.0.0.1")
        assert (await http(api, "GET", "/traffic", secret=None))[0] == 401
        config = ClientConfig("127.0.0.1", port, "a", insecure=True, reuse_sessions=False)
        async with Client(config) as client:
            for _ in range(SESSIONS):
                await _echo_once(client, echo)

        async def traffic_and_online() -> tuple[int, Any, Any]:
            status, traffic = await http(api, "GET", "/traffic")
            return status, traffic, (await http(api, "GET", "/online"))[1]

        # every worker has reported alice's sessions, and they have all ended
        status, traffic, online = await poll_until(
            traffic_and_online,
            lambda got: got[1].get("alice", {}).get("tx", 0) > SESSIONS * SIZE and not got[2],
            10,
        )
        assert status == 200 and set(traffic) == {"alice"} and not online
        sent = SESSIONS * SIZE
        assert sent < traffic["alice"]["tx"] < sent + SESSIONS * OVERHEAD
        assert sent < traffic["alice"]["rx"] < sent + SESSIONS * OVERHEAD

        # Kick: several sessions of bob, spread over the workers, all end within a second.
        bob = ClientConfig("127.0.0.1", port, "b", insecure=True, reuse_sessions=False)
        async with Client(bob) as client:
            streams = [await client.open_connection(*echo) for _ in range(6)]
            online = await poll_until(
                lambda: http(api, "GET", "/online"), lambda got: got[1].get("bob") == 1
            )
            assert online[1] == {"bob": 1}  # one client IP
            started = time.monotonic()
            assert (await http(api, "POST", "/kick", ["bob"]))[0] == 200
            for reader, _ in streams:
                with contextlib.suppress(SessionClosedError, ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 1) == b""
            assert time.monotonic() - started < 1.0
        await server.wait_log(r"user bob\): kicked through the API")


def test_api_on_a_public_address_needs_a_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [*program("server"), "-p", "x", "--api", "0.0.0.0:9999"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--api 0.0.0.0:9999" in result.stderr and "--api-secret" in result.stderr


def test_api_address_defaults_to_localhost() -> None:
    assert parse_api("9999") == Address("127.0.0.1", 9999)
    assert parse_api(":9999") == Address("127.0.0.1", 9999)
    assert parse_api("[::1]:9999") == Address("::1", 9999)
    assert parse_api("0.0.0.0:9999") == Address("0.0.0.0", 9999)
    check_args(load_args(["-p", "x", "--api", "9999"]))  # localhost: no secret needed
    with pytest.raises(ConfigError, match="needs --api-secret"):
        check_args(load_args(["-p", "x", "--api", "192.0.2.1:9999"]))
    check_args(load_args(["-p", "x", "--api", "192.0.2.1:9999", "--api-secret", "s"]))


@async_test(timeout=40)
async def test_a_quota_leaves_the_users_own_limits_in_force(tmp_path: Path) -> None:
    # A quota (or an expiry) anywhere in the file once switched every user's own
    # device_limit and speed_limit off.
    port = free_port()
    path = tmp_path / "server.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\nallow_private = true\n'
        '[users.bob]\npassword = "b"\nquota = 900000000\ndevice_limit = 1\n'
        '[users.carol]\npassword = "c"\nexpires = 2099-01-01\n'
    )
    args = ["-c", str(path), "--workers", "1"]
    async with AnyTLSProcess.server(port, args, tmp_path) as server:
        await asyncio.sleep(1.5)  # past the quota keeper's first round in the parent
        first = await raw_session(port, "127.0.0.2", "b")
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(first[0].read(1), 0.5)  # bob's first device is in
            second = await raw_session(port, "127.0.0.3", "b")
            assert await asyncio.wait_for(second[0].read(), 5) == b""
            second[1].close()
            await server.wait_log(r"user bob already has 1 device connected \(device_limit 1\)")
        finally:
            first[1].close()


def test_per_user_tables_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        'speed_limit = 50\n[users]\nalice = "a"\n'
        '[users.bob]\npassword = "b"\nspeed_limit = 20\ndevice_limit = 2\n'
        "quota = 1000\nexpires = 2099-01-31\n"
    )
    args = load_args(["-c", str(path)])
    config = server_config(args)
    assert config.users == {"alice": "a", "bob": "b"}
    assert config.speed_limit == 50
    assert config.limits["bob"].speed_limit == 20 and config.limits["bob"].device_limit == 2
    entries = user_entries(args)
    assert entries["bob"].quota == 1000 and str(entries["bob"].expires) == "2099-01-31"
    path.write_text('[users.bob]\npassword = "b"\nspeed = 20\n')
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        load_args(["-c", str(path)])
    path.write_text('[users.bob]\npassword = "b"\nexpires = "soon"\n')
    with pytest.raises(ConfigError, match="expires: expected a date"):
        load_args(["-c", str(path)])


@async_test(timeout=60)
async def test_quota_and_expiry_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    path = tmp_path / "server.toml"
    path.write_text(
        f'state_dir = "{state}"\n'
        '[users]\nalice = "a"\n'
        '[users.bob]\npassword = "b"\nquota = 300000\n'
        '[users.carol]\npassword = "c"\nexpires = 2001-01-01\n'
    )
    args = ["-c", str(path), "--workers", "2"]
    async with tcp_echo_server() as echo:
        async with AnyTLSProcess.server(port, args, tmp_path, name="first") as server:
            await server.wait_log(r"user carol expired on 2001-01-01")
            bob = ClientConfig("127.0.0.1", port, "b", insecure=True, reuse_sessions=False)
            async with Client(bob) as client:
                await _echo_once(client, echo)  # ~200 kB of the 300 kB quota
                # The next one crosses the quota: bob is cut off within about a second.
                with contextlib.suppress(SessionClosedError, ConnectionError):
                    reader, writer = await client.open_connection(*echo)
                    writer.write(b"x" * SIZE)
                    await reader.readexactly(SIZE)
                    await asyncio.wait_for(reader.read(), 5)
            await server.wait_log(r"user bob used \d+ of its quota of 300000 bytes")
            await server.wait_log(r"user bob\): refused: used \d+ of its quota of 300000 bytes")
        usage = Store.in_dir(state).usage()
        assert sum(usage["bob"]) >= 300_000
        # After a restart bob is still out, and so is carol; alice is served.
        async with AnyTLSProcess.server(port, args, tmp_path, name="second") as server:
            await server.wait_log(r"user bob used \d+ of its quota")
            async with Client(ClientConfig("127.0.0.1", port, "a", insecure=True)) as client:
                await _echo_once(client, echo, 1000)
            for password in ("b", "c"):
                config = ClientConfig("127.0.0.1", port, password, insecure=True)
                async with Client(config) as client:
                    with pytest.raises((SessionClosedError, ConnectionError)):
                        await _echo_once(client, echo, 1000)
            # logged with the reason, not as a wrong password
            await server.wait_log(r"rejected .*: user bob is refused: used \d+ of its quota")
            await server.wait_log(r"rejected .*: user carol is refused: expired on 2001-01-01")
            # A larger quota in the file and a reload (SIGHUP): bob is back, in every
            # worker; carol, still expired, stays out of every worker's reloaded users.
            path.write_text(path.read_text().replace("quota = 300000", "quota = 9000000"))
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)
            await server.wait_log(r"user bob is allowed again", timeout=5)
            for _ in range(6):  # new sessions, spread over both workers by the kernel
                async with _single(port, "b") as client:
                    await _echo_once(client, echo, 1000)
                async with _single(port, "c") as client:
                    with pytest.raises((SessionClosedError, ConnectionError)):
                        await _echo_once(client, echo, 1000)
