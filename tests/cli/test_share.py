"""Share links, QR codes and exported client configs, used by real clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from python_socks import ProxyError

from anytls.certs import CERT_FILE
from anytls.cli._share import CertInfo, Endpoint, public_endpoint, share_link
from anytls.core.address import Address
from anytls.uri import parse_uri
from tests.cli._util import run_cli
from tests.helpers.aio import async_test, wait_until
from tests.helpers.certs import make_ca_signed_cert
from tests.helpers.echo import tcp_echo_server
from tests.helpers.mitm import Impostor
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_socks5
from tests.helpers.singbox import SingBox

LINK = re.compile(r"share link for user (\S+): (anytls://\S+)")


@async_test
async def test_link_from_the_log_works_with_our_client(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    args = [
        "--user",
        "alice:p@ss w/rd",
        "-p",
        "plain",
        "--qr",
        "--workers",
        "1",
        "--log-level",
        "info",
        "--state-dir",
        str(state),
    ]
    async with tcp_echo_server() as echo, AnyTLSProcess.server(port, args, tmp_path) as server:
        links = dict(LINK.findall(server.log_text()))
        assert set(links) == {"default", "alice"}
        uri = parse_uri(links["alice"])
        # No insecure: the link pins the certificate kept in the state directory.
        assert (uri.host, uri.port, uri.password, uri.insecure) == (
            "127.0.0.1",
            port,
            "p@ss w/rd",
            False,
        )
        assert uri.pin_sha256 == _pin_of(state / CERT_FILE)
        assert "insecure" not in links["alice"]
        assert unquote(links["alice"].rpartition("#")[2]) == "alice"
        assert parse_uri(links["default"]).password == "plain"
        # The certificate was made and read in a child: the server never maps the
        # cryptography module (about 8 MiB resident; see anytls.forked).
        assert server.proc is not None
        maps = await asyncio.to_thread(Path(f"/proc/{server.proc.pid}/maps").read_text)
        assert "cryptography" not in maps
        # --qr: the link and its QR code (Unicode half blocks) on standard output.
        text = server.log_text()
        assert f"user alice: {links['alice']}\n" in text
        assert "▀▀▀▀▀▀▀▀▀▀" in text and "█ ▄▄▄▄▄ █" in text
        # The printed link, as it is, is all the client needs.
        result = await asyncio.to_thread(
            run_cli, "client", "-s", links["alice"], "--check", f"127.0.0.1:{echo[1]}"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "certificate pinned" in result.stdout and "OK" in result.stdout
        assert "insecure" not in result.stderr


def _pin_of(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _spki_of(cert: Path) -> str:
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_link_with_a_ca_signed_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = make_ca_signed_cert(tmp_path / "ca", ["proxy.example.com"])
    port = free_port()
    result = run_cli(
        "server",
        "-p",
        "pw",
        "-l",
        f"127.0.0.1:{port}",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--export",
        "mihomo",
    )
    assert result.returncode == 0, result.stderr
    # A private CA the system does not know: pinned; its name as the SNI for the IP host.
    proxy = yaml.safe_load(result.stdout)["proxies"][0]
    assert proxy["sni"] == "proxy.example.com"
    assert proxy["fingerprint"] == _pin_of(cert)
    assert "skip-cert-verify" not in proxy
    # Once the CA is in the store clients verify with, no pin, so renewals keep links.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    endpoint = public_endpoint(Address("0.0.0.0", 443), "proxy.example.com", str(cert), str(key))
    assert endpoint == Endpoint("proxy.example.com", 443, None)
    uri = parse_uri(share_link(endpoint, "u", "pw"))
    assert (uri.insecure, uri.pin_sha256) == (False, None)


def test_public_endpoint_rules(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    # Self-signed file: pinned; it names localhost and 127.0.0.1, so no SNI needed.
    assert public_endpoint(Address("127.0.0.1", 1), None, str(cert), str(key)) == Endpoint(
        "127.0.0.1", 1, None, _pin_of(cert), _spki_of(cert)
    )
    # --public-host wins over the listen address; a name the certificate lacks gets its
    # first name as SNI.
    assert public_endpoint(Address("0.0.0.0", 2), "vpn.example.org", str(cert)) == Endpoint(
        "vpn.example.org", 2, "localhost", _pin_of(cert), _spki_of(cert)
    )
    guessed = public_endpoint(Address("0.0.0.0", 2), None, str(cert), str(key))
    assert guessed.guessed and guessed.host
    info = CertInfo(False, ("*.example.com",), ())
    assert info.covers("a.example.com") and not info.covers("example.com")
    assert not info.covers("a.b.example.com")


def _export(port: int, state: Path, *args: str) -> dict[str, Any]:
    result = run_cli(
        "server",
        "-l",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state),
        *args,
        "--export",
        "sing-box",
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@async_test
async def test_exported_singbox_config_carries_traffic(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    server_args = ["--user", "alice:alice-pw", "--user", "bob:bob-pw", "--workers", "1"]
    # Exported before the server ever ran: the export makes the certificate the server
    # will then use, so the pin holds.
    config = _export(port, state, *server_args, "--export-user", "bob")
    outbound = config["outbounds"][0]
    assert (outbound["type"], outbound["server"], outbound["server_port"]) == (
        "anytls",
        "127.0.0.1",
        port,
    )
    assert outbound["password"] == "bob-pw"
    assert outbound["tls"] == {
        "enabled": True,
        "certificate_public_key_sha256": [_spki_of(state / CERT_FILE)],
    }
    mixed = free_port()
    config["inbounds"][0]["listen_port"] = mixed
    config["log"]["level"] = "debug"
    server_args += ["--state-dir", str(state)]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, server_args, tmp_path / "server") as server,
        SingBox(config, tmp_path / "sing-box"),
    ):
        reader, writer = await open_socks5("127.0.0.1", mixed, *echo)
        payload = bytes(range(256)) * 64
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await server.wait_log(r"session from 127\.0\.0\.1:\d+: user bob")


@async_test
async def test_exported_singbox_config_refuses_a_man_in_the_middle(tmp_path: Path) -> None:
    """The real sing-box with our export meets another self-signed certificate on the
    server's address: it refuses, and the impostor gets no application byte."""
    async with Impostor(tmp_path / "mitm") as mitm:
        config = _export(mitm.port, tmp_path / "state", "-p", "secret")
        mixed = free_port()
        config["inbounds"][0]["listen_port"] = mixed
        async with tcp_echo_server() as echo, SingBox(config, tmp_path / "sing-box") as sb:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ProxyError):
                reader, writer = await open_socks5("127.0.0.1", mixed, *echo)
                writer.write(b"hello")
                await reader.read(1)
                writer.close()
            await sb.wait_log(r"unrecognized remote public key")
    assert mitm.hellos >= 1  # sing-box did reach the impostor ...
    assert mitm.handshakes == 0  # ... refused its certificate inside the handshake ...
    assert bytes(mitm.received) == b""  # ... and sent it nothing


