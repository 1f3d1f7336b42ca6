"""The client's ClientHello is the browser's: JA4 equal to the installed Chromium's,
captured in the same run, with GREASE and a shuffled extension order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from anytls.aio import impersonate
from anytls.aio.client import Client, ClientConfig
from anytls.aio.impersonate import (
    check_fingerprint,
    fingerprint_names,
    library,
    resolve_target,
)
from anytls.aio.server import ServerConfig, serve
from anytls.aio.tls import generate_self_signed, server_context
from anytls.core.address import Address
from anytls.errors import ConfigError, ImpersonationError, SessionClosedError
from tests.helpers.aio import async_test, wait_until
from tests.helpers.ja4 import ClientHello, HelloCapture, is_grease, ja4

ROOT = Path(__file__).resolve().parents[2]
NAME = "anytls.test"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _pinned_curl_cffi() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    line = next(line for line in text.splitlines() if '"curl_cffi==' in line)
    return line.split("==", 1)[1].split('"', 1)[0]


def test_curl_cffi_is_the_pinned_version_with_the_symbols_we_use() -> None:
    assert metadata.version("curl_cffi") == _pinned_curl_cffi()
    curl = library()
    # Not declared by curl_cffi's cffi module: bound from the shared library ourselves.
    assert callable(curl.send) and callable(curl.recv) and callable(curl.getinfo)
    # curl_cffi's C callbacks that drive our multi handle.
    assert curl.lib.socket_function and curl.lib.timer_function
    assert resolve_target("chrome").startswith("chrome")
    assert resolve_target("chrome") != "chrome"  # the alias is resolved, never passed bare


def test_unknown_fingerprint_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown fingerprint 'netscape'.*chrome.*openssl"):
        check_fingerprint("netscape")
    with pytest.raises(ConfigError, match="unknown fingerprint"):
        Client(ClientConfig("127.0.0.1", 1, "pw", fingerprint="netscape"))
    assert {"openssl", "chrome", "firefox", "safari"} <= set(fingerprint_names())


async def _our_hellos(count: int, fingerprint: str = "chrome") -> list[ClientHello]:
    async with HelloCapture() as capture:
        for _ in range(count):
            config = ClientConfig(
                "127.0.0.1", capture.port, "pw", sni=NAME, insecure=True, fingerprint=fingerprint
            )
            async with Client(config) as client:
                with pytest.raises(SessionClosedError):
                    await client.open_stream(Address("127.0.0.1", 9))
        await capture.wait_for(count)
        return capture.hellos


async def _chromium_hello(tmp: Path) -> ClientHello:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/test installs it)"
    async with HelloCapture() as capture:
        proc = await asyncio.create_subprocess_exec(
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp}",
            f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
            f"https://{NAME}:{capture.port}/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            await capture.wait_for(1, timeout=60)
        finally:
            # Chromium's own children (zygote, renderer, network) share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        return capture.hellos[0]


def _order(hello: ClientHello) -> list[int]:
    return [e for e in hello.extensions if not is_grease(e)]


@async_test(timeout=90)
async def test_client_hello_is_chromiums(tmp_path: Path) -> None:
    ours = await _our_hellos(2)
    theirs = await _chromium_hello(tmp_path / "chromium-profile")
    print(
        f"JA4 ours {ja4(ours[0])} / {ja4(ours[1])} ({ours[0].size}/{ours[1].size} bytes), "
        f"chromium {ja4(theirs)} ({theirs.size} bytes)"
    )
    assert ja4(ours[0]) == ja4(theirs)
    assert ja4(ours[1]) == ja4(theirs)
    for hello in (*ours, theirs):
        assert hello.sni == NAME
        assert any(is_grease(c) for c in hello.ciphers)
        assert any(is_grease(e) for e in hello.extensions)
    # Chrome permutes its extensions per connection: so must we.
    assert _order(ours[0]) != _order(ours[1])
    assert sorted(_order(ours[0])) == sorted(_order(ours[1]))
    # The same size class: ~2 KB with the ML-KEM key share (OpenSSL's is 512 bytes); the
    # GREASE ECH payload's length varies per connection, by up to about 100 bytes.
    for hello in ours:
        assert abs(hello.size - theirs.size) < 256, (hello.size, theirs.size)


@async_test(timeout=30)
async def test_another_browser_profile() -> None:
    (chrome,) = await _our_hellos(1)
    (firefox,) = await _our_hellos(1, "firefox")
    assert ja4(firefox) != ja4(chrome)
    assert ja4(firefox).startswith("t13d") and firefox.sni == NAME
    assert not any(is_grease(c) for c in firefox.ciphers)  # Firefox sends no GREASE


@async_test(timeout=30)
async def test_openssl_fingerprint_is_pythons_own_hello() -> None:
    async with HelloCapture() as capture:
        config = ClientConfig(
            "127.0.0.1", capture.port, "pw", sni=NAME, insecure=True, fingerprint="openssl"
        )
        async with Client(config) as client:
            with pytest.raises(SessionClosedError):
                await client.open_stream(Address("127.0.0.1", 9))
        await capture.wait_for(1)
    (hello,) = capture.hellos
    assert not any(is_grease(c) for c in hello.ciphers)
    assert 0x00FF in hello.ciphers  # the SCSV OpenSSL always sends


@pytest.mark.parametrize("memstream", [True, False], ids=["trace-in-memory", "trace-callback"])
@async_test(timeout=30)
async def test_a_server_choosing_h2_is_refused(
    tmp_path: Path, memstream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser offers h2; an AnyTLS server never picks it. One that does is refused
    with a clear error before anything of ours reaches it: at most curl's HTTP/2 preface,
    what the browser itself would send there."""
    ctx = _server_context(tmp_path)
    ctx.set_alpn_protocols(["h2"])
    received = bytearray()
    done = asyncio.Event()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            done.set()
            writer.close()

    if not memstream:  # a libc without open_memstream: curl's lines come one by one
        monkeypatch.setattr(impersonate.library(), "libc", None)
    server = await asyncio.start_server(record, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Client(ClientConfig("127.0.0.1", port, "pw", insecure=True)) as client:
            with pytest.raises(ImpersonationError, match="ALPN h2"):
                await client.open_stream(Address("127.0.0.1", 9))
        await asyncio.wait_for(done.wait(), 5)
    finally:
        server.close()
    # Nothing of ours (the AnyTLS preface starts with the password's SHA-256); curl's
    # HTTP/2 client preface and frames at most.
    assert hashlib.sha256(b"pw").digest() not in received
    assert received == b"" or received.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    if not memstream:  # line by line, the ALPN line cuts the socket before the preface
        assert received == b""


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


@async_test(timeout=30)
async def test_certificate_checks_on_the_curl_path(tmp_path: Path) -> None:
    """A private CA (ca_file) and the name are verified; a wrong name or an unknown
    certificate is refused with the ssl path's message."""
    cert_pem, key_pem = generate_self_signed([NAME, "127.0.0.1"])
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    server = await serve(
        ServerConfig(users={"u": "pw"}), "127.0.0.1", 0, server_context(str(cert), str(key))
    )
    port = server.sockets[0].getsockname()[1]

    async def attempt(**kw: Any) -> None:
        async with Client(ClientConfig("127.0.0.1", port, "pw", **kw)) as client:
            reader, writer = await client.open_connection("127.0.0.1", echo_port)
            assert writer.get_extra_info("fingerprint").startswith("chrome")
            writer.write(b"verified")
            assert await reader.readexactly(8) == b"verified"
            writer.close()

    try:
        await attempt(sni=NAME, ca_file=str(cert))
        await attempt(ca_file=str(cert))  # an IP: no SNI, the IP address is verified
        await attempt(sni="other.test", insecure=True)
        for kw in ({"sni": NAME}, {"sni": "other.test", "ca_file": str(cert)}):
            with pytest.raises(SessionClosedError, match=r"failed verification.*pinSHA256"):
                await attempt(**kw)
    finally:
        await server.close()
        echo.close()


def _system_paths(default_file: Path, default_dir: Path) -> ssl.DefaultVerifyPaths:
    """What CPython reports with OpenSSL's defaults ``default_file``/``default_dir``,
    SSL_CERT_FILE and SSL_CERT_DIR taken from the environment as it does."""
    cafile = os.environ.get("SSL_CERT_FILE", str(default_file))
    capath = os.environ.get("SSL_CERT_DIR", str(default_dir))
    return ssl.DefaultVerifyPaths(
        cafile, capath, "SSL_CERT_FILE", str(default_file), "SSL_CERT_DIR", str(default_dir)
    )


def _hash_link(directory: Path, cert: Path) -> None:
    """What ``openssl rehash`` makes: the certificate under its subject hash."""
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (directory / f"{subject_hash}.0").symlink_to(cert)


def test_the_system_store_is_its_hashed_directory_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL's default directory with a hash link for every certificate of the default
    bundle is read issuer by issuer (SSL_CERT_DIR's directory too); the bundle, parsed
    whole for every session, is left out. A file of other certificates keeps the file:
    SSL_CERT_FILE naming another one, a bundle with certificates the directory lacks, a
    directory without hash links (Fedora's /etc/pki/tls/certs)."""
    bundle, hashed, plain = tmp_path / "bundle.pem", tmp_path / "hashed", tmp_path / "plain"
    one, _ = generate_self_signed([NAME])
    two, _ = generate_self_signed(["other.test"])
    bundle.write_bytes(one)
    hashed.mkdir()
    plain.mkdir()
    _hash_link(hashed, bundle)
    other = tmp_path / "other.pem"
    other.write_bytes(two)
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: _system_paths(bundle, hashed))
    assert impersonate._trust_store(None) == (None, str(hashed))
    assert impersonate._trust_store("mine.pem") == ("mine.pem", None)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the default file named again
    assert impersonate._trust_store(None) == (None, str(hashed))
    monkeypatch.setenv("SSL_CERT_DIR", str(extra))  # trusted as well, as by CPython
    assert impersonate._trust_store(None) == (None, f"{extra}:{hashed}")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))  # another file: it is used
    assert impersonate._trust_store(None) == (str(other), str(extra))
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("SSL_CERT_DIR")
    bundle.write_bytes(one + two)  # a certificate added to the bundle by hand
    assert impersonate._trust_store(None) == (str(bundle), str(hashed))
    bundle.write_bytes(one)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: _system_paths(bundle, plain))
    assert impersonate._trust_store(None) == (str(bundle), str(plain))


