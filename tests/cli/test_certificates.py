"""Certificates end to end: the generated one survives restarts and is the same in every
worker, a new name makes a new one (logged), --ca verifies a private CA, and insecure
still works but warns."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from pathlib import Path

from anytls.certs import CERT_FILE
from anytls.uri import parse_uri
from tests.cli._util import run_cli
from tests.helpers.certs import make_ca_signed_cert
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess

LINK = re.compile(r"share link for user default: (anytls://\S+)")


def _served_pins(port: int, count: int) -> set[str]:
    """SHA-256 of the certificate presented in ``count`` separate handshakes."""

    async def one() -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return hashlib.sha256(der).hexdigest()

    async def run() -> set[str]:
        return set(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def _pin(server: AnyTLSProcess) -> str:
    match = LINK.search(server.log_text())
    assert match, server.log_text()
    pin = parse_uri(match.group(1)).pin_sha256
    assert pin is not None
    return pin


def test_generated_certificate_survives_restarts_and_is_shared_by_workers(
    tmp_path: Path,
) -> None:
    port = free_port()
    state = tmp_path / "state"
    args = ["-p", "pw", "--state-dir", str(state), "--log-level", "info"]
    with AnyTLSProcess.server(port, [*args, "--workers", "2"], tmp_path / "a") as server:
        pin = _pin(server)
        assert server.log_lines(r"made a self-signed certificate for 127\.0\.0\.1, localhost")
        stored = hashlib.sha256(
            ssl.PEM_cert_to_DER_cert((state / CERT_FILE).read_text())
        ).hexdigest()
        assert pin == stored
        # Twenty handshakes over both workers (SO_REUSEPORT spreads them): one certificate.
        assert _served_pins(port, 20) == {pin}
    with AnyTLSProcess.server(port, [*args, "--workers", "1"], tmp_path / "b") as server:
        assert _pin(server) == pin
        assert not server.log_lines(r"made a")
    # A name the stored certificate lacks: a new one, said loudly (links change).
    renamed = [*args, "--workers", "1", "--public-host", "vpn.example.org"]
    with AnyTLSProcess.server(port, renamed, tmp_path / "c") as server:
        assert server.log_lines(
            r"WARNING.*made a new self-signed certificate \(the stored certificate does not "
            r"name vpn\.example\.org\): clients need the new share link"
        )
        new_pin = _pin(server)
        assert new_pin != pin
        assert _served_pins(port, 1) == {new_pin}


def test_ca_flag_verifies_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_signed_cert(tmp_path / "pki", ["proxy.example.com"])
    port = free_port()
    server_args = ["-p", "pw", "--cert", str(cert), "--key", str(key), "--workers", "1"]
    client = ["-s", f"127.0.0.1:{port}", "-p", "pw", "--sni", "proxy.example.com"]
    config = tmp_path / "client.toml"
    config.write_text(f'ca = "{ca}"\n')

    async def main() -> None:
        async with (
            tcp_echo_server() as echo,
            AnyTLSProcess.server(port, server_args, tmp_path / "server"),
        ):
            target = f"{echo[0]}:{echo[1]}"
            for extra in (["--ca", str(ca)], ["-c", str(config)]):
                result = await asyncio.to_thread(
                    run_cli, "client", *client, *extra, "--check", target
                )
                assert result.returncode == 0, result.stdout + result.stderr
                assert "certificate verified" in result.stdout and "OK" in result.stdout
            # Without it the system's store does not know the CA: refused, with a hint.
            result = await asyncio.to_thread(run_cli, "client", *client, "--check", target)
            assert result.returncode == 1
            assert "failed verification" in result.stdout and "--ca" in result.stdout
            missing = await asyncio.to_thread(
                run_cli, "client", *client, "--ca", str(tmp_path / "nope.pem"), "--check"
            )
            assert missing.returncode == 2
            assert "is not a readable file of PEM CA certificates" in missing.stderr

    asyncio.run(main())


def test_insecure_still_works_but_warns(tmp_path: Path) -> None:
    port = free_port()
    server_args = ["-p", "pw", "--state-dir", str(tmp_path / "state"), "--workers", "1"]

    async def main() -> None:
        async with (
            tcp_echo_server() as echo,
            AnyTLSProcess.server(port, server_args, tmp_path / "server"),
        ):
            link = f"anytls://pw@127.0.0.1:{port}/?insecure=1"
            result = await asyncio.to_thread(
                run_cli, "client", "-s", link, "--check", f"{echo[0]}:{echo[1]}"
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "certificate NOT verified (insecure)" in result.stdout
            warning = [ln for ln in result.stderr.splitlines() if "WARNING" in ln]
            assert len(warning) == 1, result.stderr
            assert f"certificate of 127.0.0.1:{port} is not verified" in warning[0]
            assert "man in the middle" in warning[0]
            assert "password hash, which is the credential" in warning[0]

    asyncio.run(main())
