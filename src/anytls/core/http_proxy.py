"""HTTP proxy request heads (RFC 9110 §9.3.6, RFC 9112 §3.2) for the mixed inbound, sans-IO.

Two request shapes are accepted, parsed with :mod:`h11`::

    CONNECT host:port HTTP/1.1          → tunnel; the client speaks raw bytes after our 200
    GET http://host[:port]/path HTTP/1.1 → forward; rewritten to origin form
                                            "GET /path HTTP/1.1" with Host from the URI

``forward_head`` is a forwarded request's head on its own: ``Proxy-*`` headers dropped and
``Connection: close`` set (unless the client asks for an Upgrade), for a tunnel bound to
one origin. The mixed inbound uses it for Upgrade requests and heads without ``Host``; the
others are kept alive request by request (:mod:`anytls.core.http_forward`). Anything after
the head (request body, tunnelled bytes) is returned untouched as ``leftover``. Heads are
capped at 64 KiB.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from ..errors import ConfigError, LocalProtocolError, RemoteProtocolError
from .address import MAX_DOMAIN_SIZE, Address

#: Largest request head accepted.
MAX_HEAD_SIZE = 64 * 1024

_PLACEHOLDER_HOST = b"Host: anytls.invalid\r\n"
#: End of a request head, as h11 finds it.
_BLANK_LINE = re.compile(b"\n\r?\n")


@dataclass(frozen=True, slots=True)
class HttpProxyRequest:
    """A parsed proxy request head."""

    #: Request method as sent, e.g. ``"CONNECT"`` or ``"GET"``.
    method: str
    #: Where to open the tunnel.
    target: Address
    #: True for CONNECT (reply 200, then relay); False for a forwarded absolute-URI request.
    is_connect: bool
    #: Bytes received after the head.
    leftover: bytes
    #: The ``Proxy-Authorization`` header value, if any.
    proxy_authorization: str | None = None
    #: For non-CONNECT requests: the head rewritten to origin form, to send to ``target``.
    forward_head: bytes = b""
    #: The request asks for a protocol upgrade (``Connection: upgrade``, e.g. WebSocket).
    upgrade: bool = False
    #: The head had no ``Host`` line (accepted for CONNECT and absolute URIs by adding a
    #: placeholder to parse it).
    host_added: bool = False


def _h11_request(data: bytes) -> tuple[h11.Request, bytes] | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
    conn.receive_data(data)
    event = conn.next_event()
    if event is h11.NEED_DATA:
        return None
    if not isinstance(event, h11.Request):  # pragma: no cover - a server sees requests only
        raise RemoteProtocolError(f"unexpected HTTP event {type(event).__name__}")
    return event, conn.trailing_data[0]


def _parse(data: bytes) -> tuple[h11.Request, bytes, bool] | None:
    """(request, bytes after its head, whether a placeholder Host was added), or None
    until the whole head is there."""
    try:
        parsed = _h11_request(data)
        return None if parsed is None else (*parsed, False)
    except h11.RemoteProtocolError as exc:
        # h11 insists on Host for HTTP/1.1; proxy clients often omit it on CONNECT, and for
        # absolute-form requests it is ignored anyway (RFC 9112 §3.2.2). Retry with one.
        first, sep, rest = data.partition(b"\n")
        # Look for Host only inside the head: it ends at the first blank line, by h11's own
        # rule (\n\r?\n), so a "Host:" line in the body or a pipelined request is not seen.
        end = _BLANK_LINE.search(data)
        head = data[: end.start() if end else len(data)].lower()
        if not sep or b"\nhost:" in head:
            raise RemoteProtocolError(f"bad HTTP proxy request: {exc}") from None
        try:
            retried = _h11_request(first + sep + _PLACEHOLDER_HOST + rest)
        except h11.RemoteProtocolError:
            retried = None
        if retried is None:
            raise RemoteProtocolError(f"bad HTTP proxy request: {exc}") from None
        return (*retried, True)


def _connect_target(target: str) -> Address:
    try:
        return Address.parse(target)
    except ConfigError as exc:
        raise RemoteProtocolError(f"bad CONNECT target: {exc}") from None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lowercased tokens of every ``Connection`` header (``close``, ``upgrade``, the
    names of hop-by-hop headers)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def origin_form(target: bytes) -> tuple[Address, bytes, bytes]:
    """Split an absolute-URI request target into (origin, ``Host`` value, origin-form
    target). Raises :class:`ValueError` with a message for anything else."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("the request target is not ASCII") from None
    if not text[:8].lower().startswith(("http://", "https://")):
        raise ValueError(
            f"not a proxy request: {text[:200]!r} (this port is a SOCKS5/HTTP proxy: it "
            "takes CONNECT, or an http:// URL)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad proxy request URI {text[:200]!r}: {exc}") from None
    host = parts.hostname
    if not host or len(host.encode("utf-8")) > MAX_DOMAIN_SIZE:
        raise ValueError(f"proxy request URI {text[:200]!r} has no valid host")
    default_port = 443 if parts.scheme.lower() == "https" else 80
    port = default_port if port is None else port
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    try:
        address = Address(host, port)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return address, authority.encode("ascii"), path.encode("ascii")


