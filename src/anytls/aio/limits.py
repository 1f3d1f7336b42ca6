"""Per-user limits on the server: speed (token buckets) and devices (client IP addresses).

A user's speed limit holds across all of that user's sessions, for each direction
separately: every session of the user draws on the same two :class:`TokenBucket` objects.
Nothing here runs for a user without a limit: a session gets a :class:`SessionThrottle`
only when its user has a speed limit, and the server's hot path pays one ``is None`` test
per TLS read for the others.

The waiting is the relay's own back-pressure, never a loop or a buffer of our own:

* upload (client → server): after a TLS read that puts the user's bucket in debt, the
  session stops reading its TLS socket (the kernel's window closes, the client's writes
  block) and a timer resumes it when the debt is paid;
* download (server → client): after a flush that puts the bucket in debt, the session's
  streams see ``pause_writing`` (their destination sockets stop being read), and a timer
  sends ``resume_writing`` when the debt is paid.

The bytes counted are the TLS payload bytes of the session (frames, padding included),
the same figures as the traffic counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class ServerConnection(Protocol):
    """What a throttle needs of a server session (:class:`anytls.aio.server.ServerConnection`)."""

    loop: asyncio.AbstractEventLoop
    bytes_out: int
    tls_congested: bool
    _write_paused: bool

    @property
    def is_closed(self) -> bool: ...

    def flush(self) -> None: ...

    def stream_reading_paused(self, paused: bool) -> None: ...

    def pause_producers(self) -> None: ...

    def resume_producers(self) -> None: ...


log = logging.getLogger("anytls.limits")

#: Bytes per second in one Mbit/s (decimal megabits, as panels and speed tests count).
MBPS = 125_000
#: Seconds of traffic a full bucket holds: how late a resume timer may fire (a loaded
#: machine) before the user loses some of its rate. A new bucket starts empty, so a
#: transfer never starts with a burst.
BURST_SECONDS = 0.25
#: Smallest bucket, so that one 16 KiB TLS record never waits by itself.
MIN_BURST = 32 * 1024


@dataclass(frozen=True)
class UserPolicy:
    """Limits of one user (0 = no limit)."""

    speed_limit: float = 0.0
    """Mbit/s, each direction separately, over all of the user's sessions."""
    device_limit: int = 0
    """Distinct client IP addresses at once."""


class TokenBucket:
    """A token bucket in bytes that may go into debt.

    :meth:`take` always succeeds and returns how long the caller should stop producing so
    that the average stays at ``rate``; a producer that has already moved the bytes (a
    socket read, a flush) just waits out the debt.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MIN_BURST, rate * BURST_SECONDS))
        self.tokens = 0.0
        self.stamp = now

    def _refill(self, now: float) -> float:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        self.tokens = tokens
        return tokens

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` bytes; seconds to wait before producing more (0 = none)."""
        tokens = self._refill(now) - n
        self.tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def wait(self, now: float) -> float:
        """Seconds until the debt is paid (0 = none)."""
        tokens = self._refill(now)
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def set_rate(self, rate: float) -> None:
        """Change the rate (the debt and the time stamp are kept)."""
        self.rate = float(rate)
        self.burst = max(MIN_BURST, rate * BURST_SECONDS)
        self.tokens = min(self.tokens, self.burst)


class DeviceLimitExceeded(Exception):
    """A user already has ``device_limit`` client IP addresses connected."""


class UserLimit:
    """Live limit state of one user in this process."""

    __slots__ = ("device_limit", "down", "ips", "sessions", "up")

    def __init__(self) -> None:
        self.up: TokenBucket | None = None
        self.down: TokenBucket | None = None
        self.device_limit = 0
        #: Client IP → sessions from it (in this process).
        self.ips: dict[str, int] = {}
        self.sessions = 0

    def apply(self, policy: UserPolicy, now: float) -> None:
        rate = policy.speed_limit * MBPS
        if rate <= 0:
            self.up = self.down = None
        elif self.up is None or self.down is None:
            self.up = TokenBucket(rate, now)
            self.down = TokenBucket(rate, now)
        else:
            self.up.set_rate(rate)
            self.down.set_rate(rate)
        self.device_limit = max(0, int(policy.device_limit))


