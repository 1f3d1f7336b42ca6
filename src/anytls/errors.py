"""Typed exceptions raised by anytls.

Every error a user can meet derives from :class:`AnyTLSError`. The sans-IO core raises
only :class:`RemoteProtocolError` from its receive paths (anything else escaping them is a
bug, and the property tests check that), and :class:`LocalProtocolError` when the API is
misused.
"""

from __future__ import annotations


class AnyTLSError(Exception):
    """Base class of every anytls error."""


class ConfigError(AnyTLSError):
    """A setting, flag, URI or file is invalid; the message names it and says why."""


class PaddingSchemeError(AnyTLSError):
    """A padding scheme's text is invalid (a file given to the server, or a scheme a
    server pushed); the message says what is wrong."""


class ProtocolError(AnyTLSError):
    """The AnyTLS (or SOCKS5/HTTP/UoT) byte stream broke a protocol rule."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids (an API misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class AuthenticationError(RemoteProtocolError):
    """The client's preface did not carry a known password hash."""


class SessionClosedError(AnyTLSError):
    """The session carrying a stream has ended."""


class CertificatePinError(SessionClosedError):
    """The server's certificate is not the pinned one: a man in the middle, or a new
    certificate on the server. Nothing was sent on that connection."""


class StreamOpenError(AnyTLSError):
    """The server could not open the destination and said why (error SYNACK)."""


class StreamClosedError(AnyTLSError):
    """The stream has ended; no more data can be written to it."""
