"""One ``anytls-client`` process, from listening to stopped.

:func:`anytls.cli.client.main` works out the settings, binds the local port and forks the
workers (a :class:`ClientStartup`); then every process runs a :class:`ClientProcess` through
its four steps: :meth:`~ClientProcess.start` (the SOCKS5/HTTP port and the UDP forwarders),
:meth:`~ClientProcess.announce` (the "proxy on" line), :meth:`~ClientProcess.wait` (a new
:class:`~anytls.aio.client.Client` on SIGHUP until SIGTERM/SIGINT) and
:meth:`~ClientProcess.drain` (close everything).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable, Sequence

from .. import __version__
from ..aio.client import Client, ClientConfig
from ..core.address import Address
from ..errors import ConfigError
from ..inbound.mixed import MixedInbound
from ..inbound.socks5_udp import udp_handler
from ..inbound.udp_forward import UdpForwarder, start_forwarders
from . import _run

log = logging.getLogger("anytls.client")

#: ``--auth USER:PASS`` as a pair (None: local clients need none).
Auth = tuple[str, str] | None
#: Reads the flags and the config file again: settings, client config, ``--auth``.
Reread = Callable[[], tuple[argparse.Namespace, ClientConfig, Auth]]


@dataclasses.dataclass
class ClientStartup:
    """What ``main`` worked out before the worker processes fork."""

    args: argparse.Namespace
    #: Reads the flags and the config file again (SIGHUP; raises ConfigError).
    reread: Reread
    config: ClientConfig
    listen: Address
    auth: Auth
    #: ``--udp-forward``: (local, target) pairs.
    forwards: list[tuple[Address, Address]]
    sockets: list[socket.socket]
    workers: int


# ---------------------------------------------------------------------- reload

#: Settings a reload cannot change (they need new sockets or processes).
RESTART = {"l": "listen", "udp_forward": "udp_forward", "workers": "workers"}


def reload_client(
    reread: Reread,
    args: argparse.Namespace,
    inbound: MixedInbound,
    forwarders: Sequence[UdpForwarder],
    level: int = logging.INFO,
) -> tuple[argparse.Namespace, Client] | None:
    """SIGHUP: re-read flags and config file; new connections use a new :class:`Client`.

    Returns the new settings and the old client (to retire once its streams end), or None
    when the file has an error (logged; the running settings stay) or nothing changed.
    """
    try:
        new, config, auth = reread()
    except ConfigError as exc:
        log.log(
            logging.ERROR if level >= logging.INFO else logging.DEBUG,
            "reload failed, keeping the running settings: %s",
            exc,
        )
        return None
    for dest, key in RESTART.items():
        if getattr(new, dest) != getattr(args, dest):
            log.log(
                logging.WARNING if level >= logging.INFO else logging.DEBUG,
                "reload: %s changed; restart the client to apply it",
                key,
            )
            setattr(new, dest, getattr(args, dest))  # still running: the next reload says so too
    old = inbound.client
    if config == old.config and auth == inbound.auth:
        log.log(level, "reloaded: no change")
        return None
    client = Client(config)
    inbound.client, inbound.auth, inbound.udp_handler = client, auth, udp_handler(client)
    for forwarder in forwarders:
        forwarder.client = client
    log.log(
        level,
        "reloaded: server %s:%d%s; open connections finish on the old sessions",
        config.server_host,
        config.server_port,
        " (certificate not verified)" if config.insecure else "",
    )
    return new, old


async def retire(client: Client, longest: float = 3600.0) -> None:
    """Close ``client`` once none of its sessions carries a stream (or after ``longest``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + longest
    while loop.time() < deadline and any(c.streams for c in client.sessions.values()):  # noqa: ASYNC110 - no event for "last stream ended"
        await asyncio.sleep(1.0)
    await client.close()


# ---------------------------------------------------------------------- process


class ClientProcess:
    """The client in one process (``worker`` 0 is the first), run by :meth:`run`."""

    def __init__(self, startup: ClientStartup, worker: int) -> None:
        self.startup = startup
        #: Worker processes other than the first say the same things at DEBUG.
        self.level = logging.INFO if worker == 0 else logging.DEBUG
        self.client = Client(startup.config)
        #: Every client made, by a reload too: all are closed at the end.
        self.clients = [self.client]
        self.inbound = MixedInbound(
            self.client, auth=startup.auth, udp_handler=udp_handler(self.client)
        )
        self.forwarders: list[UdpForwarder] = []
        #: Clients replaced by a reload, closing once their streams end.
        self.retiring: set[asyncio.Task[None]] = set()
        #: The settings in force (a reload replaces them).
        self.args = startup.args

    async def run(self, stop: asyncio.Event) -> None:
        """Start, announce, serve until ``stop`` is set, then drain."""
        await self.start()
        self.announce()
        await self.wait(stop)
        await self.drain()

    async def start(self) -> None:
        """The local proxy port, then the UDP forwarders (SystemExit when one cannot bind)."""
        listen = self.startup.listen
        await self.inbound.start(listen.host, listen.port, sockets=self.startup.sockets)
        try:
            self.forwarders = await start_forwarders(
                self.client, self.startup.forwards, reuse_port=_run.forked()
            )
        except OSError as exc:
            log.error("--udp-forward: cannot bind: %s", exc.strerror or exc)
            raise SystemExit(1) from exc

    def announce(self) -> None:
        """One line: where the proxy listens and which server it uses, how verified."""
        config, workers = self.startup.config, self.startup.workers
        log.log(
            self.level,
            "anytls-client %s: SOCKS5/HTTP proxy on %s, server %s:%d (%s ClientHello)%s%s",
            __version__,
            _run.describe_listen(self.startup.sockets),
            config.server_host,
            config.server_port,
            self.client.fingerprint or "openssl",
            " (certificate pinned)"
            if config.pin_sha256
            else " (certificate NOT verified)"
            if config.insecure
            else "",
            f", {workers} workers" if workers > 1 else "",
        )

    async def wait(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reloading on SIGHUP (passed on to the workers)."""
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        await stop.wait()

    def reload(self) -> None:
        """SIGHUP: tell the workers, then switch new connections to a new client."""
        _run.signal_workers(signal.SIGHUP)
        new = reload_client(
            self.startup.reread, self.args, self.inbound, self.forwarders, self.level
        )
        if new is None:
            return
        self.args, old = new
        self.clients.append(self.inbound.client)
        task = asyncio.get_running_loop().create_task(retire(old))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def drain(self) -> None:
        """Stop the workers, then close the forwarders, the port and every client."""
        _run.signal_workers(signal.SIGTERM)
        log.log(self.level, "shutting down")
        for task in list(self.retiring):
            task.cancel()
        for forwarder in self.forwarders:
            await forwarder.close()
        await self.inbound.close()
        for each in self.clients:
            await each.close()
        await _run.wait_for_workers(10)
