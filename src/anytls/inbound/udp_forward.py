"""Local UDP port forwarding through the tunnel (``anytls-client --udp-forward LOCAL=TARGET``).

A :class:`UdpForwarder` binds a UDP socket on LOCAL. The first datagram from a new local
source address (ip, port) opens a connect-mode :class:`~anytls.aio.udp.UdpAssociation`
(one UoT v2 stream) to TARGET for that source; its later datagrams go into the same
association and every reply is sent back to that source from LOCAL. An association with no
datagram either way for ``idle_timeout`` seconds is closed (so is one the server ended); the
source's next datagram opens a new one. Typical use: ``127.0.0.1:5353=8.8.8.8:53`` makes a
local DNS resolver address that answers through the server.

Datagrams that arrive while a source's stream is being opened are queued (up to
:data:`PENDING_LIMIT`) and sent right after the request, which is written without waiting
for the server's SYNACK.
"""

from __future__ import annotations

import asyncio
import logging

from ..aio.client import Client
from ..aio.udp import UdpAssociation, open_udp
from ..aio.uot_server import UDP_IDLE_TIMEOUT
from ..core.address import Address
from ..errors import AnyTLSError, ConfigError, SessionClosedError

log = logging.getLogger("anytls.inbound")

#: Seconds without a datagram either way before a source's association is closed.
DEFAULT_IDLE_TIMEOUT = UDP_IDLE_TIMEOUT
#: Local sources served at once; datagrams from further sources are dropped.
MAX_ASSOCIATIONS = 1024
#: Datagrams queued per source while its association is being opened.
PENDING_LIMIT = 64


def parse_forward(text: str) -> tuple[Address, Address]:
    """Parse ``LOCAL=TARGET`` (each ``host:port`` or ``[v6]:port``) into two addresses."""
    local_text, sep, target_text = text.partition("=")
    if not sep:
        raise ConfigError(
            f"--udp-forward {text!r}: expected LOCAL=TARGET, e.g. 127.0.0.1:5353=8.8.8.8:53"
        )
    try:
        local = Address.parse(local_text.strip())
        target = Address.parse(target_text.strip())
    except ConfigError as exc:
        raise ConfigError(f"--udp-forward {text!r}: {exc}") from exc
    if not local.is_ip:
        raise ConfigError(f"--udp-forward {text!r}: the local address must be an IP literal")
    if target.port == 0:
        raise ConfigError(f"--udp-forward {text!r}: the target port must not be 0")
    return local, target


class _Peer:
    """One local source address and its association."""

    __slots__ = ("addr", "assoc", "last", "pending", "task")

    def __init__(self, addr: tuple[str | int, ...], now: float) -> None:
        self.addr = addr
        self.assoc: UdpAssociation | None = None
        self.pending: list[bytes] = []
        self.last = now
        self.task: asyncio.Task[None] | None = None


