"""``anytls-client --check`` against a real server, and the server's JSON log lines."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from anytls import Client, ClientConfig
from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.echo import refused_port, tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess


@async_test
async def test_check_reports_success_and_each_failure(tmp_path: Path) -> None:
    port = free_port()
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, ["-p", "pw", "--workers", "1"], tmp_path) as server,
    ):
        target = f"127.0.0.1:{echo.port}"
        server_at = f"127.0.0.1:{port}"
        cases = {
            "ok": ["-s", server_at, "-p", "pw", "--insecure", "--check", target],
            "password": ["-s", server_at, "-p", "nope", "--insecure", "--check", target],
            # (IPv6: the address in brackets, as it is written)
            "no server": ["-s", f"[::1]:{refused_port()}", "-p", "pw", "--check", target],
            "target": [
                "-s",
                server_at,
                "-p",
                "pw",
                "--insecure",
                "--check",
                f"127.0.0.1:{refused_port()}",
            ],
            "verify": ["-s", server_at, "-p", "pw", "--check", target],
        }
        results = dict(
            zip(
                cases,
                await asyncio.gather(
                    *(asyncio.to_thread(run_cli, "client", *args) for args in cases.values())
                ),
                strict=True,
            )
        )
        ok = results["ok"]
        assert ok.returncode == 0, ok.stdout + ok.stderr
        lines = ok.stdout.splitlines()
        assert lines[0] == f"checking {server_at} (stream to {target})"
        assert lines[1].startswith("TLS handshake: ") and " ms (TLSv1." in lines[1]
        assert "certificate NOT verified (insecure)" in lines[1]
        assert re.search(r"TLSv1\.3, TLS_\w+, chrome\d+ ClientHello, ", lines[1]), lines[1]
        assert lines[2].startswith("stream open: ") and f"server connected to {target}" in lines[2]
        assert lines[3:] == ["server protocol version: 2", "OK"]
        await server.wait_log(r"stream \d+: connected to 127\.0\.0\.1")

        for name, expected in {
            "password": "most likely a wrong password",
            "no server": "cannot connect to [::1]:",
            "target": "FAILED: the server could not open 127.0.0.1:",
            "verify": "failed verification",
        }.items():
            result = results[name]
            assert result.returncode == 1, (name, result.stdout, result.stderr)
            failed = [ln for ln in result.stdout.splitlines() if ln.startswith("FAILED: ")]
            assert len(failed) == 1 and expected in failed[0], (name, result.stdout)
        assert "connection refused" in results["target"].stdout
        assert "is the server running" in results["no server"].stdout
        assert results["no server"].stdout.startswith("checking [::1]:")
        assert "use its share link (it pins the certificate" in results["verify"].stdout


@async_test
async def test_json_logs(tmp_path: Path) -> None:
    port = free_port()
    args = ["--user", "carol:pw", "--workers", "1", "--log-format", "json", "--log-level", "debug"]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, args, tmp_path) as server,
    ):
        config = ClientConfig("127.0.0.1", port, "pw", insecure=True)
        async with Client(config) as client:
            reader, writer = await client.open_connection(*echo)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
        await server.wait_log(r'"event": "session_close"')
    records = [json.loads(line) for line in server.log_lines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    by_event = {r.get("event"): r for r in records}
    link = by_event["share_link"]
    assert link["user"] == "carol" and link["link"].startswith("anytls://pw@127.0.0.1:")
    opened, closed = by_event["session_open"], by_event["session_close"]
    assert opened["user"] == closed["user"] == "carol"
    assert opened["peer"] == closed["peer"] and opened["level"] == "info"
    assert closed["duration"] >= 0 and closed["bytes_in"] > 5 and closed["bytes_out"] > 5
    assert closed["message"].startswith(f"session from {closed['peer']} (user carol) ended after")
    stream = by_event["stream_close"]
    assert stream["level"] == "debug" and stream["user"] == "carol"
    assert stream["bytes_down"] == 5 and stream["bytes_up"] >= 5  # + the destination address
    assert any(r["message"].startswith("anytls-server ") for r in records)
