"""Typed exceptions raised by anytls.

Every error a user can meet derives from :class:`AnyTLSError`. The sans-IO core raises
only :class:`RemoteProtocolError` from its receive paths (anything else escaping them is a
bug, and the property tests check that), and :class:`LocalProtocolError` when the API is
misused.
"""

from __future__ import annotations

import enum


class FailureReason(enum.Enum):
    """Why a stream or session could not be opened, in the terms that SOCKS5 replies and
    HTTP statuses distinguish."""

    REFUSED = "connection refused"
    TIMED_OUT = "timed out"
    NETWORK_UNREACHABLE = "network unreachable"
    HOST_UNREACHABLE = "host unreachable"
    NOT_ALLOWED = "not allowed"
    OTHER = "other"

    @classmethod
    def from_remote_text(cls, text: str) -> FailureReason:
        """The reason in a server's error SYNACK text.

        AnyTLS carries only text: sing-box and anytls-go send Go error strings
        (``dial tcp 1.2.3.4:80: connect: connection refused``, ``i/o timeout``,
        ``lookup x: no such host``), and our server sends the same forms. This is the one
        place that reads them.
        """
        lowered = text.lower()
        if "refused" in lowered:
            return cls.REFUSED
        if "timeout" in lowered or "timed out" in lowered:
            return cls.TIMED_OUT
        if "network is unreachable" in lowered:
            return cls.NETWORK_UNREACHABLE
        if "unreachable" in lowered or "no route" in lowered or "no such host" in lowered:
            return cls.HOST_UNREACHABLE
        if "not allowed" in lowered or "forbidden" in lowered:
            return cls.NOT_ALLOWED
        return cls.OTHER


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
    """The client's preface did not carry a known password hash (``digest``, when one
    arrived)."""

    def __init__(self, message: str, digest: bytes | None = None) -> None:
        super().__init__(message)
        self.digest = digest


class SessionClosedError(AnyTLSError):
    """The session carrying a stream has ended (or could not be opened)."""

    def __init__(self, message: str, reason: FailureReason = FailureReason.OTHER) -> None:
        super().__init__(message)
        #: Why, where known (``TIMED_OUT`` for a server that did not answer in time).
        self.reason = reason


class CertificatePinError(SessionClosedError):
    """The server's certificate is not the pinned one: a man in the middle, or a new
    certificate on the server. Nothing was sent on that connection."""


class ImpersonationError(SessionClosedError):
    """The browser-fingerprinted TLS connection (curl-impersonate) could not be made: curl_cffi
    is missing or unusable, or the server chose an ALPN protocol (h2) that an AnyTLS server
    never picks. Nothing of ours was sent on that connection."""


class StreamOpenError(AnyTLSError):
    """The server could not open the destination and said why (error SYNACK)."""

    def __init__(self, message: str, reason: FailureReason = FailureReason.OTHER) -> None:
        super().__init__(message)
        #: The failure, typed: what SOCKS/HTTP replies are chosen by.
        self.reason = reason


class StreamClosedError(AnyTLSError):
    """The stream has ended; no more data can be written to it."""


class AcmeError(AnyTLSError):
    """An ACME CA did not issue a certificate; the message carries the CA's reason."""
