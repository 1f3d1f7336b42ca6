"""Certificates from an ACME CA (Let's Encrypt by default), without certbot.

:class:`AcmeManager` keeps a certificate for the ``--acme`` domains: at start it reuses a
stored certificate that is still valid (else the server serves a temporary self-signed
one), asks the CA for a new one when needed, and renews it at two thirds of its lifetime.
Each new certificate goes to new connections; open sessions keep theirs (the SIGHUP path,
:meth:`~anytls.aio.server.AnyTLSServer.update`).

The ACME protocol is spoken by the ``acme`` package (certbot's library). It is
synchronous, so every exchange with the CA runs in a thread of its own and the event loop
never waits for it.

Challenges:

* TLS-ALPN-01 (RFC 8737) on the server's own port: a validation handshake offers the
  ALPN protocol ``acme-tls/1`` for the domain and gets a certificate that carries the
  key authorization's digest. The challenge certificate is written to the state
  directory, so whichever ``--workers`` process accepts the CA's connection answers it.
* HTTP-01 when an HTTP port is given: :class:`HttpChallengeServer` answers
  ``GET /.well-known/acme-challenge/TOKEN`` (in the process that talks to the CA).

Files, under ``<state dir>/acme/<CA directory host>/`` (directory 0700, keys 0600)::

    account.key                    the ACME account's private key
    account.json                   the account URL (for reference)
    <first domain>/fullchain.pem   the certificate and its chain
    <first domain>/privkey.pem     its private key
    challenges/<domain>.pem        only while a TLS-ALPN-01 validation is pending
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from ..core.address import Address
from ..errors import AcmeError, ConfigError
from ..state import ensure_state_dir
from .tls import (
    ACME_TLS_ALPN,
    generate_self_signed,
    offered_alpn,
    server_context,
    watch_client_alpn,
)

log = logging.getLogger("anytls.acme")

#: Let's Encrypt's production directory, the default CA.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: Renew when this much of a certificate's lifetime has passed.
RENEW_FRACTION = 2 / 3
#: First delay before trying again after a failure; it doubles up to :data:`RETRY_MAX`.
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0
#: How long one issuance may take (validation and finalization) before it is given up.
ISSUE_TIMEOUT = 90.0
#: id-pe-acmeIdentifier (RFC 8737): the extension of a TLS-ALPN-01 certificate.
_ACME_IDENTIFIER_OID = "1.3.6.1.5.5.7.1.31"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")

T = TypeVar("T")


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AcmeSettings:
    """What ``--acme`` and its companion options ask for."""

    domains: tuple[str, ...]
    state_dir: Path
    email: str | None = None
    directory: str = LETS_ENCRYPT
    #: PEM file of the roots that verify the CA's HTTPS API instead of the system's (a
    #: private or test CA such as pebble).
    ca_file: str | None = None
    #: Where to answer HTTP-01 (None: use TLS-ALPN-01 on the server's port).
    http: Address | None = None

    @property
    def challenge(self) -> str:
        """The challenge type used: ``http-01`` with an HTTP port, else ``tls-alpn-01``."""
        return "http-01" if self.http is not None else "tls-alpn-01"


def check_domain(name: str) -> str:
    """``name`` lowercased without a trailing dot; ConfigError unless a DNS name."""
    domain = name.strip().lower().rstrip(".")
    if domain.startswith("*."):
        raise ConfigError(
            f"--acme {name!r}: wildcard names need the DNS-01 challenge, which this server "
            "does not do; list each name"
        )
    if not _DOMAIN.match(domain):
        raise ConfigError(f"--acme {name!r} is not a DNS name (example: proxy.example.com)")
    return domain


def check_directory(url: str) -> str:
    """``url`` if it looks like an ACME directory URL (http or https), else ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"--acme-directory {url!r} is not a URL (example: {LETS_ENCRYPT})")
    return url


def check_acme_installed() -> None:
    """ConfigError naming the package when the ``acme`` library is missing."""
    try:
        import acme.client  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--acme needs the 'acme' package (certbot's ACME library): pip install acme ({exc})"
        ) from exc


