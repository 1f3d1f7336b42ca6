"""Resolve a name through an AnyTLS server: dnspython's async API over ``anytls.open_udp``.

    pip install anytls dnspython
    python dns_over_anytls.py 'anytls://password@your.server:443/' 1.1.1.1 example.com AAAA

The query leaves from the AnyTLS server (UDP over TCP inside the tunnel), so the DNS server
sees the AnyTLS server's address, and nothing on the way sees the question.
"""

# dnspython's socket interface takes timeout arguments.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message

import anytls
from anytls.contrib import config_from_uri


class TunnelledDatagramSocket(dns.asyncbackend.DatagramSocket):
    """An ``anytls.UdpAssociation`` as dnspython's datagram socket (``sock=``)."""

    def __init__(self, udp: anytls.UdpAssociation, family: int = socket.AF_INET) -> None:
        super().__init__(family, socket.SOCK_DGRAM)
        self.udp = udp

    async def sendto(self, what: bytes, destination: Any, timeout: float | None) -> int:
        self.udp.sendto(what, (destination[0], destination[1]))
        return len(what)

    async def recvfrom(self, size: int, timeout: float | None) -> tuple[bytes, Any]:
        try:
            async with asyncio.timeout(timeout):
                data, source = await self.udp.recvfrom()
        except TimeoutError:
            raise dns.exception.Timeout(timeout=timeout) from None
        if self.family == socket.AF_INET6:
            return data, (source.host, source.port, 0, 0)
        return data, (source.host, source.port)

    async def close(self) -> None:
        self.udp.close()


async def resolve(
    link: str, dns_server: str, name: str, rdtype: str = "A", port: int = 53
) -> dns.message.Message:
    """Ask ``dns_server`` for ``name``/``rdtype`` through the AnyTLS server at ``link``."""
    async with anytls.Client(config_from_uri(link)) as client:
        udp = await anytls.open_udp(client)
        family = socket.AF_INET6 if ":" in dns_server else socket.AF_INET
        async with TunnelledDatagramSocket(udp, family) as sock:
            query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
            response = await dns.asyncquery.udp(query, dns_server, timeout=5, port=port, sock=sock)
            return response


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)  # the usage, on stderr
    link, server, name = sys.argv[1:4]
    rdtype = sys.argv[4] if len(sys.argv) > 4 else "A"
    answer = asyncio.run(resolve(link, server, name, rdtype))
    for rrset in answer.answer:
        print(rrset)
