"""TLS contexts for both ends, and the in-memory self-signed certificate.

AnyTLS itself has no TLS options: the server needs a certificate (given, or generated at
start with ``cryptography``), and the client verifies it unless told it is insecure. An
IP-literal server name sends no SNI, which CPython already does for IP addresses.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import ssl
import sys
import tempfile

from ..errors import CertificatePinError, ConfigError

log = logging.getLogger(__name__)

#: ALPN the server selects when a client offers it: what the HTTP/1.1 web server behind
#: ``--fallback`` (plain HTTP) would answer a browser. Never ``h2``: a curl-based client
#: writes an HTTP/2 preface once ``h2`` is selected. Clients that offer none get none.
SERVER_ALPN = ("http/1.1",)

#: TLS 1.3 cipher suites in Go's order on AES-capable CPUs (what sing-box negotiates).
GO_TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"


def _loaded_libssl() -> str | None:
    """Path of the libssl the ``_ssl`` module is using (Linux), if exactly one is mapped."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libssl.so" in line}
    except OSError:
        return None
    return paths.pop() if len(paths) == 1 else None


def prefer_go_ciphersuites(ctx: ssl.SSLContext) -> bool:
    """Order ``ctx``'s TLS 1.3 suites as Go does: AES-128-GCM first, AES-256-GCM last.

    CPython's ``ssl`` cannot set TLS 1.3 suites, and OpenSSL's default order puts
    AES-256-GCM first: a Python server would then choose a different suite than Go/sing-box
    (visible in every ServerHello) and pay about 30 % more per byte for it. This calls
    OpenSSL's ``SSL_CTX_set_ciphersuites`` on the context's ``SSL_CTX`` through ctypes,
    only when the one libssl mapped is the very version ``ssl`` was built with and the
    pointer reads back the context's options. Returns whether the suites are now in Go's
    order; where any check fails nothing is changed.
    """
    if sys.implementation.name != "cpython":
        return False
    path = _loaded_libssl()
    if path is None:
        return False
    try:
        libssl = ctypes.CDLL(path)
        get_options = libssl.SSL_CTX_get_options
        set_suites = libssl.SSL_CTX_set_ciphersuites
        version_num = libssl.OpenSSL_version_num
    except (OSError, AttributeError):
        return False
    version_num.argtypes, version_num.restype = [], ctypes.c_ulong
    if version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return False  # e.g. an interpreter with its own OpenSSL inside _ssl
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    set_suites.argtypes, set_suites.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
    # PySSLContext starts with PyObject_HEAD followed by its SSL_CTX pointer.
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or get_options(ssl_ctx) != ctx.options:
        return False
    if set_suites(ssl_ctx, GO_TLS13_CIPHERSUITES.encode()) != 1:
        return False
    return ctx.get_ciphers()[0]["name"] == "TLS_AES_128_GCM_SHA256"


def generate_self_signed(hosts: list[str]) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a fresh EC P-256 certificate naming ``hosts``.

    See :func:`anytls.certs.make_self_signed` (and :func:`anytls.certs.stored_certificate`
    for one that survives restarts).
    """
    from cryptography.hazmat.primitives import serialization

    from ..certs import make_self_signed

    cert, key = make_self_signed(hosts)
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


def _accept_server_name(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
    """Accept every server name (the certificate is the same for all)."""


def server_context(
    cert: str | None = None, key: str | None = None, hosts: list[str] | None = None
) -> ssl.SSLContext:
    """A server context from PEM files, or with a generated self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    prefer_go_ciphersuites(ctx)
    # One TLS 1.3 session ticket per handshake, as Go servers send (OpenSSL's default is 2).
    ctx.num_tickets = 1
    # A browser offering h2 and http/1.1 gets http/1.1, as from a web server; no overlap
    # (e.g. only h2) means no ALPN, and the handshake goes on.
    ctx.set_alpn_protocols(list(SERVER_ALPN))
    # With a server-name callback OpenSSL acknowledges the client's SNI (an empty
    # server_name in EncryptedExtensions), as Go servers and nginx do; without one it
    # stays silent, which only bare OpenSSL servers do.
    ctx.sni_callback = _accept_server_name
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
        log.info(
            "no certificate given: using a self-signed one made for this process only "
            "(clients must pin it, and it changes at every start)"
        )
    return ctx


def certificate_sha256(der: bytes) -> str:
    """Hex SHA-256 of a certificate's DER encoding: the ``pinSHA256`` of a share link."""
    return hashlib.sha256(der).hexdigest()


def normalise_pin(pin: str) -> str:
    """``pin`` as 64 lowercase hex digits (``:`` separators allowed, as openssl prints it).

    Raises :class:`ConfigError` when it is not a SHA-256 in hex.
    """
    text = pin.strip().replace(":", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(
            f"pinSHA256 {pin!r} is not a SHA-256 in hex (64 hex digits, the SHA-256 of the "
            "certificate's DER, as the server's share link prints it)"
        )
    return text


def check_pin(der: bytes | None, pin: str, where: str) -> None:
    """Raise :class:`CertificatePinError` unless ``der`` hashes to ``pin`` (normalised)."""
    if der is None:
        raise CertificatePinError(f"{where} presented no certificate; expected the pinned one")
    got = certificate_sha256(der)
    if not hmac.compare_digest(got, pin):
        raise CertificatePinError(
            f"the certificate of {where} is not the pinned one (pinSHA256 {got}, expected "
            f"{pin}): a man in the middle, or the server has a new certificate; nothing was sent"
        )


def warn_insecure(where: str) -> None:
    """Log that the certificate of ``where`` will not be verified, and what that risks."""
    log.warning(
        "insecure: the certificate of %s is not verified, so a man in the middle can "
        "pose as the server and receive the password hash, which is the credential itself; "
        "pin the certificate (pinSHA256 in the server's share link) or use a CA-issued one",
        where,
        extra={"event": "insecure"},
    )


def client_context(
    insecure: bool = False, ca_file: str | None = None, pinned: bool = False
) -> ssl.SSLContext:
    """A client context that verifies the server unless ``insecure``.

    ``pinned``: the caller checks the certificate against a pin after the handshake
    (:func:`check_pin`), so the chain and name are not verified here.
    """
    if insecure or pinned:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    prefer_go_ciphersuites(ctx)
    if os.environ.get("TLS_KEY_LOG"):
        ctx.keylog_filename = os.environ["TLS_KEY_LOG"]
    return ctx
