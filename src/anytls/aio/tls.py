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
import threading

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


def _libssl_and_ctx(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | None:
    """The libssl ``_ssl`` uses and ``ctx``'s ``SSL_CTX`` pointer, when both can be trusted.

    Only when the one libssl mapped is the very version ``ssl`` was built with and the
    pointer reads back the context's options; otherwise None.
    """
    if sys.implementation.name != "cpython":
        return None
    path = _loaded_libssl()
    if path is None:
        return None
    try:
        libssl = ctypes.CDLL(path)
        get_options = libssl.SSL_CTX_get_options
        version_num = libssl.OpenSSL_version_num
    except (OSError, AttributeError):
        return None
    version_num.argtypes, version_num.restype = [], ctypes.c_ulong
    if version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return None  # e.g. an interpreter with its own OpenSSL inside _ssl
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    # PySSLContext starts with PyObject_HEAD followed by its SSL_CTX pointer.
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or get_options(ssl_ctx) != ctx.options:
        return None
    return libssl, ssl_ctx


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
    found = _libssl_and_ctx(ctx)
    if found is None:
        return False
    libssl, ssl_ctx = found
    try:
        set_suites = libssl.SSL_CTX_set_ciphersuites
    except AttributeError:
        return False
    set_suites.argtypes, set_suites.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
    if set_suites(ssl_ctx, GO_TLS13_CIPHERSUITES.encode()) != 1:
        return False
    return ctx.get_ciphers()[0]["name"] == "TLS_AES_128_GCM_SHA256"


# ---------------------------------------------------------------------- ClientHello ALPN

#: ALPN protocol of ACME TLS-ALPN-01 validations (RFC 8737).
ACME_TLS_ALPN = "acme-tls/1"
_TLSEXT_ALPN = 16
_CLIENT_HELLO_CB = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p
)
_hello = threading.local()
#: The one C callback (kept referenced for the life of the process) and libssl's getter.
_hello_hook: list[object] = []


def _make_hello_hook(libssl: ctypes.CDLL) -> object | None:
    try:
        get_ext = libssl.SSL_client_hello_get0_ext
    except AttributeError:
        return None
    get_ext.restype = ctypes.c_int
    get_ext.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
        ctypes.POINTER(ctypes.c_size_t),
    ]

    def on_client_hello(ssl_ptr: int | None, alert: object, arg: object) -> int:
        # Runs inside SSL_do_handshake, just before the SNI callback of the same handshake
        # on the same thread: remember the raw ALPN extension for that callback.
        try:
            data = ctypes.POINTER(ctypes.c_ubyte)()
            size = ctypes.c_size_t()
            if get_ext(ssl_ptr, _TLSEXT_ALPN, ctypes.byref(data), ctypes.byref(size)) == 1:
                _hello.alpn = ctypes.string_at(data, size.value)
            else:
                _hello.alpn = b""
        except Exception:  # pragma: no cover - never let an error abort a handshake
            _hello.alpn = None
        return 1  # SSL_CLIENT_HELLO_SUCCESS

    return _CLIENT_HELLO_CB(on_client_hello)


def watch_client_alpn(ctx: ssl.SSLContext) -> bool:
    """Make the ALPN protocols each ClientHello offers readable in ``ctx``'s SNI callback.

    CPython's ``ssl`` shows an SNI callback the server name only; answering an ACME
    TLS-ALPN-01 validation needs to know whether the client offered ``acme-tls/1``
    (RFC 8737) *before* the certificate is chosen, so that ordinary clients asking for the
    same name keep getting the real certificate. This installs OpenSSL's ClientHello
    callback (``SSL_CTX_set_client_hello_cb``) through ctypes, under the same checks as
    :func:`prefer_go_ciphersuites`. Returns False (and changes nothing) where that is not
    possible; :func:`offered_alpn` then returns None.
    """
    found = _libssl_and_ctx(ctx)
    if found is None:
        return False
    libssl, ssl_ctx = found
    try:
        set_cb = libssl.SSL_CTX_set_client_hello_cb
    except AttributeError:
        return False
    if not _hello_hook:
        hook = _make_hello_hook(libssl)
        if hook is None:
            return False
        _hello_hook.append(hook)
    set_cb.restype = None
    set_cb.argtypes = [ctypes.c_void_p, _CLIENT_HELLO_CB, ctypes.c_void_p]
    set_cb(ssl_ctx, _hello_hook[0], None)
    return True