@async_test
async def test_pinned_link_refuses_a_man_in_the_middle(tmp_path: Path) -> None:
    """anytls-client with the server's pinned link, pointed at an impostor."""
    port = free_port()
    server_args = ["-p", "secret", "--state-dir", str(tmp_path / "state"), "--workers", "1"]
    async with AnyTLSProcess.server(port, server_args, tmp_path / "server") as server:
        link = dict(LINK.findall(server.log_text()))["default"]
    async with Impostor(tmp_path / "mitm") as mitm:
        mitm_link = link.replace(f":{port}/", f":{mitm.port}/")
        result = await asyncio.to_thread(
            run_cli, "client", "-s", mitm_link, "--check", "127.0.0.1:9"
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "is not the pinned one" in result.stdout
        assert "a man in the middle" in result.stdout and "nothing was sent" in result.stdout
        # The proxy too: a local client's stream fails, the impostor learns nothing.
        mixed = free_port()
        async with AnyTLSProcess.client(mixed, ["-s", mitm_link], tmp_path / "client") as cli:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ProxyError):
                reader, writer = await open_socks5("127.0.0.1", mixed, "127.0.0.1", 9)
                writer.write(b"hello")
                await reader.read(1)
                writer.close()
            await cli.wait_log(r"is not the pinned one")
        await wait_until(lambda: mitm.ended == mitm.connections, timeout=5)
    assert mitm.hellos >= 2  # both reached the impostor's TLS ...
    assert bytes(mitm.received) == b""  # ... and sent it nothing after the handshake


def test_export_errors() -> None:
    result = run_cli("server", "-p", "pw", "--export", "mihomo", "--export-user", "carol")
    assert result.returncode == 2
    assert "--export-user 'carol': no such user (users: default)" in result.stderr
    result = run_cli("server", "-p", "pw", "--export", "clash")
    assert result.returncode == 2
