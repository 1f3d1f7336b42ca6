"""A real DNS exchange through the tunnel: dnspython ↔ our ``anytls-client`` ↔ server ↔ a
loopback DNS server (tests/helpers/dnsd.py), against our ``anytls-server`` and sing-box.

* ``--udp-forward 127.0.0.1:P=127.0.0.1:DNS``: ``dns.query.udp(q, "127.0.0.1", port=P)``
  straight at the forwarded port, as a stub resolver would use it. Every ``dns.query.udp``
  call uses a fresh source port, so each query is its own connect-format association; a
  forward whose TARGET is a name (``localhost``) has the server resolve it.
* SOCKS5 UDP ASSOCIATE (dnspython has no SOCKS support): the query is built with dnspython,
  carried by the hand-written SOCKS5 UDP client, and the answer parsed with dnspython —
  one non-connect association for all queries, to an IP and to a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.helpers.aio import async_test
from tests.helpers.dnsd import dns_server, expected_a, expected_aaaa, expected_txt
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.singbox import SingBox, anytls_server_config
from tests.helpers.socks5_udp import socks5_udp_associate
from tests.helpers.udp_matrix import record

PASSWORD = "dns-pw"
NAMES = [f"host{i}.example.test." for i in range(8)]
TYPES = ("A", "AAAA", "TXT")


def check_answer(response: dns.message.Message, name: str, rdtype: str) -> None:
    assert response.rcode() == 0, response
    (rrset,) = response.answer
    assert rrset.name.to_text() == name and rrset.rdtype == dns.rdatatype.from_text(rdtype)
    if rdtype == "A":
        assert [r.address for r in rrset] == [expected_a(name)]
    elif rdtype == "AAAA":
        assert [r.address for r in rrset] == [expected_aaaa(name)]
    else:
        (txt,) = rrset
        assert list(txt.strings) == expected_txt(name)


def make_query(name: str, rdtype: str) -> dns.message.Message:
    # EDNS with a 4 KiB payload, so the ~2.4 KB TXT answer comes whole over UDP
    return dns.message.make_query(name, rdtype, use_edns=0, payload=4096)


@contextlib.asynccontextmanager
async def tunnel_server(
    kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]
) -> AsyncIterator[tuple[int, AnyTLSProcess | SingBox]]:
    cert, key = cert_pair
    port = free_port()
    if kind == "ours":
        args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key)]
        async with AnyTLSProcess.server(port, args, tmp_path / "server") as srv:
            yield port, srv
    else:
        cfg = anytls_server_config(port, [("u", PASSWORD)], cert, key)
        async with SingBox(cfg, tmp_path / "sing-box", name="server") as sb:
            yield port, sb


@pytest.mark.parametrize("kind", ["ours", "sing-box"])
@async_test
async def test_dns_through_udp_forward_and_socks5(
    kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    async with dns_server() as dnsd, tunnel_server(kind, tmp_path, cert_pair) as (port, srv):
        mixed = free_port_tcp_udp()
        fwd_ip = free_port("127.0.0.1", socket.SOCK_DGRAM)
        fwd_name = free_port("127.0.0.1", socket.SOCK_DGRAM)
        args = [
            "-s", f"127.0.0.1:{port}", "-p", PASSWORD, "--insecure",
            "--udp-forward", f"127.0.0.1:{fwd_ip}=127.0.0.1:{dnsd.port}",
            f"--udp-forward=127.0.0.1:{fwd_name}=localhost:{dnsd.port}",
        ]  # fmt: skip
        async with AnyTLSProcess.client(mixed, args, tmp_path / "client") as cli:
            await cli.wait_log(rf"UDP forward 127\.0\.0\.1:{fwd_name} → localhost:{dnsd.port}")

            # 1. --udp-forward, plain dns.query.udp: a new source port (association) per query
            rtts: list[float] = []
            for name in NAMES:
                for rdtype in TYPES:
                    t0 = time.perf_counter()
                    response = await asyncio.to_thread(
                        dns.query.udp, make_query(name, rdtype), "127.0.0.1", 5, fwd_ip
                    )
                    rtts.append(time.perf_counter() - t0)
                    check_answer(response, name, rdtype)
            record(
                f"dnspython → ours CLI --udp-forward → {kind} server (new association per query)",
                None,
                rtts,
                queries=len(rtts),
            )
            # ... and reusing one socket (one association), also via the name target
            warm: list[float] = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                for i in range(40):
                    name = NAMES[i % len(NAMES)]
                    t0 = time.perf_counter()
                    response = await asyncio.to_thread(
                        dns.query.udp,
                        make_query(name, "A"),
                        "127.0.0.1",
                        5,
                        fwd_name if i % 2 else fwd_ip,
                        sock=sock,
                    )
                    warm.append(time.perf_counter() - t0)
                    check_answer(response, name, "A")
            record(
                f"dnspython → ours CLI --udp-forward → {kind} server (one socket)",
                None,
                warm,
                queries=len(warm),
            )

            # 2. SOCKS5 UDP: dnspython messages over one association, to an IP and a name
            async with socks5_udp_associate("127.0.0.1", mixed) as s5:
                for i, name in enumerate(NAMES * 2):
                    rdtype = TYPES[i % 3]
                    query = make_query(name, rdtype)
                    target = ("localhost" if i % 2 else "127.0.0.1", dnsd.port)
                    await s5.sendto(query.to_wire(), target)
                    wire, source = await s5.recvfrom(timeout=5)
                    response = dns.message.from_wire(wire)
                    assert response.id == query.id
                    assert source == ("127.0.0.1", dnsd.port)
                    check_answer(response, name, rdtype)
    # every query reached the DNS server exactly once
    assert dnsd.stats.datagrams == len(NAMES) * 3 + 40 + len(NAMES) * 2
    log = srv.log_text()
    if kind == "ours":
        assert f"connect request to 127.0.0.1:{dnsd.port}" in log
        assert f"connect request to localhost:{dnsd.port}" in log
        assert "packet request to 0.0.0.0:0" in log
    else:
        assert f"inbound UoT connect connection to 127.0.0.1:{dnsd.port}" in log
        assert f"inbound UoT connect connection to localhost:{dnsd.port}" in log
        assert "inbound UoT connection to 0.0.0.0:0" in log