class _LocalSocket(asyncio.DatagramProtocol):
    def __init__(self, forwarder: UdpForwarder) -> None:
        self.forwarder = forwarder
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.forwarder._from_local(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp forward %s: socket error: %s", self.forwarder.local, exc)


class UdpForwarder:
    """Forward datagrams arriving on ``local`` to ``target`` through ``client``."""

    def __init__(
        self,
        client: Client,
        local: Address,
        target: Address,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_associations: int = MAX_ASSOCIATIONS,
    ) -> None:
        self.client = client
        self.local = local
        self.target = target
        self.idle_timeout = idle_timeout
        self.max_associations = max_associations
        self.peers: dict[tuple[str, int], _Peer] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._protocol: _LocalSocket | None = None
        self.associations_opened = 0
        self.datagrams_out = 0
        self.datagrams_in = 0
        self.dropped = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self, *, reuse_port: bool = False) -> None:
        """Bind the local socket (raises :class:`OSError` when it cannot).

        ``reuse_port``: share the port with other processes; the kernel keeps each local
        sender on one of them.
        """
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _LocalSocket(self),
            local_addr=(self.local.host, self.local.port),
            reuse_port=reuse_port or None,
        )
        self.transport = transport
        self._protocol = protocol
        self.loop = loop
        log.info("UDP forward %s → %s (via the server)", self.address_text, self.target)

    @property
    def port(self) -> int:
        """The bound local port."""
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    @property
    def address_text(self) -> str:
        """The bound local address as ``host:port``."""
        return str(Address(self.local.host, self.port))

    # ---------------------------------------------------------------- local → tunnel
    def _from_local(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._closed:
            return
        key = (str(addr[0]), int(addr[1]))
        loop = self.loop
        assert loop is not None  # started
        peer = self.peers.get(key)
        if peer is None:
            if len(self.peers) >= self.max_associations:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "udp forward %s: %d sources already, dropping datagrams from "
                        "new ones (%d dropped)",
                        self.address_text,
                        len(self.peers),
                        self.dropped,
                    )
                return
            peer = self.peers[key] = _Peer(addr, loop.time())
            peer.task = loop.create_task(self._run(key, peer))
            self._arm_sweeper()
        peer.last = loop.time()
        if peer.assoc is None:
            if len(peer.pending) < PENDING_LIMIT:
                peer.pending.append(data)
            else:
                self.dropped += 1
            return
        self._send(peer, data)

    def _send(self, peer: _Peer, data: bytes) -> None:
        assert peer.assoc is not None
        try:
            peer.assoc.send(data)
        except AnyTLSError as exc:
            self.dropped += 1
            log.debug(
                "udp forward %s: association of %s ended: %s",
                self.address_text,
                _text(peer.addr),
                exc,
            )
            peer.assoc.close()
            return
        self.datagrams_out += 1

    # ---------------------------------------------------------------- tunnel → local
    async def _run(self, key: tuple[str, int], peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                assoc = await open_udp(self.client, connect=self.target)
            except AnyTLSError as exc:
                if isinstance(exc, SessionClosedError):
                    what = f"udp forward {self.address_text} for {_text(peer.addr)}"
                    self.client.failures.report(what, exc)
                else:
                    log.info(
                        "udp forward %s: cannot open a UoT stream for %s: %s",
                        self.address_text,
                        _text(peer.addr),
                        exc,
                    )
                return
            peer.assoc = assoc
            self.associations_opened += 1
            log.debug(
                "udp forward %s: association for %s → %s opened",
                self.address_text,
                _text(peer.addr),
                self.target,
            )
            pending, peer.pending = peer.pending, []
            for data in pending:
                self._send(peer, data)

            def to_local(payload: bytes, _source: Address) -> None:
                peer.last = loop.time()
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.sendto(payload, peer.addr)
                    self.datagrams_in += 1

            # Replies go out from the stream's callback; this task only waits for the end.
            assoc.set_datagram_handler(to_local)
            try:
                await assoc.recvfrom()
            except AnyTLSError as exc:
                if assoc.error is not None:
                    log.info(
                        "udp forward %s: association for %s ended: %s",
                        self.address_text,
                        _text(peer.addr),
                        exc.__cause__ or exc,
                    )
        finally:
            if peer.assoc is not None:
                peer.assoc.close()
            if self.peers.get(key) is peer:
                del self.peers[key]

    # ---------------------------------------------------------------- idle associations
    def _arm_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            interval = max(0.05, min(self.idle_timeout / 4, 5.0))
            self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key, peer in list(self.peers.items()):
            if now - peer.last >= self.idle_timeout:
                log.debug(
                    "udp forward %s: association for %s idle for %g s, closing",
                    self.address_text,
                    _text(peer.addr),
                    self.idle_timeout,
                )
                self._drop(key, peer)
        if self.peers:
            self._arm_sweeper()

    def _drop(self, key: tuple[str, int], peer: _Peer) -> None:
        if self.peers.get(key) is peer:
            del self.peers[key]
        if peer.assoc is not None:
            peer.assoc.close()
        if peer.task is not None and not peer.task.done():
            peer.task.cancel()

    async def close(self) -> None:
        """Close the local socket (its port is free when this returns) and every
        association."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks = [p.task for p in self.peers.values() if p.task is not None]
        for key, peer in list(self.peers.items()):
            self._drop(key, peer)
        if self.transport is not None:
            self.transport.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._protocol is not None:
            await self._protocol.closed


def _text(addr: tuple[str | int, ...]) -> str:
    return str(Address(str(addr[0]), int(addr[1])))


async def start_forwarders(
    client: Client,
    forwards: list[tuple[Address, Address]],
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    *,
    reuse_port: bool = False,
) -> list[UdpForwarder]:
    """Start one :class:`UdpForwarder` per ``(local, target)``; on a bind error close the
    ones already started and re-raise the :class:`OSError`."""
    started: list[UdpForwarder] = []
    try:
        for local, target in forwards:
            forwarder = UdpForwarder(client, local, target, idle_timeout)
            await forwarder.start(reuse_port=reuse_port)
            started.append(forwarder)
    except BaseException:
        for forwarder in started:
            await forwarder.close()
        raise
    return started


__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_ASSOCIATIONS",
    "PENDING_LIMIT",
    "UdpForwarder",
    "parse_forward",
    "start_forwarders",
]
