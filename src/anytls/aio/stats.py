"""Live counters of a server: per user and in total, with Prometheus and log output.

The hot path pays nothing here: bytes are the ``bytes_in``/``bytes_out`` counters every
:class:`~anytls.aio.connection.SessionConnection` already keeps (one addition per read and
per flush). A user's byte count is what its finished sessions moved (added once when a
session ends) plus what its live sessions have moved so far, summed when someone asks —
a Prometheus scrape or the once-a-minute summary line. Sessions, streams and UDP
associations are plain integer counters bumped when they open or close. Everything runs
on the event loop thread, so there are no locks.

``up`` is client → server (what the server reads from the TLS connection, padding and
framing included), ``down`` is server → client.

With several worker processes each keeps its own :class:`ServerStats`; the parent asks
every worker for a :meth:`ServerStats.snapshot` over a socket pair
(:func:`serve_snapshot_requests` / :class:`SnapshotChannel`) and adds them up
(:func:`merge_snapshots`), so ``/metrics`` and the summary describe the whole server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from .. import __version__
from .http_endpoint import LocalHttpServer, Response

log = logging.getLogger("anytls.stats")

#: A snapshot: ``{"users": {name: {field: int}}, "online": {name: [client IPs]},
#: "connections": int, "rejected": int, "workers": int, "started": float}``; plain data,
#: JSON-serialisable.
Snapshot = dict[str, Any]

USER_FIELDS = (
    "up",
    "down",
    "sessions",
    "sessions_total",
    "streams",
    "streams_total",
    "udp",
    "udp_total",
)


class _Session(Protocol):
    bytes_in: int
    bytes_out: int
    streams: dict[int, Any]
    client_ip: str


class UserStats:
    """Counters of one user; the live sessions' bytes are added when read."""

    __slots__ = (
        "closed_down",
        "closed_up",
        "name",
        "sessions",
        "sessions_total",
        "streams_total",
        "udp",
        "udp_total",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: Bytes of sessions that have ended.
        self.closed_up = 0
        self.closed_down = 0
        #: Live sessions of this user.
        self.sessions: set[_Session] = set()
        self.sessions_total = 0
        self.streams_total = 0
        #: Open UDP-over-TCP associations.
        self.udp = 0
        self.udp_total = 0

    def stream_opened(self) -> None:
        """A stream of this user opened (TCP or UDP)."""
        self.streams_total += 1

    def udp_opened(self) -> None:
        """A UDP-over-TCP association of this user opened."""
        self.udp += 1
        self.udp_total += 1

    def udp_closed(self) -> None:
        """A UDP-over-TCP association of this user ended."""
        self.udp -= 1

    def snapshot(self) -> dict[str, int]:
        """This user's figures now."""
        up = self.closed_up
        down = self.closed_down
        streams = 0
        for conn in self.sessions:
            up += conn.bytes_in
            down += conn.bytes_out
            streams += len(conn.streams)
        return {
            "up": up,
            "down": down,
            "sessions": len(self.sessions),
            "sessions_total": self.sessions_total,
            "streams": streams,
            "streams_total": self.streams_total,
            "udp": self.udp,
            "udp_total": self.udp_total,
        }


class ServerStats:
    """Every user's counters plus server-wide ones; owned by one server (one process)."""

    def __init__(self, connections: Callable[[], int] | None = None) -> None:
        self.users: dict[str, UserStats] = {}
        #: Connections closed before authenticating (wrong password, timeout, garbage).
        self.rejected = 0
        self.started = time.time()
        self._connections = connections or (lambda: 0)

    def user(self, name: str) -> UserStats:
        """The counters of ``name`` (created on first use)."""
        stats = self.users.get(name)
        if stats is None:
            stats = self.users[name] = UserStats(name)
        return stats

    def session_opened(self, conn: _Session, user: str) -> UserStats:
        """``conn`` authenticated as ``user``; returns that user's counters."""
        stats = self.user(user)
        stats.sessions.add(conn)
        stats.sessions_total += 1
        return stats

    def session_closed(self, conn: _Session, stats: UserStats) -> None:
        """``conn`` ended: its bytes move to the user's finished total."""
        if conn in stats.sessions:
            stats.sessions.discard(conn)
            stats.closed_up += conn.bytes_in
            stats.closed_down += conn.bytes_out

    def online(self) -> dict[str, list[str]]:
        """User → the client IP addresses of its live sessions (users with any)."""
        return {
            name: sorted({getattr(conn, "client_ip", "") for conn in user.sessions})
            for name, user in self.users.items()
            if user.sessions
        }

    def traffic(self) -> dict[str, list[int]]:
        """User → ``[up, down]`` bytes since start, for users that moved any."""
        out: dict[str, list[int]] = {}
        for name, user in self.users.items():
            up = user.closed_up
            down = user.closed_down
            for conn in user.sessions:
                up += conn.bytes_in
                down += conn.bytes_out
            if up or down:
                out[name] = [up, down]
        return out

    def snapshot(self) -> Snapshot:
        """Everything now, as plain data."""
        return {
            "users": {name: user.snapshot() for name, user in self.users.items()},
            "online": self.online(),
            "connections": self._connections(),
            "rejected": self.rejected,
            "workers": 1,
            "started": self.started,
        }


def empty_snapshot() -> Snapshot:
    """A snapshot of a server that has seen nothing."""
    return {
        "users": {},
        "online": {},
        "connections": 0,
        "rejected": 0,
        "workers": 0,
        "started": time.time(),
    }


def merge_snapshots(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Add up the snapshots of several worker processes."""
    out = empty_snapshot()
    users: dict[str, dict[str, int]] = out["users"]
    online: dict[str, list[str]] = out["online"]
    for snap in snapshots:
        for name, ips in snap.get("online", {}).items():
            online[name] = sorted(set(online.get(name, ())) | set(ips))
        out["connections"] += snap.get("connections", 0)
        out["rejected"] += snap.get("rejected", 0)
        out["workers"] += snap.get("workers", 1)
        out["started"] = min(out["started"], snap.get("started", out["started"]))
        for name, figures in snap.get("users", {}).items():
            total = users.setdefault(name, dict.fromkeys(USER_FIELDS, 0))
            for key in USER_FIELDS:
                total[key] += int(figures.get(key, 0))
    return out


def totals(snapshot: Snapshot) -> dict[str, int]:
    """The per-user figures of ``snapshot`` summed over all users."""
    out = dict.fromkeys(USER_FIELDS, 0)
    for figures in snapshot["users"].values():
        for key in USER_FIELDS:
            out[key] += figures.get(key, 0)
    return out


# ---------------------------------------------------------------------- Prometheus


class SnapshotCollector:
    """A ``prometheus_client`` collector that exposes one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        users = snap["users"]
        total = totals(snap)
        specs = (
            ("up", "upload_bytes", "counter", "Bytes received from clients (client to server)"),
            ("down", "download_bytes", "counter", "Bytes sent to clients (server to client)"),
            ("sessions", "sessions_active", "gauge", "Authenticated sessions open now"),
            ("sessions_total", "sessions", "counter", "Sessions authenticated since start"),
            ("streams", "streams_active", "gauge", "Streams (TCP and UDP) open now"),
            ("streams_total", "streams", "counter", "Streams opened since start"),
            ("udp", "udp_associations_active", "gauge", "UDP-over-TCP associations open now"),
            ("udp_total", "udp_associations", "counter", "UDP associations opened since start"),
        )
        for key, name, kind, text in specs:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"anytls_{name}", text, value=total[key])
            per_user = family(f"anytls_user_{name}", f"{text}, per user", labels=["user"])
            for user in sorted(users):
                per_user.add_metric([user], users[user].get(key, 0))
            yield per_user
        yield GaugeMetricFamily(
            "anytls_connections",
            "TLS connections open now (authenticated or not)",
            value=snap["connections"],
        )
        yield CounterMetricFamily(
            "anytls_rejected_connections",
            "Connections closed before authenticating (wrong password, timeout, not AnyTLS)",
            value=snap["rejected"],
        )
        yield GaugeMetricFamily("anytls_workers", "Worker processes", value=snap["workers"])
        yield GaugeMetricFamily(
            "anytls_start_time_seconds", "Start time (Unix seconds)", value=snap["started"]
        )
        info = GaugeMetricFamily("anytls_build_info", "Version of anytls", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


#: The classic text format (every Prometheus version reads it; our names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(snapshot: Snapshot) -> bytes:
    """``snapshot`` in the Prometheus text exposition format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


class MetricsServer(LocalHttpServer):
    """A small HTTP endpoint serving ``GET /metrics`` from ``snapshot()``.

    It runs on the event loop (no thread), so reading the counters needs no locking; a
    scrape costs one snapshot (one pass over the live sessions).
    """

    name = "metrics"

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]]) -> None:
        super().__init__()
        self.snapshot = snapshot

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """``/metrics`` in Prometheus' text format; ``/`` says where it is."""
        path = target.partition("?")[0]
        if method not in ("GET", "HEAD"):
            return Response(405, "text/plain", b"GET only\n")
        if path == "/metrics":
            return Response(200, CONTENT_TYPE, render_metrics(await self.snapshot()))
        if path == "/":
            return Response(200, "text/plain", b"anytls-server: metrics at /metrics\n")
        return Response(404, "text/plain", b"not found\n")


# ---------------------------------------------------------------------- summary line


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ``20.0 MiB`` ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def summary(snapshot: Snapshot, previous: Snapshot | None) -> tuple[str, dict[str, Any]]:
    """The summary line for ``snapshot`` (deltas against ``previous``) and its fields."""
    now = totals(snapshot)
    before = totals(previous) if previous is not None else dict.fromkeys(USER_FIELDS, 0)
    active_users = sum(1 for f in snapshot["users"].values() if f.get("sessions"))
    up_delta = now["up"] - before["up"]
    down_delta = now["down"] - before["down"]
    text = (
        f"stats: {now['sessions']} session{'s' * (now['sessions'] != 1)} "
        f"({active_users} user{'s' * (active_users != 1)}), {now['streams']} "
        f"stream{'s' * (now['streams'] != 1)}, {now['udp']} UDP; "
        f"up {format_bytes(now['up'])} (+{format_bytes(up_delta)}), "
        f"down {format_bytes(now['down'])} (+{format_bytes(down_delta)}); since start "
        f"{now['sessions_total']} sessions, {now['streams_total']} streams, "
        f"{snapshot['rejected']} rejected"
    )
    fields = {
        "event": "stats",
        "sessions": now["sessions"],
        "users_active": active_users,
        "streams": now["streams"],
        "udp": now["udp"],
        "bytes_up": now["up"],
        "bytes_down": now["down"],
        "bytes_up_delta": up_delta,
        "bytes_down_delta": down_delta,
        "sessions_total": now["sessions_total"],
        "streams_total": now["streams_total"],
        "rejected": snapshot["rejected"],
    }
    return text, fields


async def log_summaries(
    snapshot: Callable[[], Awaitable[Snapshot]], interval: float, logger: logging.Logger = log
) -> None:
    """Log :func:`summary` every ``interval`` seconds, forever (cancel to stop)."""
    previous: Snapshot | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            current = await snapshot()
        except Exception:  # pragma: no cover - a bug; keep logging later
            logger.exception("cannot collect statistics")
            continue
        text, fields = summary(current, previous)
        logger.info("%s", text, extra=fields)
        previous = current


# ---------------------------------------------------------------------- worker channel


#: A worker's handler of parent commands: ``{"op": ..., ...}`` → a JSON-able answer.
CommandHandler = Callable[[dict[str, Any]], Any]


async def serve_snapshot_requests(
    sock: socket.socket,
    snapshot: Callable[[], Snapshot],
    command: CommandHandler | None = None,
) -> None:
    """Worker side: answer every request line on ``sock`` with one JSON line.

    A line ``S`` asks for the :meth:`ServerStats.snapshot`; a JSON object line is a
    command for ``command`` (kick users, new users, traffic ...; see
    :meth:`SnapshotChannel.command`).
    """
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**26)
    try:
        while line := await reader.readline():
            if line.startswith(b"{"):
                try:
                    answer = command(json.loads(line)) if command is not None else None
                except Exception:  # pragma: no cover - a bug; answer so the parent goes on
                    log.exception("worker command failed")
                    answer = None
            else:
                answer = snapshot()
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class SnapshotChannel:
    """Parent side of one worker's socket pair: :meth:`request` a snapshot."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self.broken = False

    async def request(self, timeout: float = 2.0) -> Snapshot | None:  # noqa: ASYNC109
        """The worker's snapshot, or None if it does not answer in time."""
        result: Snapshot | None = await self._ask(b"S\n", timeout)
        return result

    async def command(self, message: dict[str, Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Send a command object to the worker; its answer (None if it does not answer)."""
        return await self._ask(json.dumps(message).encode() + b"\n", timeout)

    async def _ask(self, request: bytes, timeout: float) -> Any:  # noqa: ASYNC109
        if self.broken:
            return None
        async with self._lock:
            try:
                if self._streams is None:
                    self._streams = await asyncio.open_connection(sock=self.sock, limit=2**26)
                reader, writer = self._streams
                writer.write(request)
                async with asyncio.timeout(timeout):
                    await writer.drain()
                    line = await reader.readline()
                if not line:
                    raise ConnectionError("worker closed its channel")
                return json.loads(line)
            except (OSError, TimeoutError, ValueError) as exc:
                # A late answer would desynchronise the line protocol: give up on it.
                log.debug("worker statistics unavailable: %s", exc)
                self.broken = True
                if self._streams is not None:
                    self._streams[1].close()
                return None


async def gather_snapshots(
    local: Callable[[], Snapshot], channels: Iterable[SnapshotChannel]
) -> Snapshot:
    """This process's snapshot merged with every worker's."""
    answers = await asyncio.gather(*(channel.request() for channel in channels))
    return merge_snapshots([local(), *(a for a in answers if a is not None)])
