"""``anytls-server --acme``: certificates from a real ACME CA (pebble, real validation).

Every test starts its own pebble whose validation ports are the server's: TLS-ALPN-01
connects to the server's own listening port, HTTP-01 to ``--acme-http``. The issued
certificates are checked as clients see them: verified against pebble's root of the run.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from anytls.aio.client import Client, ClientConfig
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import tcp_echo_server
from tests.helpers.interop import socks_echo_check
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.pebble import PebbleCA
from tests.helpers.singbox import SingBox, anytls_client_config

DOMAIN = "proxy.test"
PASSWORD = "acme-pw"
ISSUED = r"ACME: certificate for proxy\.test issued by Pebble Intermediate CA"
INSTALLED = "ACME: new connections get the new certificate"


def acme_server(
    port: int,
    ca: PebbleCA,
    workdir: Path,
    *extra: str,
    domain: str = DOMAIN,
    workers: int = 1,
    name: str = "anytls-server",
) -> AnyTLSProcess:
    """Our server asking ``ca`` for a certificate for ``domain``."""
    args = [
        *("-p", PASSWORD),
        *("--acme", domain, "--acme-email", f"ops@{domain}"),
        *("--acme-directory", ca.directory, "--acme-ca", str(ca.api_ca)),
        *("--state-dir", str(workdir / "state"), "--workers", str(workers)),
        *("--stats-interval", "0"),
        *extra,
    ]
    return AnyTLSProcess.server(port, args, workdir, name=name)


async def served_certificate(port: int, root: Path | None) -> x509.Certificate:
    """The certificate a new TLS connection for DOMAIN gets (verified when ``root``)."""
    if root is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(root))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=DOMAIN)
    der = writer.get_extra_info("ssl_object").getpeercert(True)
    writer.close()
    return x509.load_der_x509_certificate(der)


async def installed(srv: AnyTLSProcess, count: int = 1, timeout: float = 20) -> None:  # noqa: ASYNC109
    """Wait until the server has put its ``count``-th ACME certificate in service."""
    await wait_until(lambda: len(srv.log_lines(INSTALLED)) >= count, timeout=timeout)
    assert len(srv.log_lines(INSTALLED)) >= count, srv.log_text()
    assert len(srv.log_lines(ISSUED)) >= count


def issuer_name(cert: x509.Certificate) -> str:
    return str(cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def verifying_client(port: int, root: Path) -> Client:
    """An AnyTLS client that verifies the server against pebble's root (no pin, no insecure)."""
    return Client(ClientConfig("127.0.0.1", port, PASSWORD, sni=DOMAIN, ca_file=str(root)))


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), 5) == data


async def save_root(ca: PebbleCA, tmp_path: Path) -> Path:
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(await asyncio.to_thread(ca.root_pem))
    return root


