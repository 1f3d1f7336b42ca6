"""anytls-server as an Xboard node, against a panel built from Xboard's code (helpers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from anytls import Client, ClientConfig
from anytls.cli._common import parse_listen
from anytls.cli._node import check_args, prepare
from anytls.cli.server import load_args, server_config
from anytls.core.address import Address
from anytls.core.padding import PaddingScheme
from anytls.errors import SessionClosedError
from anytls.panel.xboard import PanelError, XboardClient, http_request, parse_users
from anytls.store import Store
from tests.helpers.aio import async_test, wait_until
from tests.helpers.certs import make_ca_signed_cert
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess, program
from tests.helpers.rawclient import raw_session
from tests.helpers.xboard_panel import DEFAULT_PADDING, PanelState, xboard_panel

TOKEN = "panel-token"
NODE = 7
SIZE = 100_000
#: Framing, padding and the preface per session, generously.
OVERHEAD = 16_000

U1, U2, U3 = (str(uuid.UUID(int=i)) for i in (1, 2, 3))


def _state(port: int) -> PanelState:
    state = PanelState(TOKEN, NODE, port, pull_interval=1, push_interval=1)
    state.user(1, U1)
    state.user(2, U2, speed=None, devices=None)
    return state


def _node_args(panel_url: str, state_dir: Path, port: int) -> list[str]:
    # Only the panel options, plus a loopback listen address and a state dir for the test.
    return [
        "--panel",
        panel_url,
        "--panel-token",
        TOKEN,
        "--node-id",
        str(NODE),
        "-l",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
        "--workers",
        "2",
    ]


def _client(port: int, password: str) -> Client:
    return Client(ClientConfig("127.0.0.1", port, password, insecure=True, reuse_sessions=False))


async def _echo(client: Client, echo: tuple[str, int], size: int = SIZE) -> None:
    reader, writer = await client.open_connection(*echo)
    writer.write(b"x" * size)
    assert len(await reader.readexactly(size)) == size
    writer.close()


async def _ended(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(SessionClosedError, ConnectionError):
        assert await reader.read() == b""


@async_test(timeout=90)
async def test_node_serves_reports_and_follows_the_panel(tmp_path: Path) -> None:
    port = free_port()
    state = _state(port)
    with xboard_panel(state) as panel:
        args = _node_args(panel.url, tmp_path / "state", port)
        async with (
            tcp_echo_server() as echo,
            AnyTLSProcess.server(port, args, tmp_path) as node,
        ):
            await node.wait_log(r"Xboard node 7 of .*: port \d+, 2 users")
            assert "share link" not in node.log_text()  # not one line per panel user
            # Users from the panel: the password is the uuid; the user is its id.
            async with _client(port, U1) as client:
                for _ in range(4):
                    await _echo(client, echo)
            sent = 4 * SIZE
            await wait_until(lambda: panel.traffic(1)[1] > sent, 5)
            up, down = panel.traffic(1)
            assert sent < up < sent + 4 * OVERHEAD and sent < down < sent + 4 * OVERHEAD
            assert panel.traffic(2) == [0, 0]

            # Alive: the user's client IPs while it is connected.
            async with _client(port, U2) as client:
                reader, writer = await client.open_connection(*echo)
                await wait_until(lambda: state.alive.get(2) == ["127.0.0.1"], 5)
                assert state.alive.get(2) == ["127.0.0.1"]
                # Later pulls send If-None-Match and get 304 while nothing changed.
                assert any(r[2] and r[3] == 304 for r in panel.requests("user"))
                assert any(r[2] and r[3] == 304 for r in panel.requests("config"))
                # User 2 disappears from the list: its open stream ends at the next pull.
                state.remove_user(2)
                await asyncio.wait_for(_ended(reader), 5)
                await node.wait_log(r"user 2\): user removed")
                writer.close()
            # A new user works after the next pull.
            state.user(3, U3, speed=None, devices=1)
            await node.wait_log(r"panel: 2 users \(1 new, 0 removed\)", timeout=5)
            async with _client(port, U3) as client:
                await _echo(client, echo, 1000)
            # A new padding scheme is pushed to clients that connect afterwards.
            state.padding = [*DEFAULT_PADDING[:-1], "7=600-700"]
            wanted = PaddingScheme.parse("\n".join(state.padding).encode())
            await node.wait_log(r"panel: new padding scheme")
            async with _client(port, U1) as client:
                assert client.padding.md5 != wanted.md5
                await _echo(client, echo, 1000)
                await wait_until(lambda: client.padding.md5 == wanted.md5)
                assert client.padding.md5 == wanted.md5

            # The panel goes away: the node keeps serving, keeps the traffic, says so once.
            before = panel.traffic(1)
            panel.stop()
            await node.wait_log(r"panel .*failed .*keeping the last good user list")
            async with _client(port, U1) as client:
                for _ in range(3):
                    await _echo(client, echo)
            # It keeps trying every interval (a DEBUG line each), warning only the first time.
            await wait_until(lambda: node.log_text().count("panel still unreachable") >= 3, 8)
            assert node.log_text().count("panel still unreachable") >= 3
            assert node.log_text().count("keeping the last good user list") == 1
            panel.start()
            await node.wait_log(r"panel .* answers again", timeout=10)
            await wait_until(lambda: panel.traffic(1)[0] - before[0] > 3 * SIZE, 5)
            assert 3 * SIZE < panel.traffic(1)[0] - before[0] < 3 * (SIZE + OVERHEAD)


@async_test(timeout=90)
async def test_a_crash_loses_no_unreported_traffic(tmp_path: Path) -> None:
    port = free_port()
    state = _state(port)
    state.push_interval = 3600  # nothing is pushed before the crash
    store_dir = tmp_path / "state"
    with xboard_panel(state) as panel:
        args = _node_args(panel.url, store_dir, port)
        async with tcp_echo_server() as echo:
            node = AnyTLSProcess.server(port, args, tmp_path, name="first")
            async with node:
                async with _client(port, U1) as client:
                    for _ in range(5):
                        await _echo(client, echo)
                # Within about a second the bytes are in the SQLite file; then kill -9.
                store = Store.in_dir(store_dir)
                await wait_until(lambda: sum(store.pending().get("1", (0, 0))) > 10 * SIZE, 3)
                store.close()
                assert node.proc is not None
                os.kill(node.proc.pid, signal.SIGKILL)
                await wait_until(lambda: node.returncode is not None, 5)
            assert panel.traffic(1) == [0, 0]
            # The restarted node pushes what the dead one counted.
            state.push_interval = 1
            async with AnyTLSProcess.server(port, args, tmp_path, name="second"):
                await wait_until(lambda: panel.traffic(1)[1] > 5 * SIZE, 5)
                up, down = panel.traffic(1)
                assert 5 * SIZE < up < 5 * (SIZE + OVERHEAD)
                assert 5 * SIZE < down < 5 * (SIZE + OVERHEAD)
            # A restart while the panel is down serves the last good users from the store.
            panel.stop()
            async with AnyTLSProcess.server(port, args, tmp_path, name="third") as node:
                await node.wait_log(r"unreachable .*serving the last good settings and users")
                async with _client(port, U1) as client:
                    await _echo(client, echo, 1000)


async def _admitted(
    port: int, ip: str, password: str, want: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Sessions from ``ip`` until one is admitted (``want``) or refused (not ``want``).

    With two workers the processes share their client IPs once a second, so the answer
    can take that long to settle; a session still open after 0.1 s counts as admitted.
    """
    for _ in range(30):
        reader, writer = await raw_session(port, ip, password)
        try:
            admitted = await asyncio.wait_for(reader.read(), 0.1) != b""
        except TimeoutError:
            admitted = True
        except ConnectionError:
            admitted = False
        if admitted == want:
            if admitted:
                return reader, writer
            writer.close()
            return None
        writer.close()
    raise AssertionError(f"a session from {ip} was never {'admitted' if want else 'refused'}")


