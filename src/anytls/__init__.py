"""anytls: AnyTLS proxy protocol server, client and asyncio library.

The high-level API: :class:`Client` (sessions to one server), :func:`open_connection`
(a tunnelled TCP stream as an asyncio reader/writer pair), :func:`open_udp` (a UDP
association over UDP-over-TCP v2) and :func:`serve` (an AnyTLS server).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .aio.client import Client, ClientConfig, open_connection
from .aio.server import AnyTLSServer, ServerConfig, serve
from .aio.udp import UdpAssociation, open_udp
from .core.address import Address
from .errors import (
    AnyTLSError,
    AuthenticationError,
    CertificatePinError,
    ConfigError,
    ImpersonationError,
    LocalProtocolError,
    PaddingSchemeError,
    ProtocolError,
    RemoteProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamOpenError,
)

__all__ = [
    "Address",
    "AnyTLSError",
    "AnyTLSServer",
    "AuthenticationError",
    "CertificatePinError",
    "Client",
    "ClientConfig",
    "ConfigError",
    "ImpersonationError",
    "LocalProtocolError",
    "PaddingSchemeError",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerConfig",
    "SessionClosedError",
    "StreamClosedError",
    "StreamOpenError",
    "UdpAssociation",
    "__version__",
    "open_connection",
    "open_udp",
    "serve",
]
