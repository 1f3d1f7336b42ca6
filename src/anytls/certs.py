"""The server's own certificate: made once, kept in the state directory, pinned by clients.

A server started without ``--cert`` needs a certificate that survives restarts, or no
client could pin it. :func:`stored_certificate` keeps an EC P-256 key and a self-signed
certificate in the state directory (``self-signed-key.pem``, mode 0600, and
``self-signed-cert.pem``) and makes a new certificate only when the stored one does not
name every host clients use, or has less than :data:`RENEW_BEFORE` left. A new one keeps
naming what the old one named, so moving back to an earlier listen address or host keeps
its pin. The key is kept
across such renewals, so a public-key pin (sing-box's ``certificate_public_key_sha256``)
stays valid; the certificate pin (``pinSHA256``, mihomo's ``fingerprint``) changes and the
server logs the new one.

The certificate looks like any web server's: the first host as its only subject field,
every host in the subjectAltName, a year of validity, the key usages a CA would set. It is
self-signed, so nothing but a pin can vouch for it.

:func:`publicly_trusted` tells whether a verifying client would accept a certificate
without a pin (the system's CA store), which decides whether share links carry one.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .aio.tls import certificate_sha256
from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "LIFETIME",
    "RENEW_BEFORE",
    "StoredCertificate",
    "make_self_signed",
    "publicly_trusted",
    "spki_sha256_base64",
    "stored_certificate",
]

log = logging.getLogger(__name__)

CERT_FILE = "self-signed-cert.pem"
KEY_FILE = "self-signed-key.pem"
_LOCK_FILE = ".self-signed.lock"
#: Validity of a generated certificate (what many appliances and Go's generate_cert use).
LIFETIME = datetime.timedelta(days=365)
#: A stored certificate with less than this left is replaced at start.
RENEW_BEFORE = datetime.timedelta(days=30)


def spki_sha256_base64(cert: x509.Certificate) -> str:
    """Base64 SHA-256 of the SubjectPublicKeyInfo: sing-box's ``certificate_public_key_sha256``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip("[]").lower() for h in hosts if h):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_self_signed(
    hosts: Sequence[str], key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``hosts`` (the first is the subject's CN), signed by ``key``.

    ``key`` defaults to a new EC P-256 key. Host names and IP literals both go into the
    subjectAltName, which is what clients check.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    names = _general_names(hosts) or _general_names(["localhost"])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0].value))])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now - datetime.timedelta(hours=1) + LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


@dataclass(frozen=True)
class StoredCertificate:
    """The certificate and key files in the state directory."""

    cert_path: Path
    key_path: Path
    #: Hex SHA-256 of the certificate's DER (the share links' ``pinSHA256``).
    sha256: str
    #: Why a new certificate was made at this start ("" when the stored one was kept).
    made: str = ""


def _names_in(cert: x509.Certificate) -> set[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value).lower() for n in san}


#: Names a renewed certificate keeps at most (the current hosts first, then earlier ones).
MAX_NAMES = 20


def _why_replace(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, hosts: Sequence[str]
) -> str:
    """Why the stored ``cert`` will not do for ``hosts`` ("" if it will)."""
    if cert.public_key() != key.public_key():
        return "the stored certificate does not belong to the stored key"
    missing = [str(n.value) for n in _general_names(hosts) if str(n.value) not in _names_in(cert)]
    if missing:
        return f"the stored certificate does not name {', '.join(missing)}"
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < RENEW_BEFORE:
        return f"the stored certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Several servers (or a server and --export) may start at once on one directory.
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stored_certificate(directory: Path, hosts: Sequence[str]) -> StoredCertificate:
    """The self-signed certificate in ``directory`` for ``hosts``, made or renewed if needed.

    ``directory`` is created (mode 0700) when missing. Raises :class:`ConfigError` when it
    cannot be written. The work is done in a forked child (see :mod:`anytls.forked`).
    """
    from .forked import run_forked

    return run_forked(_stored_certificate, directory, list(hosts))


def _stored_certificate(directory: Path, hosts: Sequence[str]) -> StoredCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .state import ensure_state_dir

    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    try:
        ensure_state_dir(directory)
        with _locked(directory):
            key: ec.EllipticCurvePrivateKey | None = None
            why = "none was stored yet"
            kept: list[str] = []
            if key_path.exists():
                loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
                if isinstance(loaded, ec.EllipticCurvePrivateKey):
                    key = loaded
                    if cert_path.exists():
                        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                        why = _why_replace(cert, key, hosts)
                        if not why:
                            os.chmod(key_path, 0o600)
                            der = cert.public_bytes(serialization.Encoding.DER)
                            return StoredCertificate(cert_path, key_path, certificate_sha256(der))
                        if cert.public_key() == key.public_key():
                            # The new one names the old names too: going back to an
                            # earlier listen address or host needs no new certificate
                            # (and no new pin) again.
                            kept = sorted(_names_in(cert))
                else:
                    why = "the stored key is not an EC key"
            new_key = key is None
            names = list(dict.fromkeys([*hosts, *kept]))[:MAX_NAMES]
            cert, key = make_self_signed(names, key)
            if new_key:
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                _write(key_path, pem, 0o600)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot keep the generated certificate in {str(directory)!r}: "
            f"{exc.strerror or exc}; give --state-dir a directory this user can write, "
            "or --cert/--key"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"the stored certificate or key in {str(directory)!r} is damaged ({exc}); "
            f"remove {CERT_FILE} and {KEY_FILE} there to make new ones"
        ) from exc
    der = cert.public_bytes(serialization.Encoding.DER)
    return StoredCertificate(cert_path, key_path, certificate_sha256(der), why)


def publicly_trusted(cert: str, key: str | None, server_name: str | None) -> bool:
    """Would a client verifying with the system's CA store accept ``cert`` for ``server_name``?

    Answered by a TLS handshake in memory between a server context holding the files and a
    default client context, so the chain is judged exactly as a verifying client judges it.
    """
    if not server_name:
        return False
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load certificate {cert!r} / key {key!r}: {exc}") from exc
    client = ssl.create_default_context()
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(10):
        for obj in (c, s):
            if done[obj]:
                continue
            try:
                obj.do_handshake()
                done[obj] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                return False
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done[c]:
            return True
    return False
