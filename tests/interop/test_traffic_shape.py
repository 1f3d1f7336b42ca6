"""What AnyTLS exists for: the TLS record sizes our client writes on a new session follow
the padding scheme in force (PROTOCOL.md §5.3), checked on the wire with a recording relay
between our client and a real server (ours, and sing-box).

Layout of the client → server type-23 records of one session over TLS 1.3 (plaintext =
record length - 17): the client's Finished, then packet 0 = the auth preface (32-byte
hash + 2-byte length + padding0 from line 0), packet 1 = Settings + SYN + PSH(destination),
packet 2 = the first user write, packet 3 = the FIN, then the close_notify alert (2).
Each shaped packet is cut/padded into records by its scheme line; the checker below is an
independent model of that algorithm (not the implementation's code).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from anytls import Client, ClientConfig, ServerConfig, serve
from anytls.aio.client import CLIENT_NAME
from anytls.aio.tls import server_context
from anytls.core.padding import PaddingScheme
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import pattern, sha256_hex, tcp_echo_server
from tests.helpers.interop import CUSTOM_SCHEME, aclose, sessions_of, socks_echo_check
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.singbox import SingBox, anytls_server_config
from tests.helpers.tls_recorder import (
    CONTENT_APPLICATION_DATA,
    CONTENT_CHANGE_CIPHER_SPEC,
    CONTENT_HANDSHAKE,
    ConnectionRecord,
    TLSRecordRecorder,
    plaintext_len_tls13,
)

PASSWORD = "shape-pw"
HEADER = 7  # frame header: cmd u8, sid u32, len u16
MAX_RECORD = 16384
USER_WRITE = 5000  # the first user write of each session

DEFAULT_SCHEME_TEXT = (
    "stop=8\n0=30-30\n1=100-400\n2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000\n"
    "3=9-9,500-1000\n4=500-1000\n5=500-1000\n6=500-1000\n7=500-1000"
)
CUSTOM_SCHEME_TEXT = "\n".join(CUSTOM_SCHEME)

# ---------------------------------------------------------------------------- the model

CHECK = "c"
Entry = tuple[int, int] | str


class Scheme:
    """Independent parse of a padding scheme (only what the checks need)."""

    def __init__(self, text: str) -> None:
        kv = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
        self.stop = int(kv["stop"])
        self.md5 = hashlib.md5(text.encode()).hexdigest()
        self.lines: dict[int, list[Entry]] = {}
        for key, value in kv.items():
            if not key.isdigit():
                continue
            entries: list[Entry] = []
            for part in value.split(","):
                if part == CHECK:
                    entries.append(CHECK)
                else:
                    lo, hi = (int(x) for x in part.split("-"))
                    entries.append((min(lo, hi), max(lo, hi)))
            self.lines[int(key)] = entries

    def preface_size(self) -> int:
        first = next(e for e in self.lines[0] if e != CHECK)
        assert isinstance(first, tuple) and first[0] == first[1], "line 0 must be fixed here"
        return 32 + 2 + first[0]


def _fits(entry: tuple[int, int], size: int) -> bool:
    lo, hi = entry
    return size == lo if lo == hi else lo <= size < hi  # a-b draws from [a, b)


def check_packet(
    records: list[int], pos: int, scheme: Scheme, number: int, natural: int, what: str
) -> int:
    """Assert ``records[pos:]`` start with packet ``number`` (``natural`` bytes) shaped as
    ``scheme`` prescribes; return the position after it."""
    ctx = f"{what}: packet {number} ({natural} bytes) records {records[pos : pos + 8]}"
    if number >= scheme.stop or number not in scheme.lines:
        assert natural <= MAX_RECORD
        assert records[pos] == natural, f"{ctx}: expected one unshaped record"
        return pos + 1
    rem = natural
    for entry in scheme.lines[number]:
        if entry == CHECK:
            if rem == 0:
                break
            continue
        assert isinstance(entry, tuple)
        assert pos < len(records), f"{ctx}: records missing for {entry}"
        size = records[pos]
        pos += 1
        if rem == 0:  # nothing left: a Waste frame of the drawn size (plus its header)
            assert _fits(entry, size - HEADER), f"{ctx}: waste record {size} vs {entry}"
        elif size < rem:  # cut: exactly the drawn size
            assert _fits(entry, size), f"{ctx}: record {size} not in {entry}"
            rem -= size
        elif size == rem:  # tail too close to the drawn size for a Waste frame (pad <= 0)
            assert any(_fits(entry, n) for n in range(rem, rem + HEADER + 1)), ctx
            rem = 0
        else:  # tail + Waste frame filling the record to the drawn size
            assert size >= rem + HEADER + 1 and _fits(entry, size), f"{ctx}: padded {size}"
            rem = 0
    if rem:
        assert rem <= MAX_RECORD
        assert records[pos] == rem, f"{ctx}: remainder {rem} expected as one record"
        pos += 1
    return pos


def settings_size(client_name: str, md5: str) -> int:
    return HEADER + len(f"v=2\nclient={client_name}\npadding-md5={md5}")


def check_session(
    conn: ConnectionRecord,
    scheme: Scheme,
    *,
    later: Scheme | None = None,
    client_name: str,
    dest_len: int = 7,
    what: str,
) -> list[int]:
    """Check one recorded session; ``later`` is the scheme pushed during it (applies from
    packet 2 on, as in the Go clients). Returns the plaintext sizes (Finished dropped)."""
    types = [r.content_type for r in conn.client_records]
    # TLS 1.3: ClientHello, middlebox CCS, then only encrypted records (Finished is type 23)
    assert types[:2] == [CONTENT_HANDSHAKE, CONTENT_CHANGE_CIPHER_SPEC], types
    assert all(t == CONTENT_APPLICATION_DATA for t in types[2:]), types
    sizes = [plaintext_len_tls13(n) for n in conn.client_app_data()]
    assert sizes[0] in (36, 52), f"{what}: first record should be the Finished: {sizes}"
    sizes = sizes[1:]
    assert sizes[0] == scheme.preface_size(), f"{what}: preface {sizes[0]}: {sizes}"
    packet1 = settings_size(client_name, scheme.md5) + HEADER + HEADER + dest_len
    pos = check_packet(sizes, 1, scheme, 1, packet1, what)
    current = later or scheme
    pos = check_packet(sizes, pos, current, 2, HEADER + USER_WRITE, what)
    pos = check_packet(sizes, pos, current, 3, HEADER, what)  # FIN
    # afterwards at most the close_notify alert (2 bytes)
    assert all(n == 2 for n in sizes[pos:]), f"{what}: trailing records {sizes[pos:]}"
    return sizes


def test_checker_rejects_unshaped_and_misshaped_sessions() -> None:
    """The model is not vacuous: it accepts a correct trace and rejects wrong ones."""
    default = Scheme(DEFAULT_SCHEME_TEXT)
    assert default.md5 == "75cff2ad89aadf5e257059ee571ebe11"
    assert default.preface_size() == 64
    # packet 2 of 5007 bytes under the default line 2, and FIN under line 3
    good = [450, 600, 700, 800, 900, 5007 - 3450]
    assert check_packet(good, 0, default, 2, 5007, "t") == 6
    assert check_packet([7, 600], 0, default, 3, 7, "t") == 2
    assert check_packet([250], 0, default, 1, 99, "t") == 1  # padded with Waste
    assert check_packet([99], 0, default, 1, 99, "t") == 1  # drawn 100..106: no room to pad
    bad = [
        ([5007], 2, 5007),  # unshaped user write
        ([399, 600, 700, 800, 900, 1608], 2, 5007),  # first record below 400
        ([450, 1000, 700, 800, 900, 1157], 2, 5007),  # 1000 is outside [500, 1000)
        ([99], 1, 90),  # a 99-byte record for a 90-byte packet (pad would be >= 3)
        ([7], 3, 7),  # FIN without the Waste record of line 3
    ]
    for records, number, natural in bad:
        with pytest.raises((AssertionError, IndexError)):
            check_packet(records, 0, default, number, natural, "t")
    custom = Scheme(CUSTOM_SCHEME_TEXT)
    assert custom.preface_size() == 44
    assert check_packet([5007], 0, custom, 3, 5007, "t") == 1  # past stop: unshaped


# ---------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def singbox_servers(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[dict[str, int]]:
    """sing-box anytls servers: "default" scheme and "custom" (pushed) scheme → port."""
    ports = {"default": free_port(), "custom": free_port()}
    tmp = tmp_path_factory.mktemp("sb")
    cfg_default = anytls_server_config(ports["default"], [("u", PASSWORD)], *certs)
    cfg_custom = anytls_server_config(
        ports["custom"], [("u", PASSWORD)], *certs, padding_scheme=CUSTOM_SCHEME
    )
    with (
        SingBox(cfg_default, tmp, name="default"),
        SingBox(cfg_custom, tmp, name="custom"),
    ):
        yield ports


class _OurServer:
    def __init__(self, certs: tuple[Path, Path], scheme_text: str) -> None:
        self.certs = certs
        self.scheme = PaddingScheme.parse(scheme_text.encode())

    async def __aenter__(self) -> int:
        ctx = server_context(str(self.certs[0]), str(self.certs[1]))
        config = ServerConfig(users={"u": PASSWORD}, allow_private=True, padding=self.scheme)
        self.server = await serve(config, "127.0.0.1", 0, ssl_context=ctx)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


async def _run_sessions(
    server_port: int, cert: Path, n: int
) -> tuple[TLSRecordRecorder, Client, list[str]]:
    """``n`` sessions (reuse off), each: connect, write USER_WRITE bytes, read the echo,
    close. Returns the recorder, the client and the client's padding md5 before each session."""
    md5s: list[str] = []
    async with (
        tcp_echo_server() as (host, port),
        TLSRecordRecorder("127.0.0.1", server_port) as rec,
    ):
        config = ClientConfig("127.0.0.1", rec.port, PASSWORD, sni="localhost", ca_file=str(cert))
        config.reuse_sessions = False
        client = Client(config)
        try:
            for _ in range(n):
                md5s.append(client.padding.md5)  # the scheme the new session is built with
                reader, writer = await client.open_connection(host, port)
                (conn,) = sessions_of(client)
                assert conn.get_extra_info("ssl_object").version() == "TLSv1.3"
                data = pattern(USER_WRITE)
                writer.write(data)  # one write = one packet
                assert sha256_hex(await reader.readexactly(USER_WRITE)) == sha256_hex(data)
                await aclose(writer)  # FIN; reuse is off, so the session closes too
                await wait_until(lambda: not sessions_of(client), 5)
                assert not sessions_of(client)
        finally:
            await client.close()
        await rec.wait_connections(n)
        await rec.wait_closed()
    assert len(rec.connections) == n
    return rec, client, md5s


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("server", ["ours", "sing-box"])
@async_test
async def test_default_scheme_on_the_wire(
    server: str, certs: tuple[Path, Path], singbox_servers: dict[str, int]
) -> None:
    scheme = Scheme(DEFAULT_SCHEME_TEXT)
    if server == "ours":
        async with _OurServer(certs, DEFAULT_SCHEME_TEXT) as port:
            rec, client, md5s = await _run_sessions(port, certs[0], 2)
    else:
        rec, client, md5s = await _run_sessions(singbox_servers["default"], certs[0], 2)
    assert md5s == [scheme.md5, scheme.md5]
    assert client.padding.md5 == scheme.md5  # nothing was pushed
    for i, conn in enumerate(rec.connections):
        sizes = check_session(
            conn, scheme, client_name=client.config.client_name, what=f"{server} #{i}"
        )
        print(f"default scheme, {server} server, session {i}: {sizes}")
        assert sizes[0] == 64  # 32 + 2 + 30


