"""A tiny authoritative DNS server on a loopback UDP socket, built on dnspython's message API.

    async with dns_server() as dnsd:          # dnsd.host, dnsd.port, dnsd.stats.datagrams
        ...  # ask for anything under ``test.`` (see ``expected_a``)

Answers every query for a name under ``test.``:

* ``A``    → one address derived from the name (:func:`expected_a`), TTL 60;
* ``AAAA`` → ``fd00::`` + the same four bytes;
* ``TXT``  → :data:`TXT_STRINGS` strings of 200 bytes (≈ 2.4 KB, a larger-than-512-byte
  answer, sent whole: the query is expected to carry EDNS);
* other names → NXDOMAIN; unparsable datagrams are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
from collections.abc import AsyncIterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .echo import ServerAddr, ServerStats

__all__ = ["TXT_STRINGS", "dns_server", "expected_a", "expected_aaaa", "expected_txt"]

ZONE = dns.name.from_text("test.")
TXT_STRINGS = 12


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.lower().rstrip(".").encode()).digest()


def expected_a(name: str) -> str:
    """The A record the server gives ``name``: 10.x.y.z from a hash of the name."""
    d = _digest(name)
    return f"10.{d[0]}.{d[1]}.{d[2]}"


def expected_aaaa(name: str) -> str:
    d = _digest(name)
    return str(ipaddress.IPv6Address(b"\xfd" + bytes(11) + d[:4]))


def expected_txt(name: str) -> list[bytes]:
    d = _digest(name).hex().encode()
    return [(d + b"-%02d-" % i).ljust(200, b"x") for i in range(TXT_STRINGS)]


def answer(query: dns.message.Message) -> dns.message.Message:
    """The response to ``query``."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = question.name
    text = name.to_text()
    if not name.is_subdomain(ZONE):
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    rdtype = question.rdtype
    if rdtype == dns.rdatatype.A:
        values = [expected_a(text)]
    elif rdtype == dns.rdatatype.AAAA:
        values = [expected_aaaa(text)]
    elif rdtype == dns.rdatatype.TXT:
        values = [" ".join(f'"{s.decode()}"' for s in expected_txt(text))]
    else:
        return response  # NOERROR, no data
    response.answer.append(dns.rrset.from_text_list(name, 60, dns.rdataclass.IN, rdtype, values))
    return response


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.datagrams += 1
        self.stats.bytes_in += len(data)
        if addr not in self.stats.peers:
            self.stats.peers.append(addr)
            self.stats.connections += 1
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        wire = answer(query).to_wire()
        self.stats.bytes_out += len(wire)
        assert self.transport is not None
        self.transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:
        pass


@contextlib.asynccontextmanager
async def dns_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[ServerAddr]:
    """Run the server; yields its address (``.stats.datagrams`` counts queries)."""
    loop = asyncio.get_running_loop()
    stats = ServerStats()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(stats), local_addr=(host, port), family=family
    )
    bound = transport.get_extra_info("sockname")
    try:
        yield ServerAddr(host, int(bound[1]), stats)
    finally:
        transport.close()
        await asyncio.sleep(0)