@async_test(timeout=60)
async def test_speed_and_device_limits_come_from_the_panel(tmp_path: Path) -> None:
    port = free_port()
    state = PanelState(TOKEN, NODE, port, pull_interval=1, push_interval=1)
    state.user(5, U1, speed=20, devices=1)
    with xboard_panel(state) as panel:
        args = _node_args(panel.url, tmp_path / "state", port)
        async with tcp_echo_server() as echo, AnyTLSProcess.server(port, args, tmp_path) as node:
            loop = asyncio.get_running_loop()
            async with _client(port, U1) as client:
                start = loop.time()
                await _echo(client, echo, 4 * 1024 * 1024)
                elapsed = loop.time() - start
            rate = 4 * 1024 * 1024 * 8 / elapsed / 1e6
            assert 17 <= rate <= 22, f"{rate:.1f} Mbit/s (20 from the panel)"
            # A second device (another loopback address) is refused while the first is on.
            # With two workers the processes share their devices once a second, so the
            # second device is refused at the latest a second after the first connected.
            first = await _admitted(port, "127.0.0.2", U1, want=True)
            assert first is not None  # once the last device (127.0.0.1) is known to be gone
            assert await _admitted(port, "127.0.0.3", U1, want=False) is None
            await node.wait_log(r"refused 127.0.0.3:\d+: user 5 already has 1 device")
            first[1].close()