@pytest.mark.parametrize("server", ["ours", "sing-box"])
@async_test
async def test_pushed_scheme_on_the_wire(
    server: str,
    certs: tuple[Path, Path],
    singbox_servers: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="anytls")
    default, custom = Scheme(DEFAULT_SCHEME_TEXT), Scheme(CUSTOM_SCHEME_TEXT)
    if server == "ours":
        async with _OurServer(certs, CUSTOM_SCHEME_TEXT) as port:
            rec, client, md5s = await _run_sessions(port, certs[0], 2)
        # our server logs the Settings each session sent: the 2nd advertises the new md5
        advertised = re.findall(
            r"'padding-md5': '([0-9a-f]{32})'",
            "\n".join(r.getMessage() for r in caplog.records if "settings" in r.getMessage()),
        )
        assert advertised == [default.md5, custom.md5]
    else:
        rec, client, md5s = await _run_sessions(singbox_servers["custom"], certs[0], 2)
    assert md5s == [default.md5, custom.md5]
    assert client.padding.md5 == custom.md5
    pushes = [r for r in caplog.records if "pushed a new padding scheme" in r.getMessage()]
    assert len(pushes) == 1  # session 2 matched the server's md5: no second push
    name = client.config.client_name
    first, second = rec.connections
    # session 1 starts with the default scheme; the push lands before its SYNACK, so from
    # packet 2 on the session follows the new scheme (stop=3: the FIN is unshaped)
    sizes1 = check_session(first, default, later=custom, client_name=name, what="session 1")
    # session 2 is built with the pushed scheme from the start
    sizes2 = check_session(second, custom, client_name=name, what="session 2")
    print(f"pushed scheme, {server} server: session 1 {sizes1}, session 2 {sizes2}")
    assert sizes1[0] == 64
    assert sizes2[0] == 44  # 32 + 2 + 10
    assert 200 <= sizes2[1] < 300
    assert 300 <= sizes2[2] < 400
    assert sizes2[3] == HEADER + USER_WRITE - sizes2[2]
    assert sizes2[4] == HEADER  # FIN, past stop=3


