"""A TCP relay that records the TLS record layer (type, length) in both directions.

Put it between an AnyTLS client and server to check padding on the wire::

    async with TLSRecordRecorder(server_host, server_port) as rec:
        # point the client at rec.host / rec.port
        ...
    conn = rec.connections[0]
    sizes = [plaintext_len_tls13(r.length) for r in conn.client_records if r.content_type == 23]

Record-size arithmetic (measured with OpenSSL 3 via Python ``ssl`` in
``tests/helpers_selftest/test_tls_recorder.py``; one ``SSL_write`` ≤ 16 KiB = one record):

* TLS 1.3 (AES-GCM or ChaCha20-Poly1305): record length = plaintext + 1 (inner content
  type) + 16 (AEAD tag) → :func:`plaintext_len_tls13` = ``length - 17`` (assuming no
  TLS 1.3 record padding, which neither Go nor OpenSSL adds by default). All post-
  ServerHello handshake messages are also content type 23 (the client's Finished is the
  first type-23 record from the client: 4 + 32 = 36 bytes of plaintext (record 53) with
  SHA-256 suites, 4 + 48 = 52 (record 69) with TLS_AES_256_GCM_SHA384, which OpenSSL
  prefers; the server sends NewSessionTicket records as type 23 after the handshake; a
  close_notify alert is a type-23 record of 2 + 17 = 19 bytes).
* TLS 1.2 AES-GCM: length = plaintext + 8 (explicit nonce) + 16 (tag) = +24
  (:func:`plaintext_len_tls12_gcm`); TLS 1.2 ChaCha20-Poly1305: +16
  (:func:`plaintext_len_tls12_chacha`). In TLS 1.2 the Finished is type 22 (encrypted).

The relay propagates half-closes (EOF) in each direction and closes everything on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

__all__ = [
    "CONTENT_ALERT",
    "CONTENT_APPLICATION_DATA",
    "CONTENT_CHANGE_CIPHER_SPEC",
    "CONTENT_HANDSHAKE",
    "TLS12_CHACHA_OVERHEAD",
    "TLS12_GCM_OVERHEAD",
    "TLS13_AEAD_OVERHEAD",
    "ConnectionRecord",
    "RecordParser",
    "TLSRecord",
    "TLSRecordRecorder",
    "plaintext_len_tls12_chacha",
    "plaintext_len_tls12_gcm",
    "plaintext_len_tls13",
]

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
_VALID_TYPES = frozenset({20, 21, 22, 23, 24})

TLS13_AEAD_OVERHEAD = 17  # 1 inner content type byte + 16 byte tag
TLS12_GCM_OVERHEAD = 24  # 8 byte explicit nonce + 16 byte tag
TLS12_CHACHA_OVERHEAD = 16  # tag only (nonce is implicit)


def plaintext_len_tls13(record_len: int) -> int:
    """TLS 1.3 AEAD record length → plaintext length (``record_len - 17``)."""
    return record_len - TLS13_AEAD_OVERHEAD


def plaintext_len_tls12_gcm(record_len: int) -> int:
    """TLS 1.2 AES-GCM record length → plaintext length (``record_len - 24``)."""
    return record_len - TLS12_GCM_OVERHEAD


def plaintext_len_tls12_chacha(record_len: int) -> int:
    """TLS 1.2 ChaCha20-Poly1305 record length → plaintext length (``record_len - 16``)."""
    return record_len - TLS12_CHACHA_OVERHEAD


class TLSRecord(NamedTuple):
    content_type: int
    length: int  # the record header's length field (ciphertext length once encrypted)


class RecordParser:
    """Incremental TLS record header parser over an arbitrary chunking of the stream."""

    def __init__(self) -> None:
        self.records: list[TLSRecord] = []
        self.versions: list[int] = []  # legacy_record_version per record
        self.times: list[float] = []  # monotonic time the header was seen
        self.error: str | None = None  # set (and parsing stops) on a non-TLS header
        self.total_bytes = 0
        self._hdr = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        if self.error is not None:
            return
        view = memoryview(data)
        pos = 0
        n = len(view)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            need = 5 - len(self._hdr)
            chunk = view[pos : pos + need]
            self._hdr += chunk
            pos += len(chunk)
            if len(self._hdr) < 5:
                return
            ctype = self._hdr[0]
            version = (self._hdr[1] << 8) | self._hdr[2]
            length = (self._hdr[3] << 8) | self._hdr[4]
            if ctype not in _VALID_TYPES or self._hdr[1] != 3:
                self.error = f"not a TLS record header: {bytes(self._hdr).hex()}"
                return
            self.records.append(TLSRecord(ctype, length))
            self.versions.append(version)
            self.times.append(time.monotonic())
            self._hdr.clear()
            self._skip = length

    @property
    def partial(self) -> bool:
        """True if the stream stopped in the middle of a record."""
        return bool(self._hdr) or self._skip > 0


@dataclass
class ConnectionRecord:
    """What the recorder saw on one relayed connection."""

    peer: tuple[str, int] | None
    client: RecordParser = field(default_factory=RecordParser)
    server: RecordParser = field(default_factory=RecordParser)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    connect_error: BaseException | None = None

    @property
    def client_records(self) -> list[TLSRecord]:
        """client → server records, in order."""
        return self.client.records

    @property
    def server_records(self) -> list[TLSRecord]:
        """server → client records, in order."""
        return self.server.records

    def client_app_data(self) -> list[int]:
        """Lengths of client → server type-23 records (includes the TLS 1.3 Finished)."""
        return [r.length for r in self.client.records if r.content_type == 23]

    def server_app_data(self) -> list[int]:
        """Lengths of server → client type-23 records (incl. TLS 1.3 handshake/tickets)."""
        return [r.length for r in self.server.records if r.content_type == 23]


class TLSRecordRecorder:
    """Async context manager: loopback TCP relay to ``(target_host, target_port)``.

    ``host``/``port`` (and ``address``) are the listening address to connect clients to;
    ``connections`` is the list of :class:`ConnectionRecord`, in accept order.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.host = listen_host
        self.port = 0
        self.connections: list[ConnectionRecord] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._new_conn = asyncio.Condition()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def __aenter__(self) -> TLSRecordRecorder:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def wait_connections(
        self,
        n: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[ConnectionRecord]:
        """Wait until at least ``n`` connections were accepted."""
        async with asyncio.timeout(timeout), self._new_conn:
            await self._new_conn.wait_for(lambda: len(self.connections) >= n)
        return self.connections

    async def wait_closed(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every connection seen so far has finished relaying."""
        async with asyncio.timeout(timeout):
            for c in list(self.connections):
                await c.closed.wait()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(c_writer)
        rec = ConnectionRecord(peer=c_writer.get_extra_info("peername"))
        self.connections.append(rec)
        async with self._new_conn:
            self._new_conn.notify_all()
        s_writer: asyncio.StreamWriter | None = None
        try:
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                rec.connect_error = exc
                return
            self._writers.add(s_writer)
            for w in (c_writer, s_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(
                self._pump(c_reader, s_writer, rec.client),
                self._pump(s_reader, c_writer, rec.server),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (c_writer, s_writer):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            for w in (c_writer, s_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
            rec.closed.set()
            self._tasks.discard(task)  # type: ignore[arg-type]

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: RecordParser
    ) -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                parser.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()
            return
        if writer.can_write_eof() and not writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
