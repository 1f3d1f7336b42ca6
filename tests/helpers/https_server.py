"""A real HTTPS server on loopback (hypercorn, HTTP/2 and HTTP/1.1 by ALPN) with a private CA.

    pki = make_ca(tmp_path)                       # ca.pem + a localhost leaf signed by it
    async with https_server(pki) as web:          # web.port, web.requests
        ctx = pki.client_context()                # trusts only that CA
        ... GET https://localhost:{web.port}/info  → JSON {"http_version": "2", ...}

Routes: ``/info`` (JSON: method, path, http_version, body size, sha256 of the body),
``/bytes/N`` (N pseudo-random bytes, sha256 in the ``x-sha256`` header), ``/slow`` (answers
only when the test sets ``web.release``), anything else 404. Every request is appended to
``web.requests`` as (http_version, method, path).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .net import free_port, wait_port

__all__ = ["PKI", "WebServer", "body_of", "https_server", "make_ca"]


@dataclass
class PKI:
    """A private CA and one server certificate (localhost, 127.0.0.1, ::1) it signed."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """Verifies against this CA only."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path) -> PKI:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (EC P-256) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("anytls test CA"))
        .issuer_name(_name("anytls test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = PKI(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def body_of(n: int) -> bytes:
    """The ``/bytes/N`` body: deterministic, incompressible-looking."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


@dataclass
class WebServer:
    port: int
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _app(web: WebServer) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method, version = scope["path"], scope["method"], scope["http_version"]
        web.requests.append((version, method, path))
        headers: list[tuple[bytes, bytes]] = []
        status = 200
        if path == "/info":
            payload = json.dumps(
                {
                    "method": method,
                    "path": path,
                    "http_version": version,
                    "size": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
            ).encode()
            headers.append((b"content-type", b"application/json"))
        elif path.startswith("/bytes/"):
            payload = body_of(int(path.rsplit("/", 1)[1]))
            headers.append((b"x-sha256", hashlib.sha256(payload).hexdigest().encode()))
        elif path == "/slow":
            await web.release.wait()
            payload = b"finally"
        else:
            status, payload = 404, b"not found"
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


@contextlib.asynccontextmanager
async def https_server(
    pki: PKI, host: str = "127.0.0.1", keep_alive_timeout: float = 5.0
) -> AsyncIterator[WebServer]:
    """Serve the test routes over HTTPS (h2 and http/1.1) until the block ends; idle
    connections are closed after ``keep_alive_timeout`` seconds."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = free_port(host)
    web = WebServer(port)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.certfile = str(pki.cert)
    config.keyfile = str(pki.key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = keep_alive_timeout
    stop = asyncio.Event()

    async def trigger() -> None:
        await stop.wait()

    task = asyncio.create_task(serve(_app(web), config, shutdown_trigger=trigger))  # type: ignore[arg-type]
    try:
        await wait_port(host, port, timeout=10)
        yield web
    finally:
        web.release.set()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
