"""``anytls-server`` as a managed node: stats API, quotas, Xboard panel.

Kept apart from :mod:`anytls.cli.server` so that the server's own start-up stays readable:
:func:`prepare` runs before the worker processes fork (it may ask the panel for the port
and the users), :class:`NodeRuntime` runs in the parent process once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from typing import Any

from ..aio.server import ServerConfig
from ..core.address import Address
from ..errors import ConfigError
from ..store import Store
from ..users import UserEntry
from ._common import parse_listen, state_dir

log = logging.getLogger("anytls.server")


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_api(value: str) -> Address:
    """``--api``: ``HOST:PORT``, or ``PORT``/``:PORT`` for localhost."""
    text = value.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    elif text.startswith(":"):
        text = f"127.0.0.1{text}"
    return parse_listen(text)


def check_args(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work (ConfigError)."""
    if args.api:
        host = parse_api(args.api).host
        if not args.api_secret and not _loopback(host):
            raise ConfigError(
                f"--api {args.api}: a stats API on a non-loopback address needs "
                "--api-secret (anyone who reaches it could read traffic and kick users)"
            )
    if args.panel and (args.p or args.user):
        raise ConfigError("--panel: the users come from the panel; drop -p and --user")
    panel_keys = (args.panel, args.panel_token, args.node_id)
    if any(v is not None for v in panel_keys) and not all(v is not None for v in panel_keys):
        raise ConfigError("--panel needs --panel-token and --node-id (all three, or none)")


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` worked out."""

    listen: Address
    config: ServerConfig
    entries: dict[str, UserEntry]
    node: Any = None
    #: The file's users before quotas and expiry left some out.
    file_users: dict[str, str] = dataclasses.field(default_factory=dict)


def prepare(
    args: argparse.Namespace,
    listen: Address,
    config: ServerConfig,
    entries: dict[str, UserEntry],
) -> Prepared:
    """Before forking: the panel's port and users, and file users over quota left out."""
    prepared = Prepared(listen, config, entries, file_users=dict(config.users))
    if args.panel:
        from ..panel.xboard import PanelError, XboardClient, XboardNode

        store = Store.in_dir(state_dir(args))
        node = XboardNode(XboardClient(args.panel, args.panel_token, args.node_id), store)
        try:
            settings = asyncio.run(node.bootstrap())
        except PanelError as exc:
            raise ConfigError(f"--panel: {exc}") from exc
        finally:
            store.close()
        # -l given with another port than the default wins over the panel's port.
        port = listen.port if args.l != "0.0.0.0:8443" else settings.port
        prepared.listen = Address(listen.host, port)
        prepared.config = dataclasses.replace(
            config,
            users=settings.users,
            limits=settings.limits,
            padding=settings.padding or config.padding,
        )
        prepared.node = node
        # Thousands of users: no share link per user in the log. The panel's server_name
        # goes into a self-signed certificate.
        args.share_links = args.qr = False
        if not args.public_host and settings.server_name:
            args.public_host = settings.server_name
        log.info(
            "Xboard node %d of %s: port %d, %d users, pull every %g s, push every %g s",
            args.node_id,
            args.panel,
            port,
            len(settings.users),
            settings.pull_interval,
            settings.push_interval,
        )
    elif any(e.quota or e.expires for e in entries.values()):
        from ..aio.accounting import QuotaKeeper
        from ..aio.control import BLOCKED

        store = Store.in_dir(state_dir(args))
        try:
            keeper = QuotaKeeper(None, store, entries)
            reasons = keeper.reasons()
            for name, reason in reasons.items():
                log.warning("user %s %s: refused", name, reason)
            allowed = keeper.allowed(config.users)  # (remembers the configured users)
            prepared.config = dataclasses.replace(
                config, users=allowed, refused=keeper.refused(reasons)
            )
            # Worker processes (forked after this) leave them out when they reload.
            BLOCKED.update(reasons)
        finally:
            store.close()
    return prepared


class NodeRuntime:
    """Parent process: stats API, accounting, quotas and the panel, around one server."""

    def __init__(self, args: argparse.Namespace, prepared: Prepared) -> None:
        self.args = args
        self.prepared = prepared
        self.tasks: list[asyncio.Task[None]] = []
        self.api: Any = None
        self.store: Store | None = None
        self.keeper: Any = None

    async def start(self, server: Any, channels: list[Any]) -> None:
        """Start what the flags ask for (raises SystemExit if the API cannot listen)."""
        from ..aio.accounting import Accountant, QuotaKeeper
        from ..aio.control import ServerGroup

        args = self.args
        loop = asyncio.get_running_loop()
        group = ServerGroup(server, channels)
        entries = self.prepared.entries
        quotas = any(e.quota or e.expires for e in entries.values())
        node = self.prepared.node
        if node is not None or quotas:
            self.store = Store.in_dir(state_dir(args))
            accountant = Accountant(group, self.store)
            if node is not None:
                node.store = self.store
                node.group = group
                accountant.pending = str.isdigit
                self.tasks.append(loop.create_task(accountant.run()))
                self.tasks.append(loop.create_task(node.run()))
            else:
                self.keeper = keeper = QuotaKeeper(
                    group, self.store, entries, self.prepared.file_users
                )
                accountant.usage = keeper.counts
                accountant.listeners.append(keeper.add)
                self.tasks.append(loop.create_task(self._quota_loop(accountant, keeper)))
        if channels:  # (does nothing while no user has limits)
            self.tasks.append(loop.create_task(self._share_devices(group)))
        if args.api:
            from ..aio.api import StatsApi

            where = parse_api(args.api)
            self.api = StatsApi(group, args.api_secret)
            try:
                await self.api.start(where.host, where.port)
            except OSError as exc:
                log.error("--api: cannot listen on %s: %s", where, exc.strerror or exc)
                raise SystemExit(1) from exc
            log.info("traffic stats API at http://%s/ (traffic, online, kick)", where)

    @property
    def quotas(self) -> bool:
        """True when file users have a quota or an expiry date."""
        return any(e.quota or e.expires for e in self.prepared.entries.values())

    def reloaded(self, entries: dict[str, UserEntry]) -> None:
        """SIGHUP: the file's new per-user settings (before its users are filtered)."""
        self.prepared.entries = entries
        if self.keeper is not None:
            self.keeper.entries = dict(entries)

    async def _quota_loop(self, accountant: Any, keeper: Any) -> None:
        try:
            while True:
                await asyncio.sleep(1.0)
                await accountant.tick()
                await keeper.enforce()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(accountant.tick())

    async def _share_devices(self, group: Any) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await group.share_devices()

    async def stop(self) -> None:
        """Last accounting tick and push, then stop."""
        for task in self.tasks:  # the accountant first: its last tick precedes the push
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.api is not None:
            await self.api.close()
        if self.store is not None:
            self.store.close()
