"""Absolute-URI HTTP proxy requests on a kept-alive local connection, sans-IO.

A browser (or apt, or curl) that sends ``GET http://host/path`` to an HTTP proxy keeps the
proxy connection for its next request, and a proxy is expected to keep its connection to
the origin for the next request to the same origin, as sing-box's HTTP inbound (Go's
HTTP transport) does. :class:`HttpForward` does that for one local connection, with
:mod:`h11` on both sides:

* the local side is an h11 server: each request is rewritten to origin form (``Host``
  from the URI, hop-by-hop and ``Proxy-*`` headers dropped) and sent to its origin;
* the origin side is an h11 client per origin connection (in AnyTLS: one stream). A
  request to the origin of the previous one reuses it while both ends keep it alive;
  another origin ends it and opens a new one;
* responses go back with their hop-by-hop headers dropped and h11's framing, so a
  close-delimited body (an HTTP/1.0 origin) still reaches an HTTP/1.1 client chunked, and
  the local connection stays open for the next request.

One exchange at a time: a request pipelined behind another waits (``PauseLocal``) until
the response before it is complete. Trailers (rare outside gRPC) are not passed on.
``CONNECT`` and ``Upgrade`` requests are not forwarded here: :class:`Handoff` gives the
connection back, with the raw request, to whoever tunnels them.

Bytes go in through :meth:`HttpForward.receive_local` and
:meth:`HttpForward.receive_origin`; what to do comes back as a list of actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from .address import Address
from .http_proxy import (
    MAX_HEAD_SIZE,
    check_basic_auth,
    connection_tokens,
    origin_form,
    response,
)

#: Largest response head taken from an origin (Chromium's limit).
MAX_RESPONSE_HEAD_SIZE = 256 * 1024

#: Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


# ---------------------------------------------------------------------------- actions
class Action:
    """Base class of what :class:`HttpForward` asks its caller to do, in order."""


@dataclass(slots=True)
class ToLocal(Action):
    """Write ``data`` to the local client."""

    data: bytes


@dataclass(slots=True)
class OpenOrigin(Action):
    """End the current origin connection, if any, and open one to ``address`` whose first
    bytes are ``data`` (the request head). ``method`` is the request's, for log lines."""

    address: Address
    data: bytes
    method: str


@dataclass(slots=True)
class ToOrigin(Action):
    """Write ``data`` to the current origin connection."""

    data: bytes


@dataclass(slots=True)
class CloseOrigin(Action):
    """End the current origin connection (it cannot carry another request)."""


@dataclass(slots=True)
class CloseLocal(Action):
    """Close the local connection after what was written; ``reset``: abort it instead
    (a response cut short must not look complete). ``reason`` is for the log, if any."""

    reset: bool = False
    reason: str = ""


@dataclass(slots=True)
class PauseLocal(Action):
    """Stop (``paused``) or go on reading the local client."""

    paused: bool


@dataclass(slots=True)
class Handoff(Action):
    """A ``CONNECT`` or ``Upgrade`` request: the caller tunnels the local connection
    itself from ``data`` on (the raw request and whatever followed it); ``eof``: the
    local client had already closed its side after them."""

    data: bytes
    eof: bool = False