@async_test(timeout=30)
async def test_a_system_directory_store_verifies_on_the_curl_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the hashed directory alone (no CA file given to curl, not even its
    built-in bundle) the CA verifies the server; a server it did not sign is refused."""
    cert_pem, key_pem = generate_self_signed([NAME])
    other_pem, other_key_pem = generate_self_signed([NAME])
    files = {n: tmp_path / n for n in ("c.pem", "k.pem", "o.pem", "ok.pem")}
    for name, pem in zip(files, (cert_pem, key_pem, other_pem, other_key_pem), strict=True):
        files[name].write_bytes(pem)
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    _hash_link(hashed, files["c.pem"])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    paths = _system_paths(files["c.pem"], hashed)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    assert impersonate._trust_store(None) == (None, str(hashed))
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    servers = [
        await serve(ServerConfig(users={"u": "pw"}), "127.0.0.1", 0, server_context(str(c), str(k)))
        for c, k in ((files["c.pem"], files["k.pem"]), (files["o.pem"], files["ok.pem"]))
    ]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    try:
        async with Client(ClientConfig("127.0.0.1", ports[0], "pw", sni=NAME)) as client:
            reader, writer = await client.open_connection("127.0.0.1", echo_port)
            writer.write(b"hashed")
            assert await reader.readexactly(6) == b"hashed"
            writer.close()
        async with Client(ClientConfig("127.0.0.1", ports[1], "pw", sni=NAME)) as client:
            with pytest.raises(SessionClosedError, match="failed verification"):
                await client.open_stream(Address("127.0.0.1", echo_port))
    finally:
        for server in servers:
            await server.close()
        echo.close()


@async_test(timeout=30)
async def test_an_ip_server_name_sends_no_sni() -> None:
    async with HelloCapture() as capture:
        async with Client(ClientConfig("127.0.0.1", capture.port, "pw", insecure=True)) as client:
            with pytest.raises(SessionClosedError):
                await client.open_stream(Address("127.0.0.1", 9))
        await capture.wait_for(1)
    assert capture.hellos[0].sni is None
    assert 0x0000 not in capture.hellos[0].extensions


def _server_context(tmp_path: Path) -> ssl.SSLContext:
    """A plain TLS server context with a fresh self-signed certificate for 127.0.0.1."""
    cert_pem, key_pem = generate_self_signed(["127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


class _Recorder(asyncio.BufferedProtocol):
    """A protocol that records what the transport tells it."""

    def __init__(self) -> None:
        self.buffer = bytearray(65536)
        self.data = bytearray()
        self.paused: list[bool] = []
        self.eof = asyncio.Event()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def pause_writing(self) -> None:
        self.paused.append(True)

    def resume_writing(self) -> None:
        self.paused.append(False)

    def eof_received(self) -> bool:
        self.eof.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@async_test(timeout=30)
async def test_transport_write_buffer_read_and_eof(tmp_path: Path) -> None:
    """CurlTransport: a peer that does not read makes writes buffer past the high-water
    mark (pause_writing), reading again drains them in order (resume_writing); the peer's
    bytes reach the protocol; the peer's close is EOF, then connection_lost."""
    ctx = _server_context(tmp_path)
    start_reading = asyncio.Event()
    total = 16 << 20
    got = bytearray()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        while len(got) < total:
            got.extend(await reader.read(1 << 18))
        writer.write(b"bye")
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    from anytls.aio.impersonate import open_connection

    try:
        transport, protocol = await open_connection(
            _Recorder, "127.0.0.1", port, fingerprint="chrome", server_hostname=None, insecure=True
        )
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        payload = bytes(range(256)) * (total // 256)
        for i in range(0, total, 1 << 16):
            transport.write(payload[i : i + (1 << 16)])
        assert protocol.paused == [True]
        assert transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        start_reading.set()
        await asyncio.wait_for(protocol.eof.wait(), 20)
        assert protocol.paused == [True, False]
        assert transport.get_write_buffer_size() == 0
        assert bytes(got) == payload
        assert bytes(protocol.data) == b"bye"
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert transport.is_closing()
    finally:
        server.close()


@async_test(timeout=30)
async def test_a_lone_short_record_is_delivered_before_the_next_receive(tmp_path: Path) -> None:
    """A small message (one short TLS record) reaches the protocol straight after the
    receive that decrypted it, with no further receive that would find nothing; what
    comes next is read when the socket is readable again, all of it, in order."""
    ctx = _server_context(tmp_path)
    go = asyncio.Event()
    bulk = bytes(range(256)) * 1024

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        writer.write(b"ping")
        await writer.drain()
        await reader.read(1)  # the test saw the ping
        writer.write(bulk)
        await writer.drain()
        await reader.read(1)

    server = await asyncio.start_server(peer, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    from anytls.aio.impersonate import open_connection

    log: list[str] = []

    class Logged(_Recorder):
        def buffer_updated(self, nbytes: int) -> None:
            log.append(f"delivered {nbytes}")
            super().buffer_updated(nbytes)

    try:
        transport, protocol = await open_connection(
            Logged, "127.0.0.1", port, fingerprint="chrome", server_hostname=None, insecure=True
        )
        await asyncio.sleep(0.05)  # the read scheduled at connect time is done
        recv = transport._recv  # type: ignore[attr-defined]

        def logged_recv(handle: object, ptr: object, size: int, n: Any) -> int:
            code: int = recv(handle, ptr, size, n)
            log.append(f"recv {n[0]}" if code == 0 else f"recv code {code}")
            return code

        transport._recv = logged_recv  # type: ignore[attr-defined]
        go.set()
        await wait_until(lambda: protocol.data == b"ping", timeout=10)
        assert protocol.data == b"ping"
        await asyncio.sleep(0.05)
        assert log == ["recv 4", "delivered 4"]
        transport.write(b"k")
        await wait_until(lambda: len(protocol.data) >= 4 + len(bulk), timeout=10)
        assert bytes(protocol.data) == b"ping" + bulk
        transport.close()
    finally:
        server.close()


@async_test(timeout=30)
async def test_a_handshake_parses_no_c_declarations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cffi parses a C type string with pycparser the first time it is used (3-4 ms for
    ours): a freshly loaded library has done that at load, so not even the first session
    pays it (the cold first byte after the client starts)."""
    import pycparser

    ctx = _server_context(tmp_path)
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(impersonate, "_library", None)  # a new cffi FFI: nothing parsed yet
    library()
    parsed: list[str] = []
    real_parse = pycparser.CParser.parse

    def parse(self: Any, text: str, *args: Any, **kwargs: Any) -> Any:
        parsed.append(text)
        return real_parse(self, text, *args, **kwargs)

    monkeypatch.setattr(pycparser.CParser, "parse", parse)
    try:
        transport, protocol = await impersonate.open_connection(
            _Recorder, "127.0.0.1", port, fingerprint="chrome", server_hostname=None, insecure=True
        )
        assert transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        transport.write(b"ping")
        for _ in range(500):
            if bytes(protocol.data) == b"ping":
                break
            await asyncio.sleep(0.01)
        assert bytes(protocol.data) == b"ping"
        transport.close()
    finally:
        server.close()
    assert parsed == []


@async_test(timeout=30)
async def test_a_silent_server_times_out_and_frees_the_handshake() -> None:
    """A server that accepts TCP and never answers the hello: the connect timeout ends
    the handshake (curl's transfer removed, its socket closed, nothing left watched)."""
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    config = ClientConfig("127.0.0.1", port, "pw", insecure=True, connect_timeout=0.5)
    try:
        async with Client(config) as client:
            started = loop.time()
            with pytest.raises(SessionClosedError, match="timed out"):
                await client.open_stream(Address("127.0.0.1", 9))
            assert loop.time() - started < 3
        await asyncio.wait_for(closed.wait(), 5)  # the client's socket is closed
    finally:
        server.close()