@async_test(timeout=30)
async def test_client_against_the_panel_contract(tmp_path: Path) -> None:
    state = _state(free_port())
    with xboard_panel(state) as panel:
        client = XboardClient(panel.url, TOKEN, NODE)
        config, tag = await client.fetch("config", None)  # type: ignore[misc]
        assert config["server_port"] == state.server_port and tag and tag.startswith('"')
        assert await client.fetch("config", tag) is None  # 304
        users, users_tag = await client.fetch("user", None)  # type: ignore[misc]
        assert parse_users(users)[0] == {"1": U1, "2": U2}
        state.user(3, U3, speed=10, devices=2)
        changed = await client.fetch("user", users_tag)
        assert changed is not None
        names, limits = parse_users(changed[0])
        assert names["3"] == U3 and limits["3"].speed_limit == 10 and limits["3"].device_limit == 2
        await client.push({"1": [10, 20]})
        await client.push({"1": [1, 2]})
        assert panel.traffic(1) == [11, 22]
        await client.alive({"1": ["192.0.2.1"]})
        assert state.alive[1] == ["192.0.2.1"]
        # The errors Xboard answers with, as the user sees them.
        with pytest.raises(PanelError, match="422: Invalid token"):
            await XboardClient(panel.url, "wrong", NODE).fetch("config", None)
        with pytest.raises(PanelError, match="400: Server does not exist"):
            await XboardClient(panel.url, TOKEN, 99).fetch("user", None)
        raw = await http_request("POST", client.url("push"), body=b"[1")
        assert raw.status == 422 and raw.json()["message"] == "Invalid data format"
        state.stall = 1.5
        with pytest.raises(PanelError, match=r"no answer .* within 0\.5 s"):
            await XboardClient(panel.url, TOKEN, NODE, timeout=0.5).fetch("config", None)
        state.stall = 0
    with pytest.raises(PanelError, match="cannot reach"):
        await XboardClient(panel.url, TOKEN, NODE).fetch("config", None)


@async_test(timeout=30)
async def test_https_panel_certificate_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_ca_signed_cert(tmp_path / "pki", ["localhost"])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with xboard_panel(_state(free_port()), tls=tls) as panel:
        with pytest.raises(PanelError, match="certificate verify failed"):
            await XboardClient(panel.url, TOKEN, NODE).fetch("config", None)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the system's trust store, as it were
        users = await XboardClient(panel.url, TOKEN, NODE).fetch("user", None)
        assert users is not None and parse_users(users[0])[0] == {"1": U1, "2": U2}


def test_the_three_panel_options_are_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only --panel/--panel-token/--node-id: the panel's port on all addresses, the
    panel's users and padding, the default state directory (not started here: a test
    listens on loopback only; the tests above run the same node with -l 127.0.0.1)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    state = _state(free_port())
    state.padding = [*DEFAULT_PADDING[:-1], "7=600-700"]
    with xboard_panel(state) as panel:
        args = load_args(["--panel", panel.url, "--panel-token", TOKEN, "--node-id", str(NODE)])
        check_args(args)
        config = server_config(args)
        prepared = prepare(args, parse_listen(args.l), config, {})
    assert prepared.listen == Address("0.0.0.0", state.server_port)
    assert prepared.config.users == {"1": U1, "2": U2}
    assert prepared.config.padding.raw == "\n".join(state.padding).encode()
    assert args.share_links is False and args.public_host == "localhost"
    assert (tmp_path / "xdg" / "anytls" / "node.sqlite3").exists()


def test_node_without_a_reachable_panel_or_cache_exits(tmp_path: Path) -> None:
    state = _state(free_port())
    with xboard_panel(state) as panel:
        args = _node_args(panel.url, tmp_path / "state", state.server_port)
        args[args.index("--panel-token") + 1] = "wrong"
        result = subprocess.run(
            [*program("server"), *args], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert "--panel: panel http://127.0.0.1" in result.stderr and "Invalid token" in result.stderr
    result = subprocess.run(
        [*program("server"), "--panel", "http://x", "--node-id", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--panel needs --panel-token" in result.stderr
