"""Loopback networking helpers for tests: free ports, port polling, self-signed certs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import time
from pathlib import Path

__all__ = [
    "free_port",
    "free_port_tcp_udp",
    "make_self_signed_cert",
    "wait_port",
    "wait_port_sync",
]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """Return a port that is currently free on ``host`` (TCP by default).

    There is an inherent race (the port is released before the caller binds it), but
    the kernel hands out ephemeral ports round-robin, so reuse within a test is rare.
    """
    with socket.socket(_family(host), kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_tcp_udp(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """Return a port that is free for both TCP and UDP on ``host`` (for mixed inbounds)."""
    for _ in range(attempts):
        with socket.socket(_family(host), socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(_family(host), socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"could not find a port free for TCP and UDP on {host}")


async def wait_port(
    host: str,
    port: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - an explicit timeout is the API
    interval: float = 0.05,
) -> None:
    """Poll until a TCP connect to (host, port) succeeds; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=max(0.1, interval * 10)
            )
        except (TimeoutError, OSError) as exc:
            last_exc = exc
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept TCP within {timeout}s: {last_exc!r}")
        await asyncio.sleep(interval)


def wait_port_sync(host: str, port: int, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Blocking variant of :func:`wait_port` (for sync tests / threads)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept TCP within {timeout}s: {last_exc!r}")
        time.sleep(interval)


def make_self_signed_cert(tmp_path: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (EC P-256, self-signed) into ``tmp_path``.

    SAN: DNS ``hostname`` (+ ``localhost``), IP 127.0.0.1 and ::1. Valid from 1 day ago
    to 30 days ahead. Returns ``(cert_path, key_path)``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    dns_names = [hostname] if hostname == "localhost" else [hostname, "localhost"]
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns_names]
        + [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
