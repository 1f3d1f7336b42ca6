"""--workers: several processes share the port and all of them serve (server and client)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from anytls.aio.client import Client, ClientConfig
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_socks5_raw


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "pw", "--workers", "3", "--log-level", "info"]
    with AnyTLSProcess.server(port, args, tmp_path) as server:
        assert server.proc is not None
        workers = children_of(server.proc.pid)
        assert len(workers) == 2

        async def traffic() -> int:
            async with tcp_echo_server() as echo:
                config = ClientConfig("127.0.0.1", port, "pw", insecure=True, reuse_sessions=False)
                async with Client(config) as client:
                    for _ in range(30):
                        reader, writer = await client.open_connection(*echo)
                        writer.write(b"w")
                        assert await reader.readexactly(1) == b"w"
                        writer.close()
            return 30

        assert asyncio.run(traffic()) == 30
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(10)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert len(re.findall(r"session from \S+: user", server.log_text())) == 30


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().split(") ")[1][0] == "Z"
    except OSError:
        return True


def test_default_is_one_worker_per_core_except_on_small_machines(tmp_path: Path) -> None:
    from anytls.cli import _run

    expected = _run.default_workers()
    assert expected == ((os.cpu_count() or 1) if (os.cpu_count() or 1) > 2 else 1)
    port = free_port()
    with AnyTLSProcess.server(port, ["-p", "pw", "--log-level", "info"], tmp_path) as server:
        assert server.proc is not None
        assert len(children_of(server.proc.pid)) == expected - 1
        assert f"{expected} worker" in server.log_text()


def _socket_fds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def test_client_workers_share_the_local_port_each_with_its_own_pool(tmp_path: Path) -> None:
    server_port, mixed_port = free_port(), free_port()
    with (
        AnyTLSProcess.server(server_port, ["-p", "pw", "--workers", "1"], tmp_path),
        AnyTLSProcess.client(
            mixed_port,
            [
                "-s",
                f"127.0.0.1:{server_port}",
                "-p",
                "pw",
                "--insecure",
                "--workers",
                "2",
                "--log-level",
                "info",
            ],
            tmp_path,
        ) as client,
    ):
        assert client.proc is not None
        (worker,) = children_of(client.proc.pid)
        pids = [client.proc.pid, worker]
        before = {pid: _socket_fds(pid) for pid in pids}

        def both_served() -> bool:
            return all(_socket_fds(pid) > before[pid] for pid in pids)

        async def one(i: int, echo: tuple[str, int]) -> None:
            reader, writer, _ = await open_socks5_raw("127.0.0.1", mixed_port, *echo)
            writer.write(b"%d" % i)
            assert await reader.readexactly(len(b"%d" % i)) == b"%d" % i
            writer.close()

        async def traffic() -> None:
            # Which process accepts a connection is the kernel's choice: batches of 10 at
            # once (so both are woken) until each has served some, at most 30 batches.
            async with tcp_echo_server() as echo:
                for batch in range(30):
                    await asyncio.gather(*(one(batch * 10 + i, echo) for i in range(10)))
                    if both_served():
                        return

        asyncio.run(traffic())
        # Each process served some connections (all accept on the parent's socket) and
        # keeps the session it used in its own pool.
        assert both_served()
        assert "2 workers" in client.log_text()
        client.proc.send_signal(signal.SIGTERM)
        client.proc.wait(10)
    assert not Path(f"/proc/{worker}").exists() or _zombie(worker)


def test_worker_count_defaults_and_port_zero(caplog: pytest.LogCaptureFixture) -> None:
    from anytls.cli import _run
    from anytls.core.address import Address

    assert _run.worker_count(3, Address("127.0.0.1", 1080)) == 3
    assert _run.worker_count(0, Address("127.0.0.1", 1080)) == _run.default_workers()
    assert [_run.default_workers(n) for n in (1, 2, 3, 8)] == [1, 1, 3, 8]
    # Port 0 works with workers too: the parent binds it once and they share the socket.
    assert _run.worker_count(4, Address("127.0.0.1", 0)) == 4
    assert not _run.forked()  # nothing was forked in this process


def test_worker_lines_carry_the_worker_id_and_reload_errors_come_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text('workers = 3\n[users]\nalice = "a-long-password"\n')
    with AnyTLSProcess.server(port, ["-c", str(config)], tmp_path) as server:
        assert server.proc is not None
        for index in (1, 2):
            server.wait_log_sync(
                rf"\[worker {index}\] DEBUG anytls.server: worker {index} accepting"
            )
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log_sync(r"INFO anytls.server: reloaded \(1 user\)")
        for index in (1, 2):
            server.wait_log_sync(rf"\[worker {index}\] DEBUG anytls.server: reloaded \(1 user\)")
        config.write_text("workers = [\n")  # broken
        server.proc.send_signal(signal.SIGHUP)
        for index in (1, 2):
            server.wait_log_sync(rf"\[worker {index}\] DEBUG anytls.server: reload failed")
        errors = server.log_lines(r"ERROR .*reload failed")
        assert len(errors) == 1 and "[worker" not in errors[0], errors
