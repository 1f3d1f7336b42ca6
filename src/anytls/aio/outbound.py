"""Destination policy for the server: which addresses streams may reach.

With ``deny_private`` the server refuses loopback, private, link-local, multicast and
other non-global destinations (an SSRF guard for shared servers). Names are resolved
here first and the *checked* address is what gets dialled, so a DNS answer cannot swap
in a private address afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections import OrderedDict

from ..core.address import Address


class DestinationDenied(OSError):
    """The destination is not allowed by the server's policy."""


def family_of(ip: str) -> int:
    """The address family of an IP literal."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


@functools.lru_cache(maxsize=4096)
def is_private(ip: str) -> bool:
    """True for addresses a public proxy should not reach (cached: UDP asks per datagram)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


async def lookup(host: str, port: int | None, kind: int) -> list[tuple[int, str]]:
    """``(family, ip)`` pairs ``host`` resolves to, in resolver order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    return list(dict.fromkeys((family, str(sa[0])) for family, _, _, _, sa in infos))


async def resolve_allowed(destination: Address, deny_private: bool) -> list[tuple[int, str]]:
    """Resolve ``destination`` to ``(family, ip)`` pairs that the policy allows.

    Raises :class:`DestinationDenied` when every address is refused, ``OSError`` when the
    name does not resolve.
    """
    if destination.is_ip:
        family = family_of(destination.host)
        candidates: list[tuple[int, str]] = [(family, destination.host)]
    else:
        candidates = await lookup(destination.host, destination.port, socket.SOCK_STREAM)
    if not deny_private:
        return candidates
    allowed = [(fam, ip) for fam, ip in candidates if not is_private(ip)]
    if not allowed:
        raise DestinationDenied(
            f"destination {destination} is not allowed (private or local address)"
        )
    return allowed


DNS_CACHE_SIZE = 256
DNS_CACHE_TTL = 60.0


class DnsCache:
    """A small per-owner cache of name lookups for datagrams (TTL 60 s, 256 names)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()

    def cached(self, host: str) -> str | None:
        """The preferred address of ``host`` if a fresh lookup is cached, else None."""
        hit = self._entries.get(host)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return pick_address(hit[1])

    async def resolve(self, host: str) -> list[tuple[int, str]]:
        now = time.monotonic()
        hit = self._entries.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await lookup(host, None, socket.SOCK_DGRAM)
        self._entries[host] = (now + DNS_CACHE_TTL, result)
        self._entries.move_to_end(host)
        while len(self._entries) > DNS_CACHE_SIZE:
            self._entries.popitem(last=False)
        return result


def pick_address(infos: list[tuple[int, str]]) -> str | None:
    """The first IPv4 address of a lookup result, else its first address."""
    for family, ip in infos:
        if family == socket.AF_INET:
            return ip
    return infos[0][1] if infos else None
