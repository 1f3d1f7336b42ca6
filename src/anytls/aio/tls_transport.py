"""Server-side TLS over a TCP transport, with no receive buffer of its own.

asyncio's (and uvloop's) TLS transport gives every connection a 256 KiB receive buffer
that lives as long as the connection, and lets OpenSSL's memory BIOs grow to the largest
burst they ever held. A server with a few hundred sessions that once carried traffic
keeps about 400 KiB per session that way, twice sing-box's resident memory after a
busy minute. :class:`TlsServerTransport` does the same work with ``ssl.SSLObject`` on
memory BIOs, but reads ciphertext into the one per-thread buffer (``buffers``), feeds it to
OpenSSL in slices so the BIOs stay small, and decrypts straight into the application
protocol's buffer. Each ``write`` is encrypted at once (one TLS record per chunk, as
before: the padding scheme's record sizes depend on it) and handed to the TCP transport,
whose write buffer limits and ``pause_writing`` the application sees.

The object is both the TCP connection's protocol and the application protocol's
transport. The application protocol is created only once the handshake is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from .buffers import shared_raw_buffer

log = logging.getLogger("anytls.tls")

#: Ciphertext handed to OpenSSL per call: bounds what its memory BIOs grow to.
FEED_SIZE = 32 * 1024
#: Plaintext encrypted per call for the same reason (a chunk is split at this size).
ENCRYPT_SIZE = 64 * 1024
#: Largest TLS 1.3 record on the wire (5-byte header, 2^14 + 256 bytes): OpenSSL's
#: buffer is topped up below this, so a read finds a whole record while ciphertext is
#: left to feed.
_RECORD_MAX = 5 + 16384 + 256
_EMPTY = memoryview(b"")

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class TlsServerTransport(asyncio.BufferedProtocol, asyncio.Transport):
    """One TLS server connection: protocol of the TCP transport, transport of the app."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self._app_factory = app_factory
        self._handshake_timeout = handshake_timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # The C object under ssl.SSLObject: read and write without the Python wrapper's
        # call per TLS record (same methods, same exceptions).
        self._fast: Any = getattr(self._sslobj, "_sslobj", self._sslobj)
        self._tcp: asyncio.Transport | None = None
        self._app: asyncio.BaseProtocol | None = None
        self._buffered_app = False
        self._state = _HANDSHAKE
        self._app_reading = True
        self._resume_scheduled = False
        self._eof_pending = False
        self._eof_done = False
        self._timer: asyncio.TimerHandle | None = None
        self._raw = shared_raw_buffer()

    # ------------------------------------------------------------ TCP protocol side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]
        if self._handshake_timeout:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._handshake_timeout, self._handshake_timed_out)
        self._handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._raw

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == _OPEN and self._app_reading:
            self._deliver(self._raw[:nbytes])
            return
        self._incoming.write(self._raw[:nbytes])
        if self._state == _HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool | None:
        self._incoming.write_eof()
        if self._state == _HANDSHAKE:
            log.debug("TLS handshake with %s: the peer closed the connection", self._peer())
            self._abort_tcp()
            return False
        if not self._app_reading:
            self._eof_pending = True  # after what OpenSSL still holds, on resume_reading
            return True  # (the TCP transport stays open until then)
        self._deliver()
        self._eof_to_app()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        app, self._app = self._app, None
        if app is not None:  # (there is one only once the handshake is done)
            app.connection_lost(exc)
        self._tcp = None

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # ------------------------------------------------------------ TLS work
    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_outgoing()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush_outgoing()  # the alert, if OpenSSL made one
            log.debug("TLS handshake with %s failed: %s", self._peer(), exc)
            self._close_tcp()
            return
        self._cancel_timer()
        self._flush_outgoing()  # the rest of the server's flight and session tickets
        self._state = _OPEN
        app = self._app_factory()
        self.set_protocol(app)
        app.connection_made(self)
        if self._state == _OPEN and self._app_reading:
            self._deliver()  # the client's first data may have come with its Finished

    def _deliver(self, raw: memoryview | None = None) -> None:
        """Decrypt into the application protocol what OpenSSL holds, then ``raw``.

        ``raw`` goes to OpenSSL :data:`FEED_SIZE` bytes at a time, topped up whenever less
        than a whole record is left in its buffer, while the plaintext fills the
        application's buffer: one ``buffer_updated`` per buffer. Reads stop when nothing is
        left rather than on ``SSLWantReadError`` (an exception costs ~5 µs, as much as
        decrypting a small record): only a record cut at the end of ``raw`` raises it.
        """
        sslobj, incoming = self._fast, self._incoming
        if raw is None:
            raw = _EMPTY
        offset, end = 0, len(raw)
        eof = False
        try:
            while self._app_reading and self._app is not None:
                app = self._app
                buffered = self._buffered_app
                if buffered:
                    view = memoryview(app.get_buffer(-1))  # type: ignore[attr-defined]
                    size = len(view)
                else:
                    size = FEED_SIZE
                got = 0
                chunks: list[bytes] = []
                try:
                    while got < size:
                        if offset < end:
                            if incoming.pending < _RECORD_MAX:
                                incoming.write(raw[offset : offset + FEED_SIZE])
                                offset += FEED_SIZE
                        elif not incoming.pending and not sslobj.pending():
                            break  # all read: no SSLWantReadError to raise
                        try:
                            if buffered:
                                n = sslobj.read(size - got, view[got:] if got else view)
                            else:
                                data = sslobj.read(size - got)
                                chunks.append(data)
                                n = len(data)
                        except ssl.SSLWantReadError:
                            if offset >= end:
                                raise  # a record cut at the end of raw: more will come
                            # A record longer than what OpenSSL holds (TLS 1.2 allows
                            # up to 2^14 + 2048): feed more, whatever the top-up said.
                            incoming.write(raw[offset : offset + FEED_SIZE])
                            offset += FEED_SIZE
                            continue
                        if not n:
                            eof = True  # the peer's close_notify: nothing more will come
                            break
                        got += n
                finally:
                    if got:
                        if buffered:
                            app.buffer_updated(got)  # type: ignore[attr-defined]
                        else:
                            app.data_received(b"".join(chunks))  # type: ignore[attr-defined]
                if eof:
                    self._eof_to_app()
                    break
                if got < size:
                    break
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or TCP EOF
            self._eof_to_app()
        except ssl.SSLError as exc:
            log.debug("TLS error from %s, closing: %s", self._peer(), exc)
            self._abort_tcp()
            return
        if offset < end:  # the application paused reading: OpenSSL keeps the rest
            incoming.write(raw[offset:end])
        if self._outgoing.pending:
            self._flush_outgoing()  # a key update, or an alert

    def _eof_to_app(self) -> None:
        app = self._app
        if app is None or self._state != _OPEN or self._eof_done:
            return
        self._eof_done = True
        keep_open = app.eof_received()  # type: ignore[attr-defined]
        if not keep_open and self._state == _OPEN:
            self.close()

    def _flush_outgoing(self) -> None:
        if self._outgoing.pending and self._tcp is not None:
            self._tcp.write(self._outgoing.read())

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            log.debug("TLS handshake with %s timed out", self._peer())
            self._abort_tcp()

    def _peer(self) -> str:
        peer = self._tcp.get_extra_info("peername") if self._tcp is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_tcp(self) -> None:
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.close()

    def _abort_tcp(self) -> None:
        if self._tcp is not None:
            self._tcp.abort()

    # ------------------------------------------------------------ transport side
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or self._tcp is None or not data:
            return
        if len(data) > ENCRYPT_SIZE:
            self.writelines((data,))
            return
        try:
            self._fast.write(data)
        except ssl.SSLError as exc:
            self._write_failed(exc)
            return
        self._tcp.write(self._outgoing.read())

    def _write_failed(self, exc: ssl.SSLError) -> None:
        log.debug("TLS error writing to %s, closing: %s", self._peer(), exc)
        self._abort_tcp()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._state != _OPEN or self._tcp is None:
            return
        sslobj, outgoing = self._fast, self._outgoing
        out = []
        try:
            for data in list_of_data:
                if len(data) > ENCRYPT_SIZE:
                    view = memoryview(data)
                    for offset in range(0, len(data), ENCRYPT_SIZE):
                        sslobj.write(view[offset : offset + ENCRYPT_SIZE])
                        out.append(outgoing.read())
                elif data:
                    sslobj.write(data)  # one record per chunk, as the padding scheme wants
                    if outgoing.pending >= ENCRYPT_SIZE:
                        out.append(outgoing.read())
            if outgoing.pending:
                out.append(outgoing.read())
        except ssl.SSLError as exc:
            self._write_failed(exc)
            return
        if out:
            self._tcp.writelines(out)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def close(self) -> None:
        """Send close_notify and close the TCP connection after what is buffered."""
        if self._state in (_CLOSING, _CLOSED):
            return
        was_open = self._state == _OPEN
        self._state = _CLOSING
        self._cancel_timer()
        if was_open:
            with contextlib.suppress(ssl.SSLError):  # WantRead: no wait for the peer's
                self._sslobj.unwrap()
            self._flush_outgoing()
        self._close_tcp()

    def abort(self) -> None:
        self._state = _CLOSING
        self._cancel_timer()
        self._abort_tcp()

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def pause_reading(self) -> None:
        self._app_reading = False
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._app_reading:
            return
        self._app_reading = True
        if self._tcp is not None:
            self._tcp.resume_reading()
        if not self._resume_scheduled:
            # Records already decrypted-ready in OpenSSL's buffer go up on the next tick.
            self._resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self._app_reading and self._state == _OPEN:
            self._deliver()
            if self._eof_pending and self._app_reading:
                self._eof_to_app()

    def is_reading(self) -> bool:
        return self._app_reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        if self._tcp is None:
            return (0, 0)
        return self._tcp.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol
        self._buffered_app = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "sslcontext":
            return self._sslobj.context  # (the one the SNI callback chose)
        if name == "peercert":
            return self._sslobj.getpeercert()
        if name == "cipher":
            return self._sslobj.cipher()
        if name == "compression":
            return self._sslobj.compression()
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)
