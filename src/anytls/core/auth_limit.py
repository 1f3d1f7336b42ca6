"""Online password guessing limit: failed authentications per source, per minute.

Sources are IPv4 addresses and IPv6 /64 networks (one customer usually holds a whole /64).
Past ``limit`` failures in the current one-minute window, a source's next attempts are to
be treated as failed without checking the password, answered exactly as a wrong password
is, so the limit is no oracle for a prober. The table holds at most ``max_sources``
entries, oldest dropped first. No I/O: the caller passes the clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

#: Seconds in one counting window.
WINDOW = 60.0
#: Sources remembered at most (about 100 bytes each).
MAX_SOURCES = 65536


def source_key(host: str) -> str:
    """The unit that is counted: the IPv4 address, or the IPv6 /64 (IPv4-mapped → IPv4)."""
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthFailureLimiter:
    """Counts failed authentications per source in fixed one-minute windows."""

    def __init__(self, window: float = WINDOW, max_sources: int = MAX_SOURCES) -> None:
        self.window = window
        self.max_sources = max_sources
        #: source key → [window start, failures in it]
        self._table: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def limited(self, host: str, now: float, limit: int) -> bool:
        """True when ``host``'s source already failed ``limit`` times in this window."""
        if limit <= 0:
            return False
        entry = self._table.get(source_key(host))
        return entry is not None and now - entry[0] < self.window and entry[1] >= limit

    def failed(self, host: str, now: float, limit: int) -> bool:
        """Record one failure; True exactly when it makes the source reach ``limit``."""
        if limit <= 0:
            return False
        key = source_key(host)
        entry = self._table.get(key)
        if entry is None or now - entry[0] >= self.window:
            entry = self._table[key] = [now, 0]
        entry[1] += 1
        self._table.move_to_end(key)
        while len(self._table) > self.max_sources:
            self._table.popitem(last=False)
        return entry[1] == limit
