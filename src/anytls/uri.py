"""``anytls://`` share URIs (PROTOCOL.md §8, §11 #15)::

    anytls://[password@]host[:port]/?sni=name&pinSHA256=hex&insecure=1&fp=chrome

The password is the whole userinfo, percent-encoded when needed; an IPv6 host is written
in brackets; the port defaults to 443. ``sni`` set to an IP literal means "send no SNI";
``pinSHA256`` is the hex SHA-256 of the server certificate's DER (Hysteria 2's parameter;
``:`` separators and upper case accepted): the client accepts that certificate and no
other, without CA or name checks; ``insecure`` is ``1``/``0`` (``true``/``false`` also
accepted); ``fp`` names the TLS fingerprint (``chrome``, ``firefox``, ``openssl`` ..., as
other share links spell it; checked when a client is built from it). Unknown parameters
and the ``#name`` fragment are ignored. Unlike the reference client, the password is
percent-*decoded* and ``insecure`` is honoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .core.address import is_ip_literal
from .errors import ConfigError

SCHEME = "anytls"
DEFAULT_PORT = 443

_TRUE = frozenset(("1", "true"))
_FALSE = frozenset(("0", "false"))


@dataclass(frozen=True)
class ServerURI:
    """A parsed ``anytls://`` URI."""

    #: Server host name or IP literal (IPv6 without brackets).
    host: str
    #: Server port.
    port: int = DEFAULT_PORT
    #: The password (decoded).
    password: str = ""
    #: TLS server name as given; None when absent.
    sni: str | None = None
    #: Skip certificate verification.
    insecure: bool = False
    #: Hex SHA-256 of the server certificate's DER (normalised), or None.
    pin_sha256: str | None = None
    #: TLS ClientHello fingerprint (``fp``); None when absent.
    fingerprint: str | None = None

    @property
    def effective_sni(self) -> str | None:
        """The SNI to send: ``sni``, else ``host``; None when that is an IP literal."""
        name = self.sni if self.sni is not None else self.host
        if not name or is_ip_literal(name):
            return None
        return name


_QUOTES = {"'": "'", '"': '"', "\u2018": "\u2019", "\u201c": "\u201d", "`": "`"}


def strip_quotes(text: str) -> str:
    """``text`` without surrounding whitespace and one pair of quotes pasted along with it.

    A quote at only one end raises :class:`ConfigError` naming it.
    """
    text = text.strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        return text[1:-1].strip()
    for end, char in (("start", text[:1]), ("end", text[-1:])):
        if char and (char in _QUOTES or char in _QUOTES.values()):
            raise ConfigError(
                f"{text!r} has a stray {char} at its {end}: remove the quote characters "
                "copied with the link"
            )
    return text


def parse_uri(text: str) -> ServerURI:
    """Parse an ``anytls://`` URI; raise :class:`ConfigError` naming the problem."""
    text = strip_quotes(text)
    shown = text if len(text) < 200 else text[:200] + "…"
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() != SCHEME:
        what = f"a {scheme}:// link" if sep and scheme else "not a link"
        raise ConfigError(
            f"{shown!r} is {what}, not an AnyTLS one: expected "
            "anytls://PASSWORD@HOST:PORT/?sni=... (or -s HOST:PORT with -p PASSWORD)"
        )
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigError(f"bad anytls URI {shown!r}: {exc}") from None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):
        host, bracket, _ = hostport[1:].partition("]")
        if not bracket or not is_ip_literal(host) or ":" not in host:
            raise ConfigError(f"bad anytls URI {shown!r}: {hostport!r} is not a valid [IPv6] host")
    elif hostport.count(":") > 1:
        raise ConfigError(
            f"bad anytls URI {shown!r}: put an IPv6 address in brackets, e.g. "
            "anytls://PASSWORD@[::1]:8443/"
        )
    else:
        # Keep the host as written (urlsplit would lowercase it).
        host = hostport.rpartition(":")[0] if ":" in hostport else hostport
    if not host:
        raise ConfigError(f"bad anytls URI {shown!r}: missing server host")
    if any(c.isspace() for c in host):
        raise ConfigError(f"bad anytls URI {shown!r}: host {host!r} contains whitespace")
    try:
        port = parts.port
    except ValueError:
        port_text = hostport.rpartition(":")[2]
        raise ConfigError(
            f"bad anytls URI {shown!r}: port {port_text!r} is not a number in 1..65535"
        ) from None
    if port is None:
        if hostport.endswith(":"):
            raise ConfigError(f"bad anytls URI {shown!r}: empty port after ':'")
        port = DEFAULT_PORT
    elif port == 0:
        raise ConfigError(f"bad anytls URI {shown!r}: port 0 is not a server port")
    password = _unquote(userinfo) if at else ""

    sni: str | None = None
    insecure = False
    pin: str | None = None
    fingerprint: str | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "pinsha256":
            from .aio.tls import normalise_pin

            pin = normalise_pin(value) if value else None
        elif key == "sni":
            sni = value or None
        elif key == "fp":
            fingerprint = value.strip().lower() or None
        elif key == "insecure":
            flag = value.strip().lower()
            if flag in _TRUE:
                insecure = True
            elif flag in _FALSE:
                insecure = False
            else:
                raise ConfigError(f"bad anytls URI {shown!r}: insecure={value!r}, expected 1 or 0")
    return ServerURI(
        host=host,
        port=port,
        password=password,
        sni=sni,
        insecure=insecure,
        pin_sha256=pin,
        fingerprint=fingerprint,
    )


def _unquote(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ConfigError(
            "the password in the anytls URI is not valid percent-encoded UTF-8"
        ) from None


def format_uri(uri: ServerURI) -> str:
    """Return ``uri`` as text; :func:`parse_uri` gives back an equal :class:`ServerURI`."""
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    auth = f"{quote(uri.password, safe='')}@" if uri.password else ""
    params = []
    if uri.sni is not None:
        params.append(f"sni={quote(uri.sni, safe='')}")
    if uri.pin_sha256:
        params.append(f"pinSHA256={uri.pin_sha256}")
    if uri.insecure:
        params.append("insecure=1")
    if uri.fingerprint is not None:
        params.append(f"fp={quote(uri.fingerprint, safe='')}")
    query = "?" + "&".join(params) if params else ""
    return f"{SCHEME}://{auth}{host}:{uri.port}/{query}"


__all__ = ["DEFAULT_PORT", "ServerURI", "format_uri", "parse_uri", "strip_quotes"]