def offered_alpn() -> list[bytes] | None:
    """In an SNI callback: the ALPN protocols the ClientHello offered (None: unknown).

    Needs :func:`watch_client_alpn` on the listening context. The value is consumed: a
    second call for the same handshake returns None.
    """
    raw: bytes | None = getattr(_hello, "alpn", None)
    _hello.alpn = None
    if raw is None:
        return None
    protocols: list[bytes] = []
    if len(raw) < 2:
        return protocols
    end = min(len(raw), 2 + int.from_bytes(raw[:2], "big"))
    pos = 2
    while pos < end:
        size = raw[pos]
        protocols.append(raw[pos + 1 : pos + 1 + size])
        pos += 1 + size
    return protocols


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


def _key_kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    kinds = (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC"),
        ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "an Ed25519"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448"),
    )
    return next((name for types, name in kinds if isinstance(key, types)), "another kind of")


def certificate_problem(cert: str, key: str | None, exc: BaseException) -> str:
    """Why ``cert``/``key`` cannot be loaded, in words a user can act on."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    contents: dict[str, bytes] = {}
    for label, path in (("certificate", cert), ("key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                contents[label] = f.read()
        except OSError as err:
            return (
                f"cannot read the {label} file {path!r}: {err.strerror or err}; make it "
                "readable by the user the server runs as (e.g. group ssl-cert, mode 640)"
            )
    cert_data, key_data = contents["certificate"], contents.get("key")
    if key_data is None:
        key_data = cert_data
        if b"PRIVATE KEY-----" not in cert_data:
            return (
                f"--cert {cert!r} was given without --key: give --key with the private key "
                "file (e.g. privkey.pem next to fullchain.pem)"
            )
    if b"-----BEGIN CERTIFICATE-----" not in cert_data:
        if b"PRIVATE KEY-----" in cert_data and b"CERTIFICATE-----" in key_data:
            return (
                f"--cert {cert!r} holds a private key and --key {key!r} a certificate: "
                "the two files are swapped"
            )
        if b"PRIVATE KEY-----" in cert_data:
            return f"--cert {cert!r} holds a private key, not a certificate"
        return f"--cert {cert!r} is not a PEM certificate (no BEGIN CERTIFICATE line)"
    try:
        certificate = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError as err:
        return f"--cert {cert!r}: the certificate cannot be parsed: {err}"
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        return (
            f"the key {key or cert!r} is protected by a passphrase: store it decrypted "
            "(openssl pkey -in KEY -out KEY.plain)"
        )
    except ValueError:
        if b"CERTIFICATE-----" in key_data and b"PRIVATE KEY-----" not in key_data:
            return f"--key {key!r} holds a certificate, not a private key"
        return f"--key {key or cert!r} is not a PEM private key this program can read"
    public = certificate.public_key()
    if _key_kind(public) != _key_kind(private):
        return (
            f"the certificate {cert!r} has {_key_kind(public)} key but {key or cert!r} holds "
            f"{_key_kind(private)} key: they are not a pair; give the key made with this "
            "certificate"
        )
    same = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not same:
        return (
            f"the private key {key or cert!r} does not belong to the certificate {cert!r}: "
            "give the key made with this certificate (for Let's Encrypt: privkey.pem of "
            "the same live/ directory)"
        )
    return f"cannot load certificate {cert!r} / key {key!r}: {exc}"


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
            raise ConfigError(certificate_problem(cert, key, exc)) from exc
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