# ---------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by this user only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class StoredCertificate:
    """A certificate chain in the state directory and its validity."""

    fullchain: Path
    privkey: Path
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str
    serial: int

    @property
    def renew_at(self) -> datetime.datetime:
        """Two thirds into the certificate's lifetime."""
        return self.not_before + (self.not_after - self.not_before) * RENEW_FRACTION

    def covers(self, domains: Sequence[str]) -> bool:
        """Does the certificate name every one of ``domains``?"""
        return set(domains) <= set(self.names)


def read_certificate(fullchain: Path, privkey: Path) -> StoredCertificate | None:
    """The certificate in ``fullchain`` (None when missing or unreadable)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(fullchain.read_bytes())
        if not privkey.exists():
            return None
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    issuer = ", ".join(
        str(a.value) for a in cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    )
    return StoredCertificate(
        fullchain,
        privkey,
        names,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        issuer or cert.issuer.rfc4514_string(),
        cert.serial_number,
    )


class AcmeStore:
    """The ACME files of one CA directory and one set of domains in the state directory."""

    def __init__(self, state_dir: Path, directory: str, domains: Sequence[str]) -> None:
        host = urlsplit(directory).netloc or "ca"
        self.root = state_dir / "acme" / re.sub(r"[^A-Za-z0-9._-]", "_", host)
        self.cert_dir = self.root / domains[0]
        self.fullchain = self.cert_dir / "fullchain.pem"
        self.privkey = self.cert_dir / "privkey.pem"
        self.challenges = self.root / "challenges"

    def certificate(self) -> StoredCertificate | None:
        """The stored certificate, if any."""
        return read_certificate(self.fullchain, self.privkey)

    def save_certificate(self, fullchain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        """Store a new certificate and key (key first: a reader never pairs new and old)."""
        _write_private(self.privkey, key_pem)
        _write_private(self.fullchain, fullchain_pem)
        stored = self.certificate()
        if stored is None:
            raise AcmeError(f"the CA's certificate could not be read back from {self.fullchain}")
        return stored

    def account_key_pem(self) -> bytes:
        """The account's private key, made (EC P-256) and stored on first use."""
        path = self.root / "account.key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
        return pem

    def save_account(self, url: str, email: str | None) -> None:
        """Note the account URL (for the operator; the key alone finds the account)."""
        data = {"url": url, "email": email}
        _write_private(self.root / "account.json", json.dumps(data, indent=2).encode() + b"\n")

    def challenge_path(self, domain: str) -> Path:
        """Where the TLS-ALPN-01 certificate for ``domain`` is kept during a validation."""
        return self.challenges / f"{domain}.pem"


# ---------------------------------------------------------------------- TLS-ALPN-01