def _forward(request: h11.Request, upgrade: bool) -> tuple[Address, bytes]:
    try:
        address, authority, path = origin_form(request.target)
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from None
    lines = [
        request.method + b" " + path + b" HTTP/" + request.http_version,
        b"Host: " + authority,
    ]
    for name, value in request.headers.raw_items():
        lower = name.lower()
        if lower == b"host" or lower.startswith(b"proxy-"):
            continue
        if not upgrade and lower in (b"connection", b"keep-alive"):
            continue
        lines.append(name + b": " + value)
    if not upgrade:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return address, b"\r\n".join(lines)


def parse_request_head(buf: bytes) -> HttpProxyRequest | None:
    """Parse a proxy request head from the start of ``buf``.

    Returns None until the whole head has arrived. Raises :class:`RemoteProtocolError` for
    malformed heads, heads over 64 KiB and requests that are not proxy requests.
    """
    data = bytes(buf[: MAX_HEAD_SIZE + 4])
    if not data:
        return None  # h11 would read b"" as end of stream
    parsed = _parse(data)
    if parsed is None:
        return None
    request, trailing, host_added = parsed
    if len(data) - len(trailing) > MAX_HEAD_SIZE:
        raise RemoteProtocolError(f"HTTP proxy request head exceeds {MAX_HEAD_SIZE} bytes")
    leftover = trailing + bytes(buf[len(data) :])
    method = request.method.decode("ascii")
    try:
        target = request.target.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("HTTP request target is not ASCII") from None
    auth = next(
        (v.decode("latin-1") for n, v in request.headers if n == b"proxy-authorization"), None
    )
    if method == "CONNECT":
        return HttpProxyRequest(
            method, _connect_target(target), True, leftover, auth, host_added=host_added
        )
    upgrade = b"upgrade" in connection_tokens(request.headers)
    address, head = _forward(request, upgrade)  # (refuses what is not an absolute URI)
    return HttpProxyRequest(method, address, False, leftover, auth, head, upgrade, host_added)


def response(status: int, reason: str, body: str = "") -> bytes:
    """Return a minimal response (head, and ``body`` as UTF-8 text/plain when given).

    200 gives ``HTTP/1.1 200 <reason>`` with no headers (the CONNECT reply); other codes add
    ``Content-Length`` and ``Connection: close``, and 407 a Basic ``Proxy-Authenticate``.
    """
    if not 100 <= status <= 999 or "\r" in reason or "\n" in reason:
        raise LocalProtocolError(f"bad HTTP status line: {status} {reason!r}")
    if status == 200:
        return f"HTTP/1.1 200 {reason}\r\n\r\n".encode("latin-1")
    extra = 'Proxy-Authenticate: Basic realm="anytls"\r\n' if status == 407 else ""
    content = body.encode("utf-8", "replace")
    if content:
        extra += "Content-Type: text/plain; charset=utf-8\r\n"
    return (
        f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(content)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + content


def check_basic_auth(header_value: str, user: str, password: str) -> bool:
    """True when ``header_value`` is ``Basic base64(user:password)`` (constant-time compare)."""
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, f"{user}:{password}".encode())


__all__ = [
    "MAX_HEAD_SIZE",
    "HttpProxyRequest",
    "check_basic_auth",
    "connection_tokens",
    "origin_form",
    "parse_request_head",
    "response",
]
