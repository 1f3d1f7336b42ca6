"""Certificate pinning: the pinned certificate is accepted without CA or name checks, any
other certificate is refused before a single byte of the authentication preface leaves."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from anytls.aio.tls import (
    certificate_sha256,
    generate_self_signed,
    normalise_pin,
    server_context,
)
from anytls.errors import CertificatePinError, ConfigError
from tests.helpers.aio import async_test

PASSWORD = "pin-pw"


def _write_pair(directory: Path, name: str) -> tuple[Path, Path, str]:
    cert_pem, key_pem = generate_self_signed(["anytls.test", "127.0.0.1"])
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return cert, key, certificate_sha256(der)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


FINGERPRINTS = pytest.mark.parametrize("fingerprint", ["chrome", "openssl"])


@FINGERPRINTS
@async_test(timeout=20)
async def test_pinned_self_signed_certificate_is_accepted(tmp_path: Path, fingerprint: str) -> None:
    cert, key, pin = _write_pair(tmp_path, "server")
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    ctx = server_context(str(cert), str(key))
    server = await serve(
        ServerConfig(users={"u": PASSWORD}, allow_private=True), "127.0.0.1", 0, ctx
    )
    port = server.sockets[0].getsockname()[1]
    # Upper case with colons, as `openssl x509 -fingerprint -sha256` prints it.
    printed = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
    config = ClientConfig("127.0.0.1", port, PASSWORD, pin_sha256=printed, fingerprint=fingerprint)
    client = Client(config)
    try:
        reader, writer = await client.open_connection("127.0.0.1", echo_port)
        writer.write(b"pinned")
        assert await reader.readexactly(6) == b"pinned"
        writer.close()
    finally:
        await client.close()
        await server.close()
        echo.close()


@FINGERPRINTS
@async_test(timeout=20)
async def test_other_certificate_gets_no_preface(tmp_path: Path, fingerprint: str) -> None:
    """A man in the middle with its own certificate learns nothing of the credential."""
    _, _, real_pin = _write_pair(tmp_path, "real")
    mitm_cert, mitm_key, _ = _write_pair(tmp_path, "mitm")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(mitm_cert, mitm_key)
    received = bytearray()
    handshakes = asyncio.Event()
    closed = asyncio.Event()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.set()
        try:
            while data := await reader.read(65536):
                received.extend(data)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            closed.set()
            writer.close()

    mitm = await asyncio.start_server(record, "127.0.0.1", 0, ssl=ctx)
    port = mitm.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, PASSWORD, pin_sha256=real_pin, fingerprint=fingerprint)
    client = Client(config)
    try:
        with pytest.raises(CertificatePinError, match="not the pinned one"):
            await client.open_connection("example.com", 80)
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await client.close()
        mitm.close()
    assert handshakes.is_set()  # the TLS handshake did reach the impostor ...
    assert bytes(received) == b""  # ... and not one application byte followed it


def test_pin_forms() -> None:
    pin = "ab" * 32
    assert normalise_pin(pin.upper()) == pin
    assert normalise_pin(":".join(["AB"] * 32)) == pin
    with pytest.raises(ConfigError, match="64 hex digits"):
        normalise_pin("abcd")


def test_insecure_warns_unless_pinned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        Client(ClientConfig("vpn.example.org", 8443, PASSWORD, insecure=True))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "certificate of vpn.example.org:8443 is not verified" in record.getMessage()
    assert "password hash, which is the credential" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Client(ClientConfig("vpn.example.org", 8443, PASSWORD, insecure=True, pin_sha256="ab" * 32))
        Client(ClientConfig("vpn.example.org", 8443, PASSWORD))
    assert caplog.records == []
