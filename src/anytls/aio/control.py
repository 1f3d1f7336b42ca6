"""One control surface over the server and its worker processes.

With ``--workers N`` every process has its own :class:`~anytls.aio.server.AnyTLSServer`;
the parent (worker 0) reaches the others over the socket pairs that already carry
statistics (:class:`~anytls.aio.stats.SnapshotChannel`). :class:`ServerGroup` sends each
operation to every process and adds up the answers, so the stats API, the panel node and
quota enforcement see one server. :func:`handle_command` is the worker side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.padding import PaddingScheme
from .limits import UserPolicy
from .server import AnyTLSServer
from .stats import SnapshotChannel

log = logging.getLogger("anytls.server")


def _policies_to_json(limits: Mapping[str, UserPolicy]) -> dict[str, list[float]]:
    return {name: [p.speed_limit, p.device_limit] for name, p in limits.items()}


def _policies_from_json(data: Mapping[str, Sequence[float]]) -> dict[str, UserPolicy]:
    return {name: UserPolicy(float(v[0]), int(v[1])) for name, v in data.items()}


def apply_users(
    server: AnyTLSServer,
    users: Mapping[str, str],
    limits: Mapping[str, UserPolicy] | None = None,
    padding: PaddingScheme | None = None,
    speed_limit: float | None = None,
    refused: Mapping[str, tuple[str, str]] | None = None,
) -> list[str]:
    """Serve ``users`` from now on; disconnect users removed or whose password changed.

    ``limits``/``padding``/``speed_limit``/``refused`` (see
    :attr:`~anytls.aio.server.ServerConfig.refused`) replace the running ones when given. New
    sessions use the new settings (a changed padding scheme is pushed to each client whose
    scheme differs, when it connects). Returns the names disconnected.
    """
    old = server.config.users
    gone = [n for n in old if n not in users or users[n] != old[n]]
    changes: dict[str, Any] = {"users": dict(users)}
    if limits is not None:
        changes["limits"] = dict(limits)
    if padding is not None:
        changes["padding"] = padding
    if speed_limit is not None:
        changes["speed_limit"] = speed_limit
    if refused is not None:
        changes["refused"] = dict(refused)
    server.update(dataclasses.replace(server.config, **changes))
    why = server.config.refused
    for name in gone:
        server.kick([name], f"refused: {why[name][1]}" if name in why else "user removed")
    return gone


#: Users refused by quota or expiry in this process (set by the parent; see
#: :class:`~anytls.aio.accounting.QuotaKeeper`), left out when the file is reloaded.
BLOCKED: set[str] = set()


def without_blocked(users: Mapping[str, str]) -> dict[str, str]:
    """``users`` without the ones refused by quota or expiry."""
    return {name: pw for name, pw in users.items() if name not in BLOCKED}


def handle_command(server: AnyTLSServer, message: dict[str, Any]) -> Any:
    """Worker side of :class:`ServerGroup`: run one command from the parent."""
    op = message.get("op")
    if op == "traffic":
        return server.stats.traffic()
    if op == "online":
        return server.stats.online()
    if op == "kick":
        return server.kick(message.get("users", []), str(message.get("reason", "kicked")))
    if op == "users":
        padding = message.get("padding")
        limits = message.get("limits")  # absent: the running limits stay
        refused = message.get("refused")
        apply_users(
            server,
            message["users"],
            _policies_from_json(limits) if limits is not None else None,
            PaddingScheme.parse(padding.encode()) if isinstance(padding, str) else None,
            message.get("speed_limit"),
            {n: (str(v[0]), str(v[1])) for n, v in refused.items()}
            if refused is not None
            else None,
        )
        return True
    if op == "blocked":
        BLOCKED.clear()
        BLOCKED.update(message.get("users", []))
        return True
    if op == "remote_ips":
        server.limiter.set_remote_ips(message.get("online", {}))
        return True
    log.warning("unknown worker command %r", op)
    return None


class ServerGroup:
    """The local server plus every worker process, addressed as one."""

    def __init__(self, server: AnyTLSServer, channels: Iterable[SnapshotChannel] = ()) -> None:
        self.server = server
        self.channels = list(channels)

    async def _broadcast(self, message: dict[str, Any]) -> list[Any]:
        local = handle_command(self.server, message)
        answers = await asyncio.gather(*(c.command(message) for c in self.channels))
        return [local, *answers]

    async def traffic(self) -> dict[str, list[int]]:
        """User → ``[up, down]`` bytes since start, summed over the processes."""
        out: dict[str, list[int]] = {}
        for answer in await self._broadcast({"op": "traffic"}):
            for name, (up, down) in (answer or {}).items():
                total = out.setdefault(name, [0, 0])
                total[0] += int(up)
                total[1] += int(down)
        return out

    async def traffic_by_process(self) -> list[dict[str, list[int]] | None]:
        """Each process's ``traffic()`` (None for a worker that did not answer)."""
        return await self._broadcast({"op": "traffic"})

    async def online(self) -> dict[str, list[str]]:
        """User → client IP addresses connected now, over the processes."""
        out: dict[str, set[str]] = {}
        for answer in await self._broadcast({"op": "online"}):
            for name, ips in (answer or {}).items():
                out.setdefault(name, set()).update(ips)
        return {name: sorted(ips) for name, ips in out.items()}

    async def kick(self, users: Sequence[str], reason: str = "kicked") -> int:
        """Close every session of ``users`` in every process; how many were closed."""
        answers = await self._broadcast({"op": "kick", "users": list(users), "reason": reason})
        return sum(int(a or 0) for a in answers)

    async def set_users(
        self,
        users: Mapping[str, str],
        limits: Mapping[str, UserPolicy] | None = None,
        padding: PaddingScheme | None = None,
        speed_limit: float | None = None,
        refused: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """:func:`apply_users` in every process."""
        message: dict[str, Any] = {"op": "users", "users": dict(users)}
        if refused is not None:
            message["refused"] = {n: list(v) for n, v in refused.items()}
        if limits is not None:
            message["limits"] = _policies_to_json(limits)
        if padding is not None:
            message["padding"] = padding.raw.decode()
        if speed_limit is not None:
            message["speed_limit"] = speed_limit
        await self._broadcast(message)

    async def block(self, users: Sequence[str]) -> None:
        """Tell every process which users quotas or expiry refuse (for reloads)."""
        await self._broadcast({"op": "blocked", "users": list(users)})

    async def share_devices(self) -> None:
        """Tell every process which client IPs the others have (for device limits)."""
        if not self.channels or not self.server.limiter.active:
            return
        online = await self.online()
        await self._broadcast({"op": "remote_ips", "online": online})
