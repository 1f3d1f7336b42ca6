"""Once a second: per-user traffic into the SQLite store, and quotas/expiry enforced.

:class:`Accountant` asks every process for its per-user byte totals (a cheap pass over
live sessions), turns them into deltas since the last tick and hands them to the store:
to ``pending`` for a panel node (pushed later), to ``usage`` for users with a quota. A
crash therefore loses at most one second of counted bytes.

:class:`QuotaKeeper` keeps file-configured users with a ``quota`` or an ``expires`` date
out: a user over quota or past its date is removed from the served users (its sessions
are closed) and stays out across restarts, because its usage is in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Mapping

from ..store import Store
from ..users import UserEntry
from .control import ServerGroup

log = logging.getLogger("anytls.server")

Deltas = dict[str, tuple[int, int]]


class Accountant:
    """Turns every process's traffic totals into per-second deltas."""

    def __init__(
        self,
        group: ServerGroup,
        store: Store,
        *,
        pending: Callable[[str], bool] | None = None,
        usage: Callable[[str], bool] | None = None,
    ) -> None:
        self.group = group
        self.store = store
        #: Which users' traffic goes to ``pending`` (for a panel) and to ``usage`` (quotas).
        self.pending = pending
        self.usage = usage
        self._last: list[dict[str, list[int]]] = []
        #: Called after each tick with that tick's deltas.
        self.listeners: list[Callable[[Deltas], None]] = []

    async def tick(self) -> Deltas:
        """Collect, store and return the bytes moved since the last tick."""
        answers = await self.group.traffic_by_process()
        while len(self._last) < len(answers):
            self._last.append({})
        deltas: dict[str, list[int]] = {}
        for index, answer in enumerate(answers):
            if answer is None:
                continue
            last = self._last[index]
            for name, (up, down) in answer.items():
                before = last.get(name, (0, 0))
                du, dd = up - before[0], down - before[1]
                if du < 0 or dd < 0:  # counters restarted
                    du, dd = up, down
                if du or dd:
                    total = deltas.setdefault(name, [0, 0])
                    total[0] += du
                    total[1] += dd
            self._last[index] = answer
        out: Deltas = {name: (v[0], v[1]) for name, v in deltas.items()}
        if out and self.pending is not None:
            self.store.add_pending({n: v for n, v in out.items() if self.pending(n)})
        if out and self.usage is not None:
            self.store.add_usage({n: v for n, v in out.items() if self.usage(n)})
        for listener in self.listeners:
            listener(out)
        return out

    async def run(self, interval: float = 1.0) -> None:
        """Tick every ``interval`` seconds until cancelled (a last tick on the way out)."""
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.tick()
                except Exception:  # pragma: no cover - a bug; keep counting
                    log.exception("traffic accounting failed")
        finally:
            with contextlib.suppress(Exception):  # shutting down anyway
                await asyncio.shield(self.tick())


class QuotaKeeper:
    """Keeps users over their ``quota`` or past ``expires`` out of the served users.

    ``configured`` are the users the config file lists (name → password); the served ones
    are those minus the refused. Raising a quota or an expiry date in the file and
    reloading (SIGHUP) lets a refused user in again.
    """

    def __init__(
        self,
        group: ServerGroup | None,
        store: Store,
        entries: Mapping[str, UserEntry],
        configured: Mapping[str, str] | None = None,
    ) -> None:
        self.group = group
        self.store = store
        self.entries = dict(entries)
        self.configured = dict(configured or {})
        self.used: dict[str, int] = {n: up + down for n, (up, down) in store.usage().items()}
        #: Users refused now, with the reason (those refused at start were logged then).
        self.blocked: dict[str, str] = self.reasons()
        self._told = False

    def counts(self, name: str) -> bool:
        """True for users whose bytes count towards a quota."""
        entry = self.entries.get(name)
        return entry is not None and entry.quota > 0

    def add(self, deltas: Deltas) -> None:
        """Listener for :class:`Accountant`: add this second's bytes."""
        for name, (up, down) in deltas.items():
            if self.counts(name):
                self.used[name] = self.used.get(name, 0) + up + down

    def reasons(self, today: datetime.date | None = None) -> dict[str, str]:
        """User → why it is refused now."""
        out: dict[str, str] = {}
        for name, entry in self.entries.items():
            if entry.quota and self.used.get(name, 0) >= entry.quota:
                out[name] = f"used {self.used.get(name, 0)} of its quota of {entry.quota} bytes"
            elif entry.expired(today):
                out[name] = f"expired on {entry.expires}"
        return out

    def refused(self, reasons: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
        """The refused configured users: name → (password, reason), for
        :attr:`~anytls.aio.server.ServerConfig.refused`."""
        reasons = self.reasons() if reasons is None else reasons
        return {n: (self.configured[n], why) for n, why in reasons.items() if n in self.configured}

    def allowed(self, users: Mapping[str, str]) -> dict[str, str]:
        """The file's ``users`` (remembered as the configured ones) without the refused."""
        self.configured = dict(users)
        blocked = self.reasons()
        return {n: pw for n, pw in users.items() if n not in blocked}

    async def enforce(self) -> None:
        """Serve the configured users minus the refused ones, in every process."""
        assert self.group is not None
        reasons = self.reasons()
        previous = self.blocked
        changed = not self._told or set(reasons) != set(previous)
        if changed:
            # Workers reloading on SIGHUP leave these out by themselves (without_blocked).
            await self.group.block(sorted(reasons))
            self._told = True
        self.blocked = reasons
        target = {n: pw for n, pw in self.configured.items() if n not in reasons}
        if changed or target != dict(self.group.server.config.users):
            # every process, whatever it reloaded; limits and the rest stay as they are
            await self.group.set_users(target, refused=self.refused(reasons))
        for name in sorted(set(reasons) - set(previous)):
            log.warning(
                "user %s %s: refused from now on",
                name,
                reasons[name],
                extra={"event": "quota", "user": name},
            )
        for name in sorted(set(previous) - set(reasons)):
            log.info("user %s is allowed again", name, extra={"event": "quota", "user": name})