@async_test(timeout=50)
async def test_first_certificate_by_tls_alpn_then_reused_after_restart(tmp_path: Path) -> None:
    port = free_port()
    async with PebbleCA(tmp_path, tls_port=port) as ca, tcp_echo_server() as echo:
        root = await save_root(ca, tmp_path)
        async with acme_server(port, ca, tmp_path) as srv:
            await srv.wait_log("serving a temporary self-signed one")
            # Links name the domain and need neither a pin nor insecure: clients verify.
            assert srv.log_lines(
                rf"share link for user default: anytls://{PASSWORD}@proxy\.test:{port}/#default"
            )
            await installed(srv)
            assert srv.log_lines("answered an ACME TLS-ALPN-01 validation")
            cert = await served_certificate(port, root)
            assert issuer_name(cert).startswith("Pebble Intermediate CA")
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
            client = verifying_client(port, root)
            try:
                reader, writer = await client.open_connection(*echo)
                await roundtrip(reader, writer, b"through a CA-issued certificate")
                writer.close()
            finally:
                await client.close()
            # A reload (SIGHUP) keeps the ACME certificate.
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGHUP)
            await srv.wait_log("reloaded")
            assert (await served_certificate(port, root)).serial_number == cert.serial_number
        store = tmp_path / "state" / "acme" / f"127.0.0.1_{ca.pebble.port}"
        for path in (store / "account.key", store / DOMAIN / "privkey.pem"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"BEGIN CERTIFICATE" in (store / DOMAIN / "fullchain.pem").read_bytes()

        # A restart serves the stored certificate at once and does not ask the CA.
        async with acme_server(port, ca, tmp_path, name="restarted") as srv:
            await srv.wait_log("ACME: using the stored certificate for proxy.test")
            again = await served_certificate(port, root)
            assert again.serial_number == cert.serial_number
            assert not srv.log_lines("ACME: asking")
            assert not srv.log_lines("temporary self-signed")


@async_test(timeout=50)
async def test_first_certificate_by_http01_verified_by_sing_box_too(tmp_path: Path) -> None:
    port, http_port, mixed_port = free_port(), free_port(), free_port()
    async with (
        PebbleCA(tmp_path, tls_port=port, http_port=http_port) as ca,
        tcp_echo_server() as echo,
    ):
        root = await save_root(ca, tmp_path)
        async with acme_server(port, ca, tmp_path, "--acme-http", f"127.0.0.1:{http_port}") as srv:
            await installed(srv)
            assert srv.log_lines("answered an ACME HTTP-01 validation")
            assert not srv.log_lines("TLS-ALPN-01 validation")
            cert = await served_certificate(port, root)
            assert issuer_name(cert).startswith("Pebble Intermediate CA")
            # Go's TLS (sing-box) verifies the served chain against pebble's root too.
            config = anytls_client_config(
                mixed_port, port, PASSWORD, DOMAIN, insecure=False, ca_cert=root
            )
            async with SingBox(config, tmp_path / "sing-box"):
                await socks_echo_check(mixed_port, *echo, 4096)
            # Anything but a pending token is 404.
            url = f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/unknown-token"
            with pytest.raises(urllib.error.HTTPError) as caught:
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
            assert caught.value.code == 404


@async_test(timeout=60)
async def test_renewal_while_a_stream_is_open_then_a_failed_renewal(tmp_path: Path) -> None:
    """10-second certificates: renewed after about 6.7 s while a stream keeps flowing; then
    a renewal whose validation cannot connect is reported with the CA's reason and the
    server keeps the certificate it has."""
    port = free_port()
    async with (
        PebbleCA(tmp_path, tls_port=port, validity=10) as ca,
        tcp_echo_server() as echo,
        acme_server(port, ca, tmp_path) as srv,
    ):
        root = await save_root(ca, tmp_path)
        await installed(srv)
        first = await served_certificate(port, root)
        client = verifying_client(port, root)
        pumping: asyncio.Task[None] | None = None
        try:
            reader, writer = await client.open_connection(*echo)
            rounds = 0
            stop = asyncio.Event()

            loop = asyncio.get_running_loop()
            gaps: list[float] = []

            async def pump() -> None:
                nonlocal rounds
                last = loop.time()
                while not stop.is_set():
                    await roundtrip(reader, writer, b"x" * 1000)
                    rounds += 1
                    gaps.append(loop.time() - last)
                    last = loop.time()
                    await asyncio.sleep(0.02)  # pacing the traffic, not waiting for a state

            pumping = asyncio.create_task(pump())
            await installed(srv, 2, timeout=15)
            before = rounds
            second = await served_certificate(port, root)
            assert second.serial_number != first.serial_number
            assert second.not_valid_after_utc > first.not_valid_after_utc
            # The stream opened on the first certificate's session keeps flowing.
            await wait_until(lambda: rounds >= before + 5, timeout=5)
            assert rounds >= before + 5 and not pumping.done()

            # The next renewal fails: the domain now points where nothing listens.
            ca.set_address(DOMAIN, "127.0.0.2")
            line = await srv.wait_log(r"ERROR anytls\.acme: ACME: no certificate", timeout=15)
            # The CA's own words: its detail and its problem type.
            assert "proxy.test: tls-alpn-01 failed: Failed to connect to 127.0.0.2" in line
            assert "(urn:ietf:params:acme:error:" in line
            assert "keeping the current certificate" in line
            installs = len(srv.log_lines(INSTALLED))
            third = await served_certificate(port, root)
            if installs == 2:
                assert third.serial_number == second.serial_number, srv.log_text()
            else:
                # On a loaded machine issuing the second certificate can take so long that
                # its renewal is already due when it is installed, and that renewal may
                # succeed before the domain moves: the failed one is the next.
                assert third.serial_number not in (first.serial_number, second.serial_number), (
                    srv.log_text()
                )
            # Kept, not replaced: still the one served, nothing installed since the failure.
            await asyncio.sleep(0.5)  # a window for a wrong install to show, not a state wait
            assert (await served_certificate(port, root)).serial_number == third.serial_number
            assert len(srv.log_lines(INSTALLED)) == installs
            stop.set()
            await pumping
            # No stall either: each issuance holds the CA's answers for over a second
            # (finalization polls after 1 s), in a thread, never in the event loop.
            assert max(gaps) < 1.0, f"the stream stalled for {max(gaps):.2f} s"
            await roundtrip(reader, writer, b"still here")
            writer.close()
            assert srv.returncode is None
        finally:
            if pumping is not None and not pumping.done():
                pumping.cancel()
            await client.close()


@async_test(timeout=40)
async def test_failed_first_issuance_is_reported_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with PebbleCA(tmp_path, tls_port=port) as ca:
        ca.set_address("unreachable.test", "127.0.0.2")
        async with acme_server(port, ca, tmp_path, domain="unreachable.test") as srv:
            line = await srv.wait_log(r"ERROR anytls\.acme: ACME: no certificate", timeout=20)
            assert "unreachable.test: tls-alpn-01 failed: Failed to connect to 127.0.0.2" in line
            assert "(urn:ietf:params:acme:error:" in line
            assert "still serving the temporary self-signed certificate" in line
            assert "next try in 1 min" in line
            cert = await served_certificate(port, None)
            assert cert.issuer == cert.subject  # the temporary one
            assert srv.returncode is None


@async_test(timeout=50)
async def test_workers_one_process_asks_every_process_serves(tmp_path: Path) -> None:
    port = free_port()
    async with PebbleCA(tmp_path, tls_port=port) as ca:
        root = await save_root(ca, tmp_path)
        async with acme_server(port, ca, tmp_path, workers=2) as srv:
            await installed(srv)
            await srv.wait_log("loaded the new certificate from the state directory")
            # New connections land on either process (SO_REUSEPORT): all verify.
            serials = {(await served_certificate(port, root)).serial_number for _ in range(16)}
            assert len(serials) == 1
            assert len(srv.log_lines("ACME: asking")) == 1