def tls_alpn_certificate(domain: str, key_authorization: str) -> bytes:
    """PEM key + self-signed certificate answering a TLS-ALPN-01 challenge (RFC 8737).

    It names ``domain`` and carries the critical acmeIdentifier extension: the SHA-256 of
    the key authorization as a DER OCTET STRING.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(_ACME_IDENTIFIER_OID), b"\x04\x20" + digest
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def _no_sni(ssl_obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
    # A challenge context's own SNI callback, so that OpenSSL does not fall back to the
    # listening context's (which would switch the handshake back).
    return None


class TlsAlpnResponder:
    """Picks the challenge certificate for TLS-ALPN-01 validation handshakes.

    Install with :meth:`AnyTLSServer.set_challenge_responder
    <anytls.aio.server.AnyTLSServer.set_challenge_responder>` and :meth:`watch` on the
    listening context. Only a ClientHello for one of the domains that offers
    ``acme-tls/1`` while a challenge file exists gets the challenge certificate; every
    other client, including browsers and AnyTLS clients asking for the same name, gets the
    real one. Where the offered ALPN cannot be seen (:func:`~anytls.aio.tls.watch_client_alpn`
    failed), every handshake for the domain gets it while the challenge is pending.
    """

    def __init__(self, store: AcmeStore, domains: Sequence[str]) -> None:
        self.store = store
        self.domains = frozenset(domains)
        self.sees_alpn = False

    def watch(self, listening: ssl.SSLContext) -> bool:
        """Read the ALPN of ClientHellos on ``listening``; False where that cannot work."""
        self.sees_alpn = watch_client_alpn(listening)
        return self.sees_alpn

    def __call__(self, server_name: str | None) -> ssl.SSLContext | None:
        offered = offered_alpn() if self.sees_alpn else None
        if server_name is None:
            return None
        name = server_name.lower()
        if name not in self.domains:
            return None
        if self.sees_alpn and (offered is None or ACME_TLS_ALPN.encode() not in offered):
            return None
        path = self.store.challenge_path(name)
        if not path.exists():
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(path)
        except (OSError, ssl.SSLError) as exc:
            log.warning("ACME: cannot load the challenge certificate %s: %s", path, exc)
            return None
        ctx.set_alpn_protocols([ACME_TLS_ALPN])
        ctx.sni_callback = _no_sni
        log.debug("ACME: TLS-ALPN-01 handshake for %s gets the challenge certificate", name)
        return ctx


# ---------------------------------------------------------------------- HTTP-01


HTTP01_PREFIX = "/.well-known/acme-challenge/"


class HttpChallengeServer:
    """A tiny HTTP server answering HTTP-01 challenges (``GET /.well-known/acme-challenge/T``).

    An unknown token gets 404; any other request is redirected to ``https://`` on the same
    host, as the port 80 of an HTTPS site does. ``tokens`` maps a token to its key
    authorization; the ACME thread adds and removes entries (single dictionary operations,
    safe across threads).
    """

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self._server: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port`` (all addresses for None)."""
        self._server = await asyncio.start_server(self._serve, host or None, port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8192)
        try:
            async with asyncio.timeout(10):
                event: Any = h11.NEED_DATA
                while event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(4096))
                    event = conn.next_event()
            if not isinstance(event, h11.Request):
                return
            target = event.target.decode("ascii", "replace")
            path = target.split("?", 1)[0]
            headers = [("content-type", "text/plain"), ("connection", "close")]
            host = _redirect_host(dict(event.headers).get(b"host", b""))
            if path.startswith(HTTP01_PREFIX) or not host:
                answer = self.tokens.get(path[len(HTTP01_PREFIX) :])
                if answer is not None and event.method in (b"GET", b"HEAD"):
                    status, body = 200, answer.encode()
                    peer = writer.get_extra_info("peername")
                    where = peer[0] if peer else "?"
                    log.info("answered an ACME HTTP-01 validation from %s", where)
                else:
                    status, body = 404, b"not found\n"
            else:
                status, body = 301, b""
                headers.append(("location", f"https://{host}{target}"))
            headers.append(("content-length", str(len(body))))
            data = conn.send(h11.Response(status_code=status, headers=headers))
            if event.method != b"HEAD":
                data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
            writer.write((data or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
        except (h11.ProtocolError, OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _redirect_host(value: bytes) -> str:
    """The Host header without its port, if it is a plausible host name ('' otherwise)."""
    text = value.decode("ascii", "replace").strip().lower()
    host = text[1:].partition("]")[0] if text.startswith("[") else text.rpartition(":")[0] or text
    if text.startswith("["):
        return f"[{host}]" if re.fullmatch(r"[0-9a-f:.]+", host) else ""
    return host if re.fullmatch(r"[a-z0-9.-]{1,253}", host) else ""


# ---------------------------------------------------------------------- the CA


def _problem(error: Any) -> str:
    """An ACME problem document as one line: detail, then the type URN."""
    detail = getattr(error, "detail", None) or getattr(error, "description", None)
    typ = getattr(error, "typ", None)
    text = f"{detail} ({typ})" if detail and typ else str(detail or typ or error)
    subs = getattr(error, "subproblems", None) or ()
    for sub in subs:
        ident = getattr(getattr(sub, "identifier", None), "value", None)
        text += f"; {ident + ': ' if ident else ''}{_problem(sub)}"
    return text


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error of requests' wrapped ones (urllib3 keeps it in ``reason``)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def describe_failure(exc: BaseException, directory: str) -> str:
    """What went wrong with the CA, in its own words where it gave any."""
    import requests
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            domain = authzr.body.identifier.value
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    parts.append(f"{domain}: {challb.chall.typ} failed: {_problem(challb.error)}")
        return "; ".join(parts) or "the CA refused the validation"
    if isinstance(exc, messages.Error):
        return f"the CA said: {_problem(exc)}"
    if isinstance(exc, errors.IssuanceError):
        return f"the CA did not issue: {_problem(exc.error)}"
    if isinstance(exc, errors.TimeoutError):
        return f"the CA did not finish within {ISSUE_TIMEOUT:g} s"
    if isinstance(exc, requests.RequestException):
        cause = _root_cause(exc)
        text = str(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            text += " (a private or test CA: give its root with --acme-ca)"
        return f"cannot reach the CA at {directory}: {text}"
    return str(exc) or type(exc).__name__


def _register_tls_alpn01() -> type[Any]:
    """The ``tls-alpn-01`` challenge type (the ``acme`` package dropped its own in 3.0).

    Registered with the package's challenge registry, so orders parse it like the others.
    """
    from acme import challenges

    known = challenges.Challenge.TYPES.get("tls-alpn-01")
    if known is not None and issubclass(known, challenges.KeyAuthorizationChallenge):
        return known

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        """ACME tls-alpn-01 challenge response (its JSON is ``{}``)."""

        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        """ACME tls-alpn-01 challenge (RFC 8737)."""

        response_cls = TLSALPN01Response
        typ = "tls-alpn-01"

        def validation(self, account_key: Any, **unused: Any) -> Any:
            """The key authorization (its digest goes into the challenge certificate)."""
            return self.key_authorization(account_key)

    return TLSALPN01


async def run_in_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a daemon thread; the loop waits without blocking.

    A daemon thread, unlike the default executor's, does not hold up the process exit
    when the server stops in the middle of an exchange with the CA.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(deliver, ok, result)

    threading.Thread(target=work, name="anytls-acme", daemon=True).start()
    return await future


def _wait_for_authorizations(acme: Any, order: Any, deadline: datetime.datetime) -> Any:
    """Poll the order's authorizations until none is pending (as the library's
    ``poll_authorizations`` does, but from 0.1 s up instead of every second: a CA
    usually validates within a fraction of a second)."""
    from acme import errors, messages

    done = []
    for authzr in order.authorizations:
        delay = 0.1
        while True:
            authzr, _ = acme.poll(authzr)
            if authzr.body.status != messages.STATUS_PENDING:
                break
            if datetime.datetime.now() >= deadline:
                raise errors.TimeoutError()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        done.append(authzr)
    failed = [a for a in done if a.body.status != messages.STATUS_VALID]
    if failed:
        raise errors.ValidationError(failed)
    return order.update(authorizations=done)


@dataclass
class AcmeClient:
    """One conversation with the CA (synchronous; run it in a thread)."""

    settings: AcmeSettings
    store: AcmeStore
    http_tokens: dict[str, str] = field(default_factory=dict)

    def _connect(self) -> tuple[Any, Any]:
        from acme import client, errors, messages
        from cryptography.hazmat.primitives import serialization
        from josepy.jwa import ES256
        from josepy.jwk import JWKEC

        from .. import __version__

        key = serialization.load_pem_private_key(self.store.account_key_pem(), password=None)
        jwk = JWKEC(key=key)
        # requests takes a CA bundle path where acme's signature says bool.
        verify = cast(bool, self.settings.ca_file or True)
        net = client.ClientNetwork(
            jwk, alg=ES256, verify_ssl=verify, user_agent=f"anytls/{__version__}"
        )
        directory = client.ClientV2.get_directory(self.settings.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.settings.email, terms_of_service_agreed=True
        )
        try:
            account = acme.new_account(registration)
        except errors.ConflictError as exc:  # this key has an account already
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        else:
            terms = getattr(directory.meta, "terms_of_service", None)
            log.info(
                "ACME: registered an account with %s%s (terms of service: %s)",
                urlsplit(self.settings.directory).netloc,
                f" for {self.settings.email}" if self.settings.email else "",
                terms or "none given",
            )
            self.store.save_account(account.uri, self.settings.email)
        return acme, jwk

    def issue(self) -> tuple[bytes, bytes]:
        """Order, validate and download a certificate; return ``(fullchain, key)`` PEM."""
        from acme import crypto_util, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        _register_tls_alpn01()
        acme, jwk = self._connect()
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr = crypto_util.make_csr(key_pem, list(self.settings.domains))
        order = acme.new_order(csr)
        kind = self.settings.challenge
        files: list[Path] = []
        tokens: list[str] = []
        try:
            answers = []
            for authzr in order.authorizations:
                domain = authzr.body.identifier.value
                if authzr.body.status == messages.STATUS_VALID:
                    continue
                challb = next((c for c in authzr.body.challenges if c.chall.typ == kind), None)
                if challb is None:
                    offered = ", ".join(c.chall.typ for c in authzr.body.challenges)
                    raise AcmeError(
                        f"the CA offers no {kind} challenge for {domain} (only {offered})"
                    )
                key_authorization = challb.chall.key_authorization(jwk)
                if kind == "http-01":
                    token = challb.chall.encode("token")
                    self.http_tokens[token] = key_authorization
                    tokens.append(token)
                else:
                    path = self.store.challenge_path(domain)
                    _write_private(path, tls_alpn_certificate(domain, key_authorization))
                    files.append(path)
                answers.append(challb)
            for challb in answers:
                acme.answer_challenge(challb, challb.chall.response(jwk))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ISSUE_TIMEOUT)
            order = _wait_for_authorizations(acme, order, deadline)
            order = acme.finalize_order(order, deadline)
        finally:
            for path in files:
                with contextlib.suppress(OSError):
                    path.unlink()
            for token in tokens:
                self.http_tokens.pop(token, None)
        return order.fullchain_pem.encode(), key_pem


# ---------------------------------------------------------------------- the manager


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AcmeManager:
    """Obtains and renews the certificate of the ``--acme`` domains.

    ``install(context)`` is called with each new certificate's TLS context (in the
    process that runs :meth:`run`; other worker processes call :meth:`reload`).
    """

    def __init__(self, settings: AcmeSettings) -> None:
        self.settings = settings
        self.store = AcmeStore(settings.state_dir, settings.directory, settings.domains)
        self.responder = TlsAlpnResponder(self.store, settings.domains)
        self.http_server: HttpChallengeServer | None = None
        self.client = AcmeClient(settings, self.store)
        #: The certificate being served (None: the temporary self-signed one).
        self.current: StoredCertificate | None = None
        self.retry_first = RETRY_FIRST
        self.retry_max = RETRY_MAX

    @property
    def ca(self) -> str:
        """The CA's host, for log lines."""
        return urlsplit(self.settings.directory).netloc

    def _usable(self, cert: StoredCertificate | None) -> bool:
        if cert is None or not cert.covers(self.settings.domains):
            return False
        return cert.not_after > _utcnow()

    def initial_context(self) -> ssl.SSLContext:
        """The context to start with: a stored, still valid certificate, else a temporary one.

        Raises ConfigError when the state directory cannot be made.
        """
        try:
            ensure_state_dir(self.store.root)
        except OSError as exc:
            raise ConfigError(
                f"--acme keeps its account and certificates in {self.store.root}, which "
                f"cannot be created: {exc.strerror or exc}; give a writable --state-dir"
            ) from exc
        stored = self.store.certificate()
        if stored is not None and self._usable(stored):
            try:
                ctx = server_context(str(stored.fullchain), str(stored.privkey))
            except ConfigError as exc:
                log.warning("ACME: stored certificate unusable (%s); getting a new one", exc)
            else:
                self.current = stored
                log.info(
                    "ACME: using the stored certificate for %s from %s (valid until %s; "
                    "renewal at %s)",
                    ", ".join(self.settings.domains),
                    stored.issuer,
                    _when(stored.not_after),
                    _when(stored.renew_at),
                )
                return ctx
        log.warning(
            "ACME: no certificate for %s yet: serving a temporary self-signed one until %s "
            "issues it (clients that verify refuse it until then)",
            ", ".join(self.settings.domains),
            self.ca,
        )
        cert_pem, key_pem = generate_self_signed(list(self.settings.domains))
        with tempfile.TemporaryDirectory(prefix="anytls-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            _write_private(key_path, key_pem)
            cert_path.write_bytes(cert_pem)
            return server_context(str(cert_path), str(key_path))

    def port_hint(self, port: int) -> None:
        """Say where the CA will connect when it cannot be this port directly."""
        if self.settings.http is None and port != 443:
            log.info(
                "ACME: the CA checks %s on port 443 (TLS-ALPN-01): it must reach this "
                "server's port %d, or give --acme-http 80",
                ", ".join(self.settings.domains),
                port,
            )
        elif self.settings.http is not None and self.settings.http.port != 80:
            log.info(
                "ACME: the CA checks %s on port 80 (HTTP-01): it must reach port %d",
                ", ".join(self.settings.domains),
                self.settings.http.port,
            )

    def attach(self, server: Any) -> None:
        """Answer TLS-ALPN-01 validations on ``server``'s port (in every worker process)."""
        if not self.responder.watch(server.ssl_context) and self.settings.http is None:
            log.warning(
                "ACME: this Python/OpenSSL does not show the ClientHello's ALPN: during a "
                "TLS-ALPN-01 validation (seconds) every client of %s gets the challenge "
                "certificate; --acme-http avoids that",
                ", ".join(self.settings.domains),
            )
        server.set_challenge_responder(self.responder)

    async def start_http(self) -> None:
        """Listen for HTTP-01 validations, when an HTTP port was given."""
        where = self.settings.http
        if where is None:
            return
        self.http_server = HttpChallengeServer()
        self.client.http_tokens = self.http_server.tokens
        host = None if where.host in ("", "0.0.0.0", "::") else where.host
        await self.http_server.start(host, where.port)
        log.info("ACME: answering HTTP-01 validations on http://%s", where)

    async def close(self) -> None:
        """Stop the HTTP-01 listener."""
        if self.http_server is not None:
            await self.http_server.close()

    def reload(self) -> ssl.SSLContext | None:
        """A context for the stored certificate when it differs from the one served."""
        stored = self.store.certificate()
        if stored is None or not self._usable(stored):
            return None
        if self.current is not None and stored.serial == self.current.serial:
            return None
        try:
            ctx = server_context(str(stored.fullchain), str(stored.privkey))
        except ConfigError as exc:
            log.error("ACME: cannot load the stored certificate: %s", exc)
            return None
        self.current = stored
        return ctx

    async def obtain(self) -> StoredCertificate:
        """Ask the CA for a certificate now and store it; AcmeError with the CA's reason."""
        how = (
            f"HTTP-01 on {self.settings.http}"
            if self.settings.http is not None
            else "TLS-ALPN-01 on this server's port"
        )
        log.info(
            "ACME: asking %s for a certificate for %s (%s)",
            self.ca,
            ", ".join(self.settings.domains),
            how,
        )
        started = time.monotonic()
        try:
            fullchain, key = await run_in_thread(self.client.issue)
        except AcmeError:
            raise
        except Exception as exc:
            raise AcmeError(describe_failure(exc, self.settings.directory)) from exc
        stored = self.store.save_certificate(fullchain, key)
        log.info(
            "ACME: certificate for %s issued by %s in %.1f s: valid until %s, renewal at %s; "
            "stored in %s",
            ", ".join(stored.names),
            stored.issuer,
            time.monotonic() - started,
            _when(stored.not_after),
            _when(stored.renew_at),
            self.store.cert_dir,
            extra={
                "event": "acme_issued",
                "domains": list(stored.names),
                "not_after": stored.not_after.isoformat(),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return stored

    async def run(self, install: Callable[[ssl.SSLContext], None]) -> None:
        """Keep a valid certificate forever: obtain, install, sleep until renewal, repeat."""
        delay = self.retry_first
        while True:
            current = self.current
            now = _utcnow()
            if current is None or now >= current.renew_at:
                try:
                    stored = await self.obtain()
                    ctx = server_context(str(stored.fullchain), str(stored.privkey))
                except (AcmeError, ConfigError) as exc:
                    if current is not None and current.not_after > now:
                        until = _when(current.not_after)
                        keep = f"keeping the current certificate (valid until {until})"
                    else:
                        keep = "still serving the temporary self-signed certificate"
                    log.error(
                        "ACME: no certificate for %s from %s: %s; %s; next try in %s",
                        ", ".join(self.settings.domains),
                        self.ca,
                        exc,
                        keep,
                        _duration(delay),
                        extra={"event": "acme_failed", "reason": str(exc)},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_first
                self.current = stored
                install(ctx)
                log.info("ACME: new connections get the new certificate; open sessions keep theirs")
                continue
            # Sleep in slices of at most an hour: wall-clock jumps and suspends happen.
            wait = (current.renew_at - now).total_seconds()
            await asyncio.sleep(min(max(wait, 0.0), 3600.0))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
