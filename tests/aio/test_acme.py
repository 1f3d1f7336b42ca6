"""ACME pieces without a CA: the TLS-ALPN-01 responder on a real server, the challenge
certificate, the HTTP-01 responder, the settings checks. (Issuance against pebble is in
tests/cli/test_acme.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from anytls.aio.acme import (
    ACME_TLS_ALPN,
    AcmeStore,
    HttpChallengeServer,
    TlsAlpnResponder,
    tls_alpn_certificate,
)
from anytls.aio.server import ServerConfig, serve
from anytls.aio.tls import server_context
from anytls.cli import server as server_cli
from anytls.errors import ConfigError
from tests.helpers.aio import async_test

DOMAIN = "proxy.test"
KEY_AUTHORIZATION = "token-abc.thumbprint-xyz"
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


async def handshake(
    port: int, name: str, alpn: list[str] | None
) -> tuple[x509.Certificate, str | None, bool]:
    """(certificate, negotiated ALPN, closed by the server right after the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    ssl_obj = writer.get_extra_info("ssl_object")
    cert = x509.load_der_x509_certificate(ssl_obj.getpeercert(True))
    selected = ssl_obj.selected_alpn_protocol()
    try:
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except (TimeoutError, ConnectionError):
        closed = False
    writer.close()
    return cert, selected, closed


@async_test(timeout=20)
async def test_only_a_validation_handshake_gets_the_challenge_certificate(tmp_path: Path) -> None:
    server = await serve(
        ServerConfig(users={"u": "pw"}), "127.0.0.1", 0, server_context(hosts=[DOMAIN])
    )
    port = server.sockets[0].getsockname()[1]
    store = AcmeStore(tmp_path, "https://ca.example/directory", [DOMAIN])
    responder = TlsAlpnResponder(store, [DOMAIN])
    assert responder.watch(server.ssl_context)  # the ClientHello's ALPN is visible here
    server.set_challenge_responder(responder)
    try:
        normal, _, _ = await handshake(port, DOMAIN, ["h2", "http/1.1"])
        path = store.challenge_path(DOMAIN)
        path.parent.mkdir(parents=True)
        path.write_bytes(tls_alpn_certificate(DOMAIN, KEY_AUTHORIZATION))

        cert, selected, closed = await handshake(port, DOMAIN, [ACME_TLS_ALPN])
        assert selected == ACME_TLS_ALPN and closed
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        assert ext.critical
        digest = hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
        assert ext.value.public_bytes() == b"\x04\x20" + digest  # DER OCTET STRING
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [DOMAIN]

        # During the validation every other client keeps the real certificate.
        for name, alpn in (
            (DOMAIN, ["h2", "http/1.1"]),
            (DOMAIN, None),
            ("other.test", [ACME_TLS_ALPN]),
        ):
            other, selected, _ = await handshake(port, name, alpn)
            assert other == normal and selected != ACME_TLS_ALPN, (name, alpn)

        path.unlink()  # validation over
        after, selected, _ = await handshake(port, DOMAIN, [ACME_TLS_ALPN])
        assert after == normal and selected is None
    finally:
        await server.close()


@async_test(timeout=10)
async def test_http01_responder_serves_pending_tokens_only() -> None:
    responder = HttpChallengeServer()
    await responder.start("127.0.0.1", 0)
    assert responder._server is not None
    port = responder._server.sockets[0].getsockname()[1]
    responder.tokens["tok1"] = KEY_AUTHORIZATION

    async def get(path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data

    try:
        ok = await get("/.well-known/acme-challenge/tok1")
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(KEY_AUTHORIZATION.encode())
        for path in ("/.well-known/acme-challenge/tok2", "/.well-known/acme-challenge/"):
            assert (await get(path)).startswith(b"HTTP/1.1 404"), path
        # Anything else goes to https://, as on the port 80 of an HTTPS site.
        moved = await get("/some/page?q=1")
        assert moved.startswith(b"HTTP/1.1 301")
        assert f"location: https://{DOMAIN}/some/page?q=1\r\n".encode() in moved.lower()
    finally:
        await responder.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--acme", "*.example.com"], "wildcard"),
        (["--acme", "not a name"], "is not a DNS name"),
        (["--acme", "a.example.com", "--cert", "c.pem"], "leave out --cert"),
        (["--acme-http", "80"], "--acme-http needs --acme"),
        (["--acme", "a.example.com", "--acme-directory", "letsencrypt"], "is not a URL"),
        (["--acme", "a.example.com", "--acme-ca", "/nonexistent.pem"], "no such file"),
    ],
)
def test_bad_acme_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        args = server_cli.load_args(["-p", "pw", *argv])
        server_cli.acme_settings(args, server_cli._listen(args.l))


