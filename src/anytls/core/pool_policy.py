"""Client session-pool decisions, pure and clock-free (PROTOCOL.md §7).

The asyncio pool asks these functions what to do and then does it. Rules, as in
anytls-go/sing-anytls, plus one extension:

* a new stream takes the **newest** usable session (highest ``seq``); the Go clients only
  use idle ones (one active stream per session), which is ``max_streams=1`` here, and a
  larger cap lets one session carry several concurrent streams;
* with no usable session, a stream starts a new one, unless ``max_handshakes`` sessions
  are already being set up (TCP + TLS): it then waits for the one of those with the fewest
  streams waiting and shares it (:meth:`PoolPolicy.join`). A burst of streams (a page
  load) thus opens a few sessions, as a browser opens a few connections to one host,
  instead of one TLS handshake per stream; the Go clients have no such cap (``0``);
* every ``check_interval`` the idle sessions are walked newest → oldest: those idle for
  less than ``idle_timeout`` are kept; an expired one is still kept (and its idle clock
  restarted) while fewer than ``min_idle`` have been kept; the rest are closed;
* intervals and timeouts of 5 s or less mean 30 s, as in the reference client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: What the reference substitutes for intervals and timeouts of 5 s or less.
DEFAULT_INTERVAL = 30.0


def normalise_interval(seconds: float) -> float:
    """Return ``seconds``, or 30 when it is 5 or less (reference behaviour)."""
    return DEFAULT_INTERVAL if seconds <= 5 else seconds


@dataclass(slots=True)
class SessionInfo:
    """What the policy needs to know about one session."""

    seq: int
    """Creation order; higher is newer."""
    streams: int
    """Open streams."""
    idle_since: float | None
    """When the last stream closed, or ``None`` while streams are open."""
    usable: bool = True
    """False once the session is closing or closed."""


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """The pool's knobs; see the module docstring."""

    idle_timeout: float = 30.0
    check_interval: float = 30.0
    min_idle: int = 0
    max_streams: int = 1
    """Concurrent streams one session may carry (1 = the Go clients' behaviour)."""
    max_handshakes: int = 0
    """Sessions set up at a time before new streams share them (0 = no limit)."""

    def can_take(self, streams: int) -> bool:
        """Whether a usable session with ``streams`` open streams may take one more."""
        return streams < self.max_streams

    def choose(self, sessions: Sequence[SessionInfo]) -> int | None:
        """The ``seq`` of the session a new stream should use, or None to open one."""
        best: int | None = None
        for info in sessions:
            if info.usable and self.can_take(info.streams) and (best is None or info.seq > best):
                best = info.seq
        return best

    def join(self, claims: Sequence[int]) -> int | None:
        """Which session being set up a new stream should wait for, or None to start one.

        ``claims``: for each session being set up that streams may share (not a fresh
        retry's), oldest first, the streams waiting for it. Returns an index into
        ``claims``. Below ``max_handshakes`` such sessions a stream shares only within
        ``max_streams`` (the newest session with room); at the cap it shares the one with
        the fewest streams waiting (the oldest of those, which is done first).
        """
        if not claims:
            return None
        if self.max_handshakes and len(claims) >= self.max_handshakes:
            return min(range(len(claims)), key=claims.__getitem__)
        for index in range(len(claims) - 1, -1, -1):
            if claims[index] < self.max_streams:
                return index
        return None

    def expire(self, sessions: Sequence[SessionInfo], now: float) -> tuple[list[int], list[int]]:
        """Walk idle sessions; return ``(to_close, to_refresh)`` lists of ``seq``.

        ``to_refresh`` are expired sessions kept to honour ``min_idle``: the caller resets
        their ``idle_since`` to ``now``.
        """
        idle = sorted(
            (s for s in sessions if s.usable and s.streams == 0 and s.idle_since is not None),
            key=lambda s: s.seq,
            reverse=True,
        )
        kept = 0
        close: list[int] = []
        refresh: list[int] = []
        for info in idle:
            assert info.idle_since is not None
            if now - info.idle_since < self.idle_timeout:
                kept += 1
            elif kept < self.min_idle:
                kept += 1
                refresh.append(info.seq)
            else:
                close.append(info.seq)
        return close, refresh