@async_test
async def test_cli_client_shapes_like_the_library(
    tmp_path: Path, singbox_servers: dict[str, int]
) -> None:
    """The ``anytls-client`` program (uvloop, SOCKS5 inbound) against the pushing sing-box:
    session 1 uses the default scheme (then the pushed one), session 2 the pushed one."""
    default, custom = Scheme(DEFAULT_SCHEME_TEXT), Scheme(CUSTOM_SCHEME_TEXT)
    async with (
        tcp_echo_server() as (host, port),
        TLSRecordRecorder("127.0.0.1", singbox_servers["custom"]) as rec,
    ):
        args = ["-s", f"127.0.0.1:{rec.port}", "-p", PASSWORD, "--insecure", "--dr"]
        # Waiting for the SYNACK, as the library's open_connection does, makes the push
        # land before packet 2 (with 0-RTT replies packet 2 may still use the old scheme).
        args.append("--wait-for-synack")
        async with AnyTLSProcess.client(free_port(), args, tmp_path) as cli:
            for i in range(2):
                await socks_echo_check(cli.port, host, port, USER_WRITE)
                await rec.wait_connections(i + 1)
                await rec.connections[i].closed.wait()
        await rec.wait_closed()
    first, second = rec.connections
    check_session(first, default, later=custom, client_name=CLIENT_NAME, what="cli session 1")
    sizes = check_session(second, custom, client_name=CLIENT_NAME, what="cli session 2")
    assert sizes[0] == 44
