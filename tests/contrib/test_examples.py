"""The runnable examples the documentation shows (examples/*.py, included in docs/ as is,
excerpted in the README): a server in your program (``anytls.serve``), NTP and DNS with
dnspython's async API over ``anytls.open_udp`` (via our server and sing-box), and the
sans-IO ``Session`` driven by a blocking socket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import re
import signal
import ssl
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import cast
from urllib.parse import urlsplit

import pytest

from anytls import Client, ClientConfig, StreamOpenError
from tests.contrib.tunnels import KINDS, PASSWORD, anytls_server
from tests.helpers.aio import async_test
from tests.helpers.dnsd import dns_server, expected_a, expected_aaaa, expected_txt
from tests.helpers.echo import refused_port, tcp_echo_server
from tests.helpers.httpd import HELLO, http_server
from tests.helpers.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


EXAMPLES = ["server_in_program", "ntp_over_anytls", "dns_over_anytls", "sans_io"]
#: What a code block shows when it is about the API these examples cover.
SHOWN_BY_EXAMPLES = re.compile(r"\b(serve|open_udp)\(|\bSession\b")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.M | re.S)


def test_docs_include_the_examples() -> None:
    library = (ROOT / "docs" / "library.md").read_text()
    for example in EXAMPLES:
        assert f'--8<-- "examples/{example}.py"' in library, example
    # Any other block there about serve, open_udp or Session would be untested code.
    assert [b for b in python_blocks(library) if SHOWN_BY_EXAMPLES.search(b)] == []


@pytest.mark.parametrize(
    "name", ["dns_over_anytls", "ntp_over_anytls", "sans_io", "server_in_program"]
)
def test_examples_print_their_usage_without_arguments(name: str) -> None:
    for argv in ([], ["--help"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / f"{name}.py"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"python {name}.py " in result.stderr  # the docstring's usage line


def test_readme_snippets_are_excerpts_of_the_examples() -> None:
    """The README's snippets for serve, open_udp and the sans-IO Session are copied from
    the example files the tests below run: a change there that the README misses fails."""
    readme = (ROOT / "README.md").read_text()
    examples = {name: (ROOT / "examples" / f"{name}.py").read_text() for name in EXAMPLES}
    shown = [b for b in python_blocks(readme) if SHOWN_BY_EXAMPLES.search(b)]
    assert len(shown) >= 3, shown  # serve, open_udp, Session
    for block in shown:
        assert any(block in text for text in examples.values()), block


@pytest.mark.parametrize("kind", KINDS)
@async_test
async def test_dns_example(kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    example = load_example("dns_over_anytls")
    async with dns_server() as dnsd, anytls_server(kind, tmp_path, cert_pair) as link:
        for name, rdtype in [("a.example.test.", "A"), ("b.example.test.", "AAAA")]:
            response = await example.resolve(link, "127.0.0.1", name, rdtype, port=dnsd.port)
            (rrset,) = response.answer
            want = expected_a(name) if rdtype == "A" else expected_aaaa(name)
            assert [r.address for r in rrset] == [want]
        # a 2.4 KB answer arrives whole through UDP over TCP
        response = await example.resolve(link, "127.0.0.1", "t.test.", "TXT", port=dnsd.port)
        (rrset,) = response.answer
        assert list(next(iter(rrset)).strings) == expected_txt("t.test.")
        assert dnsd.stats.datagrams == 3


@async_test
async def test_sans_io_example(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    example = load_example("sans_io")
    async with anytls_server("ours", tmp_path, cert_pair) as link:
        server = urlsplit(link)
        assert server.hostname is not None and server.port is not None
        shown = await asyncio.to_thread(ssl.get_server_certificate, (server.hostname, server.port))
        pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(shown)).hexdigest()
        with http_server() as web:
            request = f"GET /hello HTTP/1.0\r\nHost: localhost:{web.port}\r\n\r\n".encode()

            def fetch(pin: str, host: str, port: int) -> bytes:
                assert server.hostname is not None and server.port is not None
                return example.fetch(  # type: ignore[no-any-return]
                    server.hostname, server.port, PASSWORD, pin, host, port, request
                )

            answer = await asyncio.to_thread(fetch, pin, "localhost", web.port)
            assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(HELLO)
            # the pin may be written with colons and in capitals, as in share links
            colons = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
            assert await asyncio.to_thread(fetch, colons, "localhost", web.port) == answer
            with pytest.raises(example.StreamOpenError, match="refused"):
                await asyncio.to_thread(fetch, pin, "127.0.0.1", refused_port())
            # another certificate (a man in the middle, say): refused before the password
            with pytest.raises(example.CertificatePinError, match="not the pinned server"):
                await asyncio.to_thread(fetch, "00" * 32, "localhost", web.port)
            assert len(web.requests) == 2  # the two fetches that passed the pin check


@async_test
async def test_server_in_program_example(cert_pair: tuple[Path, Path]) -> None:
    example = load_example("server_in_program")
    cert, key = (str(p) for p in cert_pair)
    server = await example.start(cert, key, {"alice": "pw"}, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, "pw", ca_file=cert)  # verified, not insecure
    async with tcp_echo_server() as echo, Client(config) as client:
        reader, writer = await client.open_connection(*echo)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
    assert server.sessions_accepted == 1
    assert await server.shutdown(grace=1) == 0


@async_test
async def test_server_in_program_example_as_a_program(cert_pair: tuple[Path, Path]) -> None:
    """Run as a script: it serves, refuses loopback destinations (the safe default the
    docstring states), and SIGTERM stops it cleanly."""
    cert, key = (str(p) for p in cert_pair)
    port = free_port()
    script = ROOT / "examples" / "server_in_program.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cert, key, str(port), "alice:pw", "bob:pw2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line == f"serving 2 user(s) on port {port}\n".encode()
        await wait_port("127.0.0.1", port)
        config = ClientConfig("127.0.0.1", port, "pw2", ca_file=cert)
        async with tcp_echo_server() as echo, Client(config) as client:
            with pytest.raises(StreamOpenError, match="not allowed"):
                await client.open_connection(*echo)
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 10)
        assert rest == b"stopped (0 stream(s) cut off)\n"
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


#: The time the test NTP server gives: 2030-01-02 03:04:05.5 UTC.
NTP_NOW = datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)


@contextlib.asynccontextmanager
async def ntp_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback NTP server answering every 48-byte client request with NTP_NOW."""
    requests: list[bytes] = []
    since_1900 = (NTP_NOW - datetime(1900, 1, 1, tzinfo=UTC)).total_seconds()
    transmit = struct.pack("!II", int(since_1900), int(since_1900 % 1 * 2**32))

    class Ntp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            requests.append(data)
            if len(data) == 48 and data[0] & 7 == 3:  # mode 3: client
                # LI 0, version 4, mode 4 (server), stratum 1; the client's transmit
                # timestamp as the originate one; receive = transmit = NTP_NOW
                head = bytes([0x24, 1, 0, 0xEC]) + bytes(20)
                self.transport.sendto(head + data[40:48] + transmit + transmit, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Ntp, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1], requests
    finally:
        transport.close()


@pytest.mark.parametrize("kind", KINDS)
@async_test
async def test_ntp_example(kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    example = load_example("ntp_over_anytls")
    async with ntp_server() as (port, requests), anytls_server(kind, tmp_path, cert_pair) as link:
        assert await example.ntp_time(link, "127.0.0.1", port) == NTP_NOW
        assert requests == [b"\x23" + bytes(47)]  # one NTP v4 client request
        # a name is resolved by the AnyTLS server (connect mode)
        assert await example.ntp_time(link, "localhost", port) == NTP_NOW