class Limiter:
    """Every user's limits in one server process."""

    def __init__(self) -> None:
        self.policies: Mapping[str, UserPolicy] = {}
        self.default = UserPolicy()
        self.users: dict[str, UserLimit] = {}
        #: User → client IPs other worker processes have (refreshed by the parent).
        self.remote_ips: dict[str, frozenset[str]] = {}

    @property
    def active(self) -> bool:
        """True when any limit is configured (else :meth:`admit` is not needed)."""
        return bool(self.policies) or self.default != UserPolicy()

    def policy(self, user: str) -> UserPolicy:
        """The limits of ``user`` (its own, else the server-wide speed limit)."""
        own = self.policies.get(user)
        if own is None:
            return self.default
        if not own.speed_limit and self.default.speed_limit:
            return UserPolicy(self.default.speed_limit, own.device_limit)
        return own

    def configure(
        self, policies: Mapping[str, UserPolicy], default: UserPolicy, now: float
    ) -> None:
        """Use new limits; sessions already open follow them at once."""
        self.policies = policies
        self.default = default
        for name, state in self.users.items():
            state.apply(self.policy(name), now)

    def admit(self, conn: ServerConnection, user: str, ip: str) -> SessionThrottle | None:
        """Account a new session of ``user`` from ``ip``; its throttle if it has a speed limit.

        Raises :class:`DeviceLimitExceeded` when ``ip`` would be one device too many.
        """
        state = self.users.get(user)
        if state is None:
            state = UserLimit()
            state.apply(self.policy(user), conn.loop.time())
        limit = state.device_limit
        if limit and ip not in state.ips:
            devices = set(state.ips) | self.remote_ips.get(user, frozenset())
            if ip not in devices and len(devices) >= limit:
                raise DeviceLimitExceeded(
                    f"user {user} already has {len(devices)} device"
                    f"{'s' * (len(devices) != 1)} connected (device_limit {limit})"
                )
        self.users[user] = state
        state.sessions += 1
        state.ips[ip] = state.ips.get(ip, 0) + 1
        return self.throttle_for(conn, user)

    def track(self, conn: ServerConnection, user: str, ip: str) -> SessionThrottle | None:
        """Account a session already open when limits appeared (no device check)."""
        state = self.users.get(user)
        if state is None:
            state = self.users[user] = UserLimit()
            state.apply(self.policy(user), conn.loop.time())
        state.sessions += 1
        state.ips[ip] = state.ips.get(ip, 0) + 1
        return self.throttle_for(conn, user)

    def throttle_for(self, conn: ServerConnection, user: str) -> SessionThrottle | None:
        """A throttle for ``conn`` if ``user`` has a speed limit now."""
        state = self.users.get(user)
        if state is None or state.up is None:
            return None
        return SessionThrottle(conn, state)

    def release(self, user: str, ip: str) -> None:
        """A session admitted by :meth:`admit` ended."""
        state = self.users.get(user)
        if state is None:
            return
        count = state.ips.get(ip, 0) - 1
        if count > 0:
            state.ips[ip] = count
        else:
            state.ips.pop(ip, None)
        state.sessions -= 1
        if state.sessions <= 0:
            del self.users[user]

    def set_remote_ips(self, online: Mapping[str, Iterable[str]]) -> None:
        """Client IPs of every worker (the parent's merged view), for device limits."""
        self.remote_ips = {user: frozenset(ips) for user, ips in online.items()}


class SessionThrottle:
    """Holds one session to its user's buckets (see the module docstring)."""

    __slots__ = ("_down_timer", "_up_timer", "conn", "down_paused", "state", "up_paused")

    def __init__(self, conn: ServerConnection, state: UserLimit) -> None:
        self.conn = conn
        self.state = state
        self.up_paused = False
        self.down_paused = False
        self._up_timer: asyncio.TimerHandle | None = None
        self._down_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ upload
    def received(self, nbytes: int) -> None:
        """``nbytes`` were read from the client."""
        bucket = self.state.up
        if bucket is None:
            return
        delay = bucket.take(nbytes, self.conn.loop.time())
        if delay > 0 and not self.up_paused:
            self.up_paused = True
            self.conn.stream_reading_paused(True)
            self._up_timer = self.conn.loop.call_later(delay, self._resume_up)

    def _resume_up(self) -> None:
        self._up_timer = None
        bucket = self.state.up
        delay = bucket.wait(self.conn.loop.time()) if bucket is not None else 0.0
        if delay > 0:
            self._up_timer = self.conn.loop.call_later(delay, self._resume_up)
            return
        self.up_paused = False
        self.conn.stream_reading_paused(False)

    # ------------------------------------------------------------ download
    def flush(self) -> None:
        """The session's flush, then the bytes it wrote are charged (set per instance)."""
        conn = self.conn
        before = conn.bytes_out
        type(conn).flush(conn)
        sent = conn.bytes_out - before
        bucket = self.state.down
        if not sent or bucket is None:
            return
        delay = bucket.take(sent, conn.loop.time())
        if delay > 0 and not self.down_paused:
            self.down_paused = True
            if not conn._write_paused:
                type(conn).pause_producers(conn)
            self._down_timer = conn.loop.call_later(delay, self._resume_down)

    def _resume_down(self) -> None:
        self._down_timer = None
        conn = self.conn
        bucket = self.state.down
        delay = bucket.wait(conn.loop.time()) if bucket is not None else 0.0
        if delay > 0:
            self._down_timer = conn.loop.call_later(delay, self._resume_down)
            return
        self.down_paused = False
        if not conn.tls_congested and not conn.is_closed:
            type(conn).resume_producers(conn)

    def cancel(self) -> None:
        """The session ended: stop the timers."""
        for timer in (self._up_timer, self._down_timer):
            if timer is not None:
                timer.cancel()
        self._up_timer = self._down_timer = None
