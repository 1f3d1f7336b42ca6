"""Destination policy for the server: which addresses streams may reach.

By default the server refuses loopback, private, link-local, multicast and other
non-global destinations (an SSRF guard: the server's own services, its LAN and the cloud
metadata endpoint stay out of reach); ``allow_private`` opts out. Names are resolved
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
from collections.abc import Callable

from ..core.address import Address


class DestinationDenied(OSError):
    """The destination is not allowed by the server's policy."""


def family_of(ip: str) -> int:
    """The address family of an IP literal."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


#: IPv6 prefixes that carry an IPv4 address in their low 32 bits (NAT64 well-known
#: prefix, IPv4-compatible ::a.b.c.d); the embedded address is checked too.
_EMBEDS_LOW32 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
#: IPv6 ranges refused outright: local-use NAT64 (RFC 8215) translates to anything.
_REFUSED_V6 = (ipaddress.IPv6Network("64:ff9b:1::/48"),)
#: 6to4: an IPv4 address in bits 16..47.
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
#: Shared address space (carrier-grade NAT), which Python's ``is_global`` calls neither.
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def _not_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        not addr.is_global
        or addr.is_multicast
        or addr.is_unspecified
        or (isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT)
    )


@functools.lru_cache(maxsize=4096)
def is_private(ip: str) -> bool:
    """True for addresses a public proxy should not reach (cached: UDP asks per datagram).

    Loopback, RFC 1918, link-local (cloud metadata 169.254.169.254), CGNAT 100.64/10,
    unique-local fc00::/7, unspecified, multicast, reserved ranges, and IPv6 forms that
    embed such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
    """
    addr = ipaddress.ip_address(ip.split("%")[0])
    if _not_public(addr):
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return _not_public(addr.ipv4_mapped)
        if any(addr in net for net in _REFUSED_V6):
            return True
        if any(addr in net for net in _EMBEDS_LOW32):
            return _not_public(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if addr in _SIX_TO_FOUR:
            return _not_public(ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF))
    return False


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
    """A small per-owner cache of name lookups (TTL 60 s, 256 names): for datagrams, and
    the client's server name. Concurrent lookups of one name share one resolver call."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[list[tuple[int, str]]]] = {}

    def cached(self, host: str) -> str | None:
        """The preferred address of ``host`` if a fresh lookup is cached, else None."""
        hit = self._entries.get(host)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return pick_address(hit[1])

    async def resolve(self, host: str) -> list[tuple[int, str]]:
        """``(family, ip)`` pairs of ``host``, from the cache or the system's resolver."""
        hit = self._entries.get(host)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        task = self._pending.get(host)
        if task is None:
            # A task of its own: a caller given up (cancelled) does not fail the others.
            task = asyncio.get_running_loop().create_task(self._lookup(host))
            task.add_done_callback(_retrieve)
            self._pending[host] = task
        return await asyncio.shield(task)

    async def _lookup(self, host: str) -> list[tuple[int, str]]:
        try:
            result = await lookup(host, None, socket.SOCK_DGRAM)
        finally:
            del self._pending[host]
        self._entries[host] = (time.monotonic() + DNS_CACHE_TTL, result)
        self._entries.move_to_end(host)
        while len(self._entries) > DNS_CACHE_SIZE:
            self._entries.popitem(last=False)
        return result

    def forget(self, host: str) -> None:
        """Drop ``host``'s cached lookup (its address did not answer)."""
        self._entries.pop(host, None)


def _retrieve(task: asyncio.Task[list[tuple[int, str]]]) -> None:
    # Its callers may all have been cancelled: nobody else would look at its error.
    if not task.cancelled():
        task.exception()


def ordered_addresses(
    infos: list[tuple[int, str]], last: Callable[[str], bool] = lambda ip: False
) -> list[str]:
    """The addresses of a lookup result to try in turn: IPv4 first, in the resolver's
    order, and those for which ``last(ip)`` is true after all the others."""
    ranked = sorted(infos, key=lambda info: (last(info[1]), info[0] != socket.AF_INET))
    return [ip for _, ip in ranked]


def pick_address(infos: list[tuple[int, str]]) -> str | None:
    """The first IPv4 address of a lookup result, else its first address."""
    ordered = ordered_addresses(infos)
    return ordered[0] if ordered else None
