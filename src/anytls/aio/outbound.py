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