def test_acme_settings(tmp_path: Path) -> None:
    argv = ["-p", "pw", "-l", "0.0.0.0:443", "--acme", "A.example.com.", "--acme", "b.example.com"]
    args = server_cli.load_args([*argv, "--acme-http", "80", "--state-dir", str(tmp_path)])
    settings = server_cli.acme_settings(args, server_cli._listen(args.l))
    assert settings.domains == ("a.example.com", "b.example.com")
    assert settings.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert str(settings.http) == "0.0.0.0:80" and settings.challenge == "http-01"
    store = AcmeStore(settings.state_dir, settings.directory, settings.domains)
    assert (
        store.fullchain
        == tmp_path / "acme/acme-v02.api.letsencrypt.org/a.example.com/fullchain.pem"
    )


def test_share_links_and_exports_name_the_acme_domain_without_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    args = server_cli.load_args(
        ["-p", "pw", "-l", "0.0.0.0:443", "--acme", "proxy.example.com", "--export", "sing-box"]
    )
    server_cli.export(args)
    outbound = json.loads(capsys.readouterr().out)["outbounds"][0]
    assert outbound["server"] == "proxy.example.com" and outbound["server_port"] == 443
    assert "insecure" not in outbound["tls"]


def test_unwritable_state_dir_is_refused_at_start(tmp_path: Path) -> None:
    from anytls.aio.acme import AcmeManager, AcmeSettings

    blocker = tmp_path / "file"
    blocker.write_text("")
    manager = AcmeManager(AcmeSettings(("proxy.example.com",), blocker / "state"))
    with pytest.raises(ConfigError, match="give a writable --state-dir"):
        manager.initial_context()


@async_test(timeout=20)
async def test_without_the_alpn_hook_the_name_alone_picks_the_challenge(tmp_path: Path) -> None:
    """Where the ClientHello's ALPN cannot be read, a pending challenge answers every
    handshake for its name (documented fallback) and none once it is over."""
    server = await serve(
        ServerConfig(users={"u": "pw"}), "127.0.0.1", 0, server_context(hosts=[DOMAIN])
    )
    port = server.sockets[0].getsockname()[1]
    store = AcmeStore(tmp_path, "https://ca.example/directory", [DOMAIN])
    server.set_challenge_responder(TlsAlpnResponder(store, [DOMAIN]))  # no watch()
    try:
        normal, _, _ = await handshake(port, DOMAIN, None)
        path = store.challenge_path(DOMAIN)
        path.parent.mkdir(parents=True)
        path.write_bytes(tls_alpn_certificate(DOMAIN, KEY_AUTHORIZATION))
        cert, _, _ = await handshake(port, DOMAIN, ["h2"])
        assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
        other, _, _ = await handshake(port, "other.test", [ACME_TLS_ALPN])
        assert other == normal
        path.unlink()
        assert (await handshake(port, DOMAIN, [ACME_TLS_ALPN]))[0] == normal
    finally:
        await server.close()


@async_test(timeout=20)
async def test_an_unreachable_ca_is_named(tmp_path: Path) -> None:
    from anytls.aio.acme import AcmeManager, AcmeSettings
    from anytls.errors import AcmeError
    from tests.helpers.net import free_port

    directory = f"https://127.0.0.1:{free_port()}/dir"  # nothing listens there
    manager = AcmeManager(AcmeSettings((DOMAIN,), tmp_path, directory=directory))
    with pytest.raises(AcmeError, match=f"cannot reach the CA at {directory}"):
        await manager.obtain()
    assert manager.store.certificate() is None


@async_test(timeout=20)
async def test_a_ca_with_an_unknown_certificate_suggests_acme_ca(tmp_path: Path) -> None:
    from anytls.aio.acme import AcmeManager, AcmeSettings
    from anytls.errors import AcmeError

    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    tls = await asyncio.start_server(
        nothing, "127.0.0.1", 0, ssl=server_context(hosts=["127.0.0.1"])
    )
    directory = f"https://127.0.0.1:{tls.sockets[0].getsockname()[1]}/dir"
    manager = AcmeManager(AcmeSettings((DOMAIN,), tmp_path, directory=directory))
    try:
        with pytest.raises(AcmeError, match=r"certificate verify failed.*root with --acme-ca"):
            await manager.obtain()
    finally:
        tls.close()
