"""Live statistics: the Prometheus endpoint and the summary line of a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from anytls import Client, ClientConfig, open_udp
from anytls.aio.stats import ServerStats, merge_snapshots, render_metrics, summary
from anytls.errors import SessionClosedError
from tests.helpers.aio import async_test, poll_until
from tests.helpers.echo import tcp_echo_server, udp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess

SESSIONS = 6
SIZE = 100_000
#: Padding, framing and the auth preface per session, generously.
OVERHEAD = 16_000


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"text/plain; version=0.0.4" in head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def user(name: str) -> tuple[tuple[str, str], ...]:
    return (("user", name),)


@async_test
async def test_metrics_after_traffic(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    # Two workers: the parent adds up what each process counted.
    args = [
        "--user",
        "alice:a",
        "--user",
        "bob:b",
        "--workers",
        "2",
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--stats-interval",
        "0.3",
    ]
    async with (
        tcp_echo_server() as echo,
        udp_echo_server() as udp_echo,
        AnyTLSProcess.server(port, args, tmp_path) as server,
    ):
        idle = await scrape(metrics)
        assert idle[("anytls_upload_bytes_total", ())] == 0
        assert idle[("anytls_workers", ())] == 2
        config = ClientConfig("127.0.0.1", port, "a", insecure=True, reuse_sessions=False)
        async with Client(config) as client:
            for _ in range(SESSIONS):
                reader, writer = await client.open_connection(*echo)
                writer.write(b"x" * SIZE)
                assert len(await reader.readexactly(SIZE)) == SIZE
                writer.close()
            assoc = await open_udp(client)
            assoc.sendto(b"ping", udp_echo)
            assert (await assoc.recvfrom())[0] == b"ping"
            live = await scrape(metrics)
            assert live[("anytls_user_udp_associations_active", user("alice"))] == 1
            assert live[("anytls_user_sessions_active", user("alice"))] >= 1
            assoc.close()
        # Every session has ended (and was counted as it ended).
        await server.wait_log(r"ended after .* user alice|user alice\) ended")
        samples = await poll_until(
            lambda: scrape(metrics),
            lambda got: got[("anytls_user_sessions_active", user("alice"))] == 0,
        )
        assert samples[("anytls_user_sessions_active", user("alice"))] == 0
        up = samples[("anytls_user_upload_bytes_total", user("alice"))]
        down = samples[("anytls_user_download_bytes_total", user("alice"))]
        sent = SESSIONS * SIZE
        assert sent < up < sent + (SESSIONS + 1) * OVERHEAD
        assert sent < down < sent + (SESSIONS + 1) * OVERHEAD
        assert samples[("anytls_upload_bytes_total", ())] == up
        assert samples[("anytls_user_sessions_total", user("alice"))] == SESSIONS + 1
        assert samples[("anytls_user_streams_total", user("alice"))] == SESSIONS + 1
        assert samples[("anytls_user_udp_associations_total", user("alice"))] == 1
        assert samples[("anytls_user_udp_associations_active", user("alice"))] == 0
        assert samples[("anytls_user_streams_active", user("alice"))] == 0
        assert samples[("anytls_user_upload_bytes_total", user("bob"))] == 0
        assert samples[("anytls_connections", ())] == 0

        # A wrong password is counted as a rejected connection.
        bad = ClientConfig("127.0.0.1", port, "wrong", insecure=True)
        async with Client(bad) as client:
            with contextlib.suppress(SessionClosedError):
                await client.open_connection(*echo)
        await server.wait_log(r"rejected .*wrong password")
        samples = await poll_until(
            lambda: scrape(metrics),
            lambda got: got[("anytls_rejected_connections_total", ())] == 1,
        )
        assert samples[("anytls_rejected_connections_total", ())] == 1

        # The summary line, with the same totals (all processes added up).
        line = await server.wait_log(rf"stats: 0 sessions .*{SESSIONS + 1} sessions, .*1 rejected")
        assert "up 6" in line or "up 5" in line  # ~586 KiB
        # Anything but /metrics is a 404.
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics)
        writer.write(b"GET /nothing HTTP/1.0\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 404")
        writer.close()


class FakeSession:
    def __init__(self, bytes_in: int, bytes_out: int, streams: int) -> None:
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.streams = dict.fromkeys(range(streams))


def test_counters_and_merge() -> None:
    stats = ServerStats(lambda: 3)
    a = FakeSession(100, 200, 2)
    alice = stats.session_opened(a, "alice")
    alice.stream_opened()
    alice.udp_opened()
    snap = stats.snapshot()
    assert snap["users"]["alice"] == {
        "up": 100,
        "down": 200,
        "sessions": 1,
        "sessions_total": 1,
        "streams": 2,
        "streams_total": 1,
        "udp": 1,
        "udp_total": 1,
    }
    a.bytes_in += 50
    stats.session_closed(a, alice)
    stats.session_closed(a, alice)  # twice is harmless
    alice.udp_closed()
    snap = stats.snapshot()
    assert snap["users"]["alice"]["up"] == 150 and snap["users"]["alice"]["sessions"] == 0
    merged = merge_snapshots([snap, snap])
    assert merged["users"]["alice"]["up"] == 300 and merged["connections"] == 6
    assert merged["workers"] == 2
    text = render_metrics(merged).decode()
    assert 'anytls_user_upload_bytes_total{user="alice"} 300.0' in text
    line, fields = summary(merged, snap)
    assert "up 300 B (+150 B)" in line and fields["bytes_up_delta"] == 150
    assert re.search(r"since start 2 sessions", line)