# ---------------------------------------------------------------------------- helpers
def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones and those their ``Connection`` names."""
    drop = HOP_BY_HOP | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _local_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)


def _nonempty(actions: list[Action]) -> list[Action]:
    """``actions`` without writes of nothing (h11 returns b"" for an empty body's end)."""
    return [a for a in actions if not isinstance(a, ToLocal | ToOrigin) or a.data]


def raw_request(event: h11.Request) -> bytes:
    """The request head as it came (h11 keeps names' case and the order)."""
    lines = [event.method + b" " + event.target + b" HTTP/" + event.http_version]
    lines += [name + b": " + value for name, value in event.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ---------------------------------------------------------------------------- the state
class HttpForward:
    """The absolute-URI requests of one local proxy connection and their origins.

    ``auth``: the ``(user, password)`` every request must carry in ``Proxy-Authorization``
    (a 407 ends the connection otherwise).
    """

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.local = _local_connection()
        #: The h11 client of the current origin connection, and where it goes.
        self.origin: h11.Connection | None = None
        self.origin_address: Address | None = None
        #: Requests sent on the current origin connection (the current one included).
        self.origin_requests = 0
        #: Whether any of the current response has been written to the local client.
        self.response_started = False
        #: Requests forwarded on this local connection.
        self.requests = 0
        self.closed = False
        self._paused = False
        #: The first bytes of the origin's answer to the current request (for messages).
        self._answer_start = bytearray()

    # ------------------------------------------------------------------ input
    def receive_local(self, data: bytes) -> list[Action]:
        """Bytes from the local client (``b""``: it closed its side)."""
        if self.closed:
            return []
        if self.local.their_state is h11.MUST_CLOSE:
            # The client's last request ("Connection: close", or HTTP/1.0) is complete:
            # whatever else it sends (an old client's extra CRLF) is not read
            # (RFC 9112 §9.6); the connection closes once the response is out.
            return []
        if data and self.idle and not self.head_started:
            data = data.lstrip(b"\r\n")  # empty lines between requests (RFC 9112 §2.2)
            if not data:
                return []
        try:
            self.local.receive_data(data)
        except RuntimeError:  # bytes after the local side's EOF: a transport never does it
            return []
        return _nonempty(self._pump_local())

    def receive_origin(self, data: bytes) -> list[Action]:
        """Bytes from the current origin connection."""
        return _nonempty(self._receive_origin(data))

    def origin_ended(self) -> list[Action]:
        """The current origin connection is gone (its stream ended)."""
        origin = self.origin
        if self.closed or origin is None:
            return []
        out = self._receive_origin(b"")
        if self.origin is origin:
            # h11 still holds it (extra bytes after a complete response hide the end).
            if origin.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                out += self._end_origin()
            else:
                out += self._origin_error("the origin closed the connection without answering")
        return _nonempty(out)

    def _receive_origin(self, data: bytes) -> list[Action]:
        origin = self.origin
        if self.closed or origin is None:
            return []
        if origin.our_state is h11.IDLE:
            # Nothing asked on this connection: bytes here (an unsolicited "408 Request
            # Timeout" before an idle close, say) answer nothing and are not passed on;
            # the connection is not used again.
            return self._end_origin()
        out: list[Action] = []
        if not self.response_started and len(self._answer_start) < 40:
            self._answer_start += data[: 40 - len(self._answer_start)]
        try:
            origin.receive_data(data)
        except RuntimeError:  # bytes after that connection's end: a transport never does it
            return []
        while not self.closed and self.origin is origin:
            try:
                event = origin.next_event()
            except h11.RemoteProtocolError as exc:
                return out + self._origin_error(self._why_not_http(exc, closed=not data))
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                # Bytes past a complete response: they can never be used (and h11 would
                # keep every further byte); the connection is not used again.
                return out + self._end_origin()
            if isinstance(event, h11.ConnectionClosed):
                # h11 reports a close only between exchanges: an idle keep-alive
                # connection timed out at the origin. The next request opens another.
                out += self._end_origin()
                break
            try:
                if isinstance(event, h11.InformationalResponse):
                    if self.local.their_http_version != b"1.0":  # no 1xx to HTTP/1.0
                        out.append(ToLocal(self._send_local(self._passed_on(event))))
                elif isinstance(event, h11.Response):
                    self.response_started = True
                    out.append(ToLocal(self._send_local(self._passed_on(event))))
                elif isinstance(event, h11.Data):
                    out.append(ToLocal(self._send_local(h11.Data(data=event.data))))
                elif isinstance(event, h11.EndOfMessage):
                    out.append(ToLocal(self._send_local(h11.EndOfMessage())))
                    out += self._exchange_done()
            except h11.LocalProtocolError as exc:
                return out + self._origin_error(f"cannot pass the response on: {exc}")
        return out

    # ------------------------------------------------------------------ local side
    def _pump_local(self) -> list[Action]:
        out: list[Action] = []
        if self._paused:
            return out
        while not self.closed and self.local.their_state is not h11.MUST_CLOSE:
            try:
                event = self.local.next_event()
            except h11.RemoteProtocolError as exc:
                return out + self._local_error(exc)
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                # A request pipelined behind one whose response is under way: read no
                # more until that response is complete (h11 keeps what it has).
                self._paused = True
                out.append(PauseLocal(True))
                break
            if isinstance(event, h11.Request):
                out += self._request(event)
            elif isinstance(event, h11.Data):
                out += self._to_origin(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                out += self._to_origin(h11.EndOfMessage())
                out += self._exchange_done()
            elif isinstance(event, h11.ConnectionClosed):
                if self.local.our_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE):
                    out += self._close_local()  # nothing under way
                break  # otherwise the response under way finishes first
        return out

    def _request(self, event: h11.Request) -> list[Action]:
        if self.auth is not None:
            value = next((v for n, v in event.headers if n == b"proxy-authorization"), b"")
            if not check_basic_auth(value.decode("latin-1"), *self.auth):
                return [
                    ToLocal(response(407, "Proxy Authentication Required")),
                    *self._close_local(reason="a request without valid proxy credentials"),
                ]
        upgrade = b"upgrade" in connection_tokens(event.headers)
        if upgrade and event.method != b"CONNECT":
            try:
                origin_form(event.target)
            except ValueError as exc:
                return [
                    ToLocal(response(400, "Bad Request", body=f"anytls-client: {exc}\n")),
                    *self._close_local(reason=str(exc)),
                ]
        if event.method == b"CONNECT" or upgrade:
            rest, eof = self.local.trailing_data
            self.closed = True
            out: list[Action] = [CloseOrigin()] if self.origin is not None else []
            self.origin = None
            return [*out, Handoff(raw_request(event) + rest, eof)]
        try:
            address, authority, path = origin_form(event.target)
        except ValueError as exc:
            return [
                ToLocal(response(400, "Bad Request", body=f"anytls-client: {exc}\n")),
                *self._close_local(reason=str(exc)),
            ]
        # Host from the URI; with Transfer-Encoding, no Content-Length (RFC 9112 §6.3: an
        # intermediary removes it, or the origin could read the next request out of step).
        chunked = any(n == b"transfer-encoding" for n, _ in event.headers)
        skip = {b"host", b"content-length"} if chunked else {b"host"}
        headers = [(b"Host", authority)]
        headers += [
            (n, v) for n, v in end_to_end(list(event.headers.raw_items())) if n.lower() not in skip
        ]
        try:
            request = h11.Request(method=event.method, target=path, headers=headers)
        except h11.LocalProtocolError as exc:  # h11 took it in: not expected to happen
            return self._local_error(exc)
        self.requests += 1
        self.response_started = False
        self._answer_start = bytearray()
        method = event.method.decode("ascii", "replace")
        origin = self.origin
        if (
            origin is not None
            and address == self.origin_address
            and origin.our_state is h11.IDLE
            and origin.their_state is h11.IDLE
        ):
            self.origin_requests += 1
            return [ToOrigin(origin.send(request) or b"")]
        out = [CloseOrigin()] if origin is not None else []
        origin = self.origin = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_SIZE
        )
        self.origin_address = address
        self.origin_requests = 1
        return [*out, OpenOrigin(address, origin.send(request) or b"", method)]

    def _to_origin(self, event: h11.Data | h11.EndOfMessage) -> list[Action]:
        origin = self.origin
        if origin is None or origin.our_state is not h11.SEND_BODY:
            return []  # the origin is gone (or answered and closed): the body is dropped
        try:
            return [ToOrigin(origin.send(event) or b"")]
        except h11.LocalProtocolError as exc:  # the same framing both ways: not expected
            return self._local_error(exc)

    def _send_local(self, event: h11.Event) -> bytes:
        return self.local.send(event) or b""

    @property
    def idle(self) -> bool:
        """Between requests: no exchange under way (``head_started``: part of the next
        request's head has come)."""
        local = self.local
        return not self.closed and local.our_state is h11.IDLE and local.their_state is h11.IDLE

    @property
    def head_started(self) -> bool:
        """Part of the next request has come, but not its whole head."""
        return bool(self.local.trailing_data[0])

    # ------------------------------------------------------------------ origin side
    @staticmethod
    def _passed_on(
        event: h11.InformationalResponse | h11.Response,
    ) -> h11.InformationalResponse | h11.Response:
        """The origin's response (or 1xx) as sent on: its end-to-end headers only."""
        return type(event)(
            status_code=event.status_code,
            headers=end_to_end(list(event.headers.raw_items())),
            reason=event.reason,
        )

    def _exchange_done(self) -> list[Action]:
        """After the request's or the response's end: once both are done, keep or end
        each side's connection for the next request."""
        local = self.local
        if local.our_state not in (h11.DONE, h11.MUST_CLOSE):
            return []  # the response is still under way
        if local.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            return []  # the request body is still coming
        out: list[Action] = []
        origin = self.origin
        if origin is not None:
            if (
                origin.our_state is h11.DONE
                and origin.their_state is h11.DONE
                and not origin.trailing_data[0]
            ):
                origin.start_next_cycle()
            else:
                # It asked to close, cannot carry another request, or sent bytes past its
                # response (they would be read as the next response).
                out += self._end_origin()
        if local.our_state is not h11.DONE or local.their_state is not h11.DONE:
            return out + self._close_local()  # the client asked to close, or left
        self._next_local_cycle()
        self.response_started = False
        if self._paused:
            self._paused = False
            out.append(PauseLocal(False))
        return out + self._pump_local()

    def _next_local_cycle(self) -> None:
        """Ready the local side for the next request: a new h11 connection given what was
        read past the last request, without the empty lines a client may send between
        requests (RFC 9112 §2.2; h11 would take them for a bad request line)."""
        rest, eof = self.local.trailing_data
        self.local = _local_connection()
        rest = rest.lstrip(b"\r\n")
        if rest:
            self.local.receive_data(rest)
        if eof:
            self.local.receive_data(b"")

    def _why_not_http(self, exc: h11.RemoteProtocolError, closed: bool) -> str:
        """What went wrong with the origin's answer, in words (h11's are for developers)."""
        if self.response_started:
            if closed:
                return "the origin closed the connection before the end of its response"
            return f"the origin's response is malformed ({exc})"
        if not self._answer_start:
            return "the origin closed the connection without answering"
        start = bytes(self._answer_start).decode("latin-1")
        return f"the origin did not answer in HTTP/1.x (its answer began {start!r})"

    def _end_origin(self) -> list[Action]:
        self.origin = None
        self.origin_address = None
        return [CloseOrigin()]

    def _origin_error(self, reason: str) -> list[Action]:
        out = self._end_origin()
        if self.response_started:
            # Part of the response is out: the client must not take it for complete.
            why = f"the origin's response broke off: {reason}"
            return out + self._close_local(reset=True, reason=why)
        if self.origin_requests > 1:
            # A reused origin connection ended before answering (the origin may have
            # closed it as idle just then): closing with no response lets the client
            # retry on a new connection, as clients do for a reused connection.
            return out + self._close_local(reason=f"a reused origin connection ended: {reason}")
        reply = response(502, "Bad Gateway", body=f"anytls-client: {reason}\n")
        return [*out, ToLocal(reply), *self._close_local(reason=reason)]

    # ------------------------------------------------------------------ ending
    def _local_error(self, exc: Exception) -> list[Action]:
        if self.local.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.response_started:
            reply = response(400, "Bad Request", body=f"anytls-client: {exc}\n")
            return [ToLocal(reply), *self._close_local(reason=f"bad request: {exc}")]
        return self._close_local(reset=True, reason=f"bad request: {exc}")

    def _close_local(self, reset: bool = False, reason: str = "") -> list[Action]:
        self.closed = True
        out: list[Action] = [CloseOrigin()] if self.origin is not None else []
        self.origin = None
        return [*out, CloseLocal(reset, reason)]


__all__ = [
    "HOP_BY_HOP",
    "Action",
    "CloseLocal",
    "CloseOrigin",
    "Handoff",
    "HttpForward",
    "OpenOrigin",
    "PauseLocal",
    "ToLocal",
    "ToOrigin",
    "end_to_end",
    "origin_form",
    "raw_request",
]
