"""TLS contexts for both ends, and the in-memory self-signed certificate.

AnyTLS itself has no TLS options: the server needs a certificate (given, or generated at
start with ``cryptography``), and the client verifies it unless told it is insecure. An
IP-literal server name sends no SNI, which CPython already does for IP addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile

from ..errors import ConfigError

log = logging.getLogger(__name__)


def generate_self_signed(hosts: list[str]) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a fresh EC P-256 certificate naming ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h for h in hosts if h):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    common_name = hosts[0] if hosts and hosts[0] else "anytls"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _load_pem_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # SSLContext only loads from files: write to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="anytls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)


def server_context(
    cert: str | None = None, key: str | None = None, hosts: list[str] | None = None
) -> ssl.SSLContext:
    """A server context from PEM files, or with a generated self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load certificate {cert!r} / key {key!r}: {exc}; "
                "give PEM files readable by this user"
            ) from exc
    elif key:
        raise ConfigError("--key was given without --cert")
    else:
        cert_pem, key_pem = generate_self_signed(hosts or ["localhost"])
        _load_pem_pair(ctx, cert_pem, key_pem)
        log.info("no certificate given: using a generated self-signed one (clients need insecure)")
    return ctx


def client_context(insecure: bool = False, ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server unless ``insecure``."""
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if os.environ.get("TLS_KEY_LOG"):
        ctx.keylog_filename = os.environ["TLS_KEY_LOG"]
    return ctx
