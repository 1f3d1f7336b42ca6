"""One ``anytls-server`` process, from listening to stopped.

:func:`anytls.cli.server.main` works out the settings, binds the port and forks the workers
(a :class:`Startup`); then every process runs a :class:`ServerProcess` through its four
steps: :meth:`~ServerProcess.start` (serve on the shared sockets, ACME, metrics, the node's
API and panel), :meth:`~ServerProcess.announce` (share links and the "listening" line),
:meth:`~ServerProcess.wait` (reload on SIGHUP until SIGTERM/SIGINT) and
:meth:`~ServerProcess.drain` (no new connections; open streams get ``--shutdown-grace``).
The first process (worker 0) does what must happen once; the others log at DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from .. import __version__
from ..aio.acme import AcmeManager
from ..aio.control import handle_command, without_blocked
from ..aio.server import AnyTLSServer, ServerConfig
from ..aio.stats import (
    MetricsServer,
    SnapshotChannel,
    gather_snapshots,
    log_summaries,
    serve_snapshot_requests,
)
from ..core.address import Address
from . import _node, _run
from ._announce import announce_links, warn_weak_passwords
from ._common import parse_listen
from ._reload import Reloader
from ._server_config import user_entries

log = logging.getLogger("anytls.server")


@dataclasses.dataclass
class Startup:
    """What ``main`` worked out before the worker processes fork."""

    args: argparse.Namespace
    #: Reads the flags and the config file again (SIGHUP).
    reread: Callable[[], argparse.Namespace]
    listen: Address
    config: ServerConfig
    prepared: _node.Prepared
    ssl_context: ssl.SSLContext
    #: The ``(cert, key)`` files served (None: the certificate comes from ACME).
    cert: tuple[str, str | None] | None
    #: Gets and renews the certificate (None without ``--acme``).
    acme: AcmeManager | None
    sockets: list[socket.socket]
    workers: int
    #: Where the generated password of user 'default' is kept (None: a password was given).
    generated: str | None
    #: True when that password was made at an earlier start (said at INFO, not WARNING).
    generated_before: bool = False


def listen_error(listen: Address, exc: OSError) -> str:
    """One line on why ``listen`` cannot be bound, with what to do about it."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        hint = (
            "another program (or another anytls-server) already listens there; stop it "
            "or choose another port with -l"
        )
    elif exc.errno == errno.EACCES:
        hint = (
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (see "
            "examples/anytls-server.service), or choose a port above 1024 with -l"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = "this machine has no such address; listen on 0.0.0.0 or one of its own addresses"
    else:
        hint = "check the -l address"
    return f"cannot listen on {listen}: {text}; {hint}"


class ServerProcess:
    """The server in one process (``worker`` 0 is the first), run by :meth:`run`."""

    def __init__(self, startup: Startup, worker: int) -> None:
        self.startup = startup
        self.worker = worker
        #: Worker processes other than the first say the same things at DEBUG.
        self.level = logging.INFO if worker == 0 else logging.DEBUG
        self.server = AnyTLSServer(startup.config, startup.ssl_context)
        self.runtime = _node.NodeRuntime(startup.args, startup.prepared)
        #: The other workers' stats (the first process only).
        self.channels = [SnapshotChannel(sock) for sock in _run.WORKER_CHANNELS]
        self.metrics: MetricsServer | None = None
        self.reloader: Reloader | None = None
        self.background: list[asyncio.Task[None]] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Start, announce, serve until ``stop`` is set, then drain."""
        await self.start()
        self.announce()
        await self.wait(stop)
        await self.drain()

    async def snapshot(self) -> dict[str, Any]:
        """The traffic stats of every worker."""
        return await gather_snapshots(self.server.stats.snapshot, self.channels)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Serve on the shared sockets, then what runs beside the server (raises
        SystemExit when a port for ACME, metrics or the API cannot be bound)."""
        startup, server = self.startup, self.server
        loop = asyncio.get_running_loop()
        await server.start(None, startup.listen.port, sockets=startup.sockets)
        if startup.acme is not None:
            startup.acme.attach(server)
        if _run.PARENT_CHANNEL is not None:
            self._spawn(
                serve_snapshot_requests(
                    _run.PARENT_CHANNEL,
                    server.stats.snapshot,
                    functools.partial(handle_command, server),
                )
            )
        if startup.acme is not None and self.worker == 0:
            await self._start_acme(startup.acme)
        elif startup.acme is not None:
            self._follow_acme(startup.acme, loop)
        if self.worker == 0:
            await self.runtime.start(server, self.channels)
            await self._start_metrics()
            if startup.args.stats_interval > 0:
                self._spawn(log_summaries(self.snapshot, startup.args.stats_interval))

    async def _start_acme(self, manager: AcmeManager) -> None:
        """The first process gets and renews the certificate and tells the workers."""

        def install(new_ctx: ssl.SSLContext) -> None:
            self.server.update(ssl_context=new_ctx)
            _run.signal_workers(signal.SIGUSR1)  # they load it from the state directory

        try:
            manager.port_hint(self.startup.listen.port)
            await manager.start_http()
        except OSError as exc:
            where = manager.settings.http
            log.error("--acme-http: %s", listen_error(where, exc) if where else exc)
            raise SystemExit(1) from exc
        self._spawn(manager.run(install))

    def _follow_acme(self, manager: AcmeManager, loop: asyncio.AbstractEventLoop) -> None:
        """A worker loads the certificate the first process stored, on SIGUSR1."""

        def on_usr1() -> None:
            new_ctx = manager.reload()
            if new_ctx is not None:
                self.server.update(ssl_context=new_ctx)
                log.debug("ACME: loaded the new certificate from the state directory")

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        on_usr1()  # one issued before this handler existed

    async def _start_metrics(self) -> None:
        if not self.startup.args.metrics:
            return
        where = parse_listen(self.startup.args.metrics)
        self.metrics = MetricsServer(self.snapshot)
        try:
            await self.metrics.start(where.host, where.port)
        except OSError as exc:
            log.error("--metrics: %s", listen_error(where, exc))
            raise SystemExit(1) from exc
        log.info("Prometheus metrics at http://%s/metrics", where)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.background.append(asyncio.get_running_loop().create_task(coro))

    # ------------------------------------------------------------------ announce

    def announce(self) -> None:
        """The first process: password warnings, share links, the "listening" line."""
        if self.worker:
            log.debug("worker %d accepting connections", self.worker)
            return
        startup = self.startup
        args, config, workers = startup.args, startup.config, startup.workers
        if startup.generated is not None:
            # A WARNING when it is made; at later starts it is the same password, said once.
            log.log(
                logging.INFO if startup.generated_before else logging.WARNING,
                "no password given: user 'default' has a generated one%s, kept in %s; "
                "set -p or users in the config file to choose your own",
                " (in the share link below)" if args.share_links else f" ({args.p})",
                startup.generated,
            )
        warn_weak_passwords(dict(config.users))
        announce_links(args, startup.listen, dict(config.users), startup.cert)
        log.info(
            "anytls-server %s listening on %s (%d user%s, %d worker%s, padding md5 %s)",
            __version__,
            _run.describe_listen(startup.sockets),
            len(config.users),
            "" if len(config.users) == 1 else "s",
            workers,
            "" if workers == 1 else "s",
            config.padding.md5,
        )

    # ------------------------------------------------------------------ wait

    async def wait(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reloading on SIGHUP (passed on to the workers)."""
        startup, runtime = self.startup, self.runtime
        reloader = Reloader(startup.reread, startup.args, self.server, startup.listen, self.level)
        reloader.generated = startup.args.p if startup.generated is not None else None
        if runtime.keeper is not None:  # the parent decides who is over quota
            reloader.keep_users = runtime.keeper.allowed
            reloader.on_reload = lambda new: runtime.reloaded(user_entries(new))
        elif runtime.quotas:  # a worker leaves out whom the parent said
            reloader.keep_users = without_blocked
        self.reloader = reloader

        def on_hup() -> None:
            _run.signal_workers(signal.SIGHUP)
            reloader.reload()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()

    # ------------------------------------------------------------------ drain

    async def drain(self) -> None:
        """Graceful stop: no new connections; open streams get the grace period (a second
        Ctrl-C cuts them at once); then everything beside the server and the workers."""
        server = self.server
        loop = asyncio.get_running_loop()
        _run.signal_workers(signal.SIGTERM)
        args = self.reloader.args if self.reloader is not None else self.startup.args
        grace = args.shutdown_grace
        streams = server.open_streams
        log.log(
            logging.INFO if streams else self.level,
            "shutting down: no new connections; %s",
            f"waiting up to {grace:g} s for {streams} open stream{'s' * (streams != 1)}"
            if streams
            else "no open streams",
        )
        force = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, force.set)  # a second Ctrl-C: now
        drain = loop.create_task(server.shutdown(grace))
        forced = loop.create_task(force.wait())
        await asyncio.wait([drain, forced], return_when=asyncio.FIRST_COMPLETED)
        forced_now = not drain.done()  # a second Ctrl-C came first
        if not forced_now:
            cut = drain.result()
        else:
            cut = server.open_streams
            drain.cancel()
            await server.close()
        forced.cancel()
        for task in self.background:
            task.cancel()
        await self.runtime.stop()
        if self.metrics is not None:
            await self.metrics.close()
        if self.startup.acme is not None:
            await self.startup.acme.close()
        await _run.wait_for_workers(grace + 5)
        plural = "s" * (cut != 1)
        when = "by a second Ctrl-C" if forced_now else "after the grace period"
        note = f" ({cut} stream{plural} cut off {when})" if cut else ""
        log.log(logging.INFO if cut else self.level, "stopped%s", note)
