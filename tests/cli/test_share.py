"""Share links, QR codes and exported client configs, used by real clients."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import unquote

import yaml

from anytls.cli._share import CertInfo, Endpoint, public_endpoint, share_link
from anytls.core.address import Address
from anytls.uri import parse_uri
from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.certs import make_ca_signed_cert
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_socks5
from tests.helpers.singbox import SingBox

LINK = re.compile(r"share link for user (\S+): (anytls://\S+)")


@async_test
async def test_link_from_the_log_works_with_our_client(tmp_path: Path) -> None:
    port = free_port()
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
    ]
    async with tcp_echo_server() as echo, AnyTLSProcess.server(port, args, tmp_path) as server:
        links = dict(LINK.findall(server.log_text()))
        assert set(links) == {"default", "alice"}
        uri = parse_uri(links["alice"])
        assert (uri.host, uri.port, uri.password, uri.insecure) == (
            "127.0.0.1",
            port,
            "p@ss w/rd",
            True,
        )
        assert unquote(links["alice"].rpartition("#")[2]) == "alice"
        assert parse_uri(links["default"]).password == "plain"
        # --qr: the link and its QR code (Unicode half blocks) on standard output.
        text = server.log_text()
        assert f"user alice: {links['alice']}\n" in text
        assert "▀▀▀▀▀▀▀▀▀▀" in text and "█ ▄▄▄▄▄ █" in text
        # The printed link, as it is, is all the client needs.
        result = await asyncio.to_thread(
            run_cli, "client", "-s", links["alice"], "--check", f"127.0.0.1:{echo[1]}"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout


def test_link_with_a_ca_signed_certificate(tmp_path: Path) -> None:
    _, cert, key = make_ca_signed_cert(tmp_path / "ca", ["proxy.example.com"])
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
    # A verifiable certificate: no insecure, and its name as the SNI for the IP host.
    proxy = yaml.safe_load(result.stdout)["proxies"][0]
    assert proxy["sni"] == "proxy.example.com"
    assert "skip-cert-verify" not in proxy
    endpoint = public_endpoint(Address("0.0.0.0", 443), "proxy.example.com", str(cert))
    assert endpoint == Endpoint("proxy.example.com", 443, None, False)
    assert parse_uri(share_link(endpoint, "u", "pw")).insecure is False


def test_public_endpoint_rules(tmp_path: Path) -> None:
    cert, _ = make_self_signed_cert(tmp_path)
    # Self-signed file: insecure; it names localhost and 127.0.0.1, so no SNI needed.
    assert public_endpoint(Address("127.0.0.1", 1), None, str(cert)) == Endpoint(
        "127.0.0.1", 1, None, True
    )
    # No certificate: generated, insecure. --public-host wins over the listen address.
    assert public_endpoint(Address("0.0.0.0", 2), "vpn.example.org", None) == Endpoint(
        "vpn.example.org", 2, None, True
    )
    guessed = public_endpoint(Address("0.0.0.0", 2), None, None)
    assert guessed.guessed and guessed.host
    info = CertInfo(False, ("*.example.com",), ())
    assert info.covers("a.example.com") and not info.covers("example.com")
    assert not info.covers("a.b.example.com")


@async_test
async def test_exported_singbox_config_carries_traffic(tmp_path: Path) -> None:
    port = free_port()
    server_args = ["--user", "alice:alice-pw", "--user", "bob:bob-pw", "--workers", "1"]
    result = run_cli(
        "server",
        "-l",
        f"127.0.0.1:{port}",
        *server_args,
        "--export",
        "sing-box",
        "--export-user",
        "bob",
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    outbound = config["outbounds"][0]
    assert (outbound["type"], outbound["server"], outbound["server_port"]) == (
        "anytls",
        "127.0.0.1",
        port,
    )
    assert outbound["password"] == "bob-pw" and outbound["tls"]["insecure"] is True
    mixed = free_port()
    config["inbounds"][0]["listen_port"] = mixed
    config["log"]["level"] = "debug"
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


def test_export_errors() -> None:
    result = run_cli("server", "-p", "pw", "--export", "mihomo", "--export-user", "carol")
    assert result.returncode == 2
    assert "--export-user 'carol': no such user (users: default)" in result.stderr
    result = run_cli("server", "-p", "pw", "--export", "clash")
    assert result.returncode == 2
