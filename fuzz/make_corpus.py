"""Write the seed corpora in fuzz/corpus/<harness>/ from real protocol byte streams.

Every harness reads its control values (mode, split points ...) from the *end* of the input
(FuzzedDataProvider.ConsumeIntInRange), so each seed is a realistic byte stream with a
small trailer appended; see _common.trailer. Re-running this script rewrites the seeds
(file names are content hashes, so fuzzer-found inputs next to them are kept).

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import split_specs, trailer

from anytls.core.address import Address
from anytls.core.constants import HEADER, Command
from anytls.core.frame import encode_data_frames, encode_frame
from anytls.core.padding import DEFAULT_SCHEME_TEXT
from anytls.core.session import Session
from anytls.core.settings import format_kv
from anytls.core.socks5 import build_udp_datagram
from anytls.core.uot import (
    UOT_V2_MAGIC,
    encode_connect_packet,
    encode_packet,
    encode_request,
)

ROOT = Path(__file__).resolve().parent / "corpus"
USERS_PASSWORD = "alice-password"  # a user of fuzz_session.USERS
DEST = Address("example.com", 443).encode()
SING_BOX_SCHEME = (
    b"stop=8\n0=34-120\n1=100-400\n"
    b"2=400-500,c,500-1000,c,400-500,c,500-1000,c,500-1000,c,400-500\n"
    b"3=500-1000\n4=500-1000\n5=500-1000\n6=500-1000\n7=500-1000"
)
#: Split plans appended to stream seeds: none, a few small cuts, byte-by-byte-ish start.
PLANS = [
    ([], 0),
    ([1, 7, 40], 1),
    ([0, 2, 3, 5, 8, 13, 21, 34], 2),
    ([33, 34, 35, 100, 300], 0),
]


def write(harness: str, data: bytes) -> None:
    folder = ROOT / harness
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


def with_plans(harness: str, payload: bytes, head: list[tuple[int, int, int]]) -> None:
    for points, kind in PLANS:
        write(harness, payload + trailer([*head, *split_specs(points, kind)]))


# -- session -----------------------------------------------------------------------------


def client_stream() -> tuple[bytes, bytes]:
    """A real client's bytes: (preface, frames after it)."""
    client = Session.client(USERS_PASSWORD)
    client.initiate()
    sid = client.open_stream(DEST)
    client.send_data(sid, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    sid2 = client.open_stream(Address(UOT_V2_MAGIC, 0).encode())
    client.send_data(sid2, encode_request(True, Address("1.1.1.1", 53)))
    client.send_data(sid2, encode_connect_packet(b"\x12\x34" + bytes(30)))
    client.end_stream(sid)
    client.send_heartbeat()
    client.send_data(sid2, bytes(1500))
    client.end_stream(sid2)
    out = client.data_to_send()
    preface = out[0]
    return preface, b"".join(out[1:])


def server_stream(client_frames: bytes) -> bytes:
    """What a real server sends back, plus frames a client must also cope with."""
    server = Session.server(None)
    server.receive_data(client_frames)
    out = server.data_to_send()
    extra = [
        encode_frame(Command.SYNACK, 1),
        encode_data_frames(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        encode_frame(Command.UPDATE_PADDING_SCHEME, 0, SING_BOX_SCHEME),
        encode_frame(Command.HEART_REQUEST, 0),
        encode_frame(Command.HEART_RESPONSE, 0),
        encode_frame(Command.SYNACK, 2, b"dial tcp: connection refused"),
        encode_frame(Command.WASTE, 0, bytes(20)),
        encode_frame(Command.FIN, 1),
        encode_frame(42, 9, b"unknown"),
        encode_frame(Command.ALERT, 0, b"bye"),
    ]
    return b"".join(out) + b"".join(extra)


def session_seeds() -> None:
    preface, frames = client_stream()
    with_plans("session", preface + frames, [(0, 0, 2)])
    with_plans("session", frames, [(1, 0, 2)])
    settings_v1 = encode_frame(
        Command.SETTINGS, 0, format_kv({"v": "1", "client": "x", "padding-md5": "00"})
    )
    odd = [
        encode_frame(Command.SYN, 1) + encode_data_frames(1, b"early"),  # SYN before Settings
        settings_v1
        + encode_frame(Command.SYN, 1)
        + encode_frame(Command.SYN, 2)
        + encode_frame(Command.SYN, 3)
        + encode_frame(Command.SYN, 4)  # over max_streams
        + encode_frame(Command.ALERT, 0, b"x"),
        HEADER.pack(Command.PSH, 1, 65535) + b"partial",  # a 64 KiB frame trickling in
        settings_v1 + encode_frame(Command.SYN, 1) + encode_data_frames(1, bytes(3000)),
        HEADER.pack(Command.SETTINGS, 0, 65535) + b"v=2\n",
    ]
    for payload in odd:
        with_plans("session", payload, [(1, 0, 2)])
    with_plans("session", preface[:34], [(0, 0, 2)])
    with_plans("session", bytes(34) + b"\x00\x00", [(0, 0, 2)])  # unknown user
    with_plans("session", server_stream(frames), [(2, 0, 2)])


# -- uot ---------------------------------------------------------------------------------


def uot_seeds() -> None:
    dns = Address("1.1.1.1", 53)
    connect = b"".join(encode_connect_packet(p) for p in (b"\x00\x01query", b"", bytes(600)))
    targets = [dns, Address("2001:db8::1", 53), Address("dns.example", 53)]
    packets = b"".join(encode_packet(a, b"payload-%d" % i) for i, a in enumerate(targets))
    with_plans("uot", encode_request(True, dns) + connect, [(0, 0, 2)])
    with_plans("uot", encode_request(False, Address("example.com", 0)) + packets, [(0, 0, 2)])
    with_plans("uot", connect, [(1, 0, 2)])
    with_plans("uot", packets, [(2, 0, 2)])
    with_plans("uot", b"\x02\x00\x00\x00", [(2, 0, 2)])  # empty domain


# -- socks5 ------------------------------------------------------------------------------


def socks5_seeds() -> None:
    def request(cmd: int, address: Address) -> bytes:
        return bytes((5, cmd, 0)) + address.encode()

    get = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    plain = [
        b"\x05\x01\x00" + request(1, Address("example.com", 80)) + get,
        b"\x05\x02\x00\x02" + request(1, Address("93.184.216.34", 443)),
        b"\x05\x01\x00" + request(3, Address("::", 0)),
        b"\x05\x01\x00" + request(2, Address("10.0.0.1", 1)),
        b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50",  # bad command
        b"\x05\x01\x02",  # no acceptable method
        b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",  # SOCKS4
    ]
    for payload in plain:
        with_plans("socks5", payload, [(0, 0, 2)])
    auth = [
        b"\x05\x02\x00\x02\x01\x04user\x04pass" + request(1, Address("example.com", 443)) + get,
        b"\x05\x01\x02\x01\x04user\x05wrong",
        b"\x05\x01\x02\x01\x00\x00",
    ]
    for payload in auth:
        with_plans("socks5", payload, [(1, 0, 2)])
    for address in (Address("8.8.8.8", 53), Address("::1", 53), Address("example.com", 53)):
        write("socks5", build_udp_datagram(address, b"\x12\x34dns") + trailer([(2, 0, 2)]))
    write("socks5", b"\x00\x00\x01\x01\x08\x08\x08\x08\x00\x35x" + trailer([(2, 0, 2)]))


# -- http_proxy ----------------------------------------------------------------------------


def http_seeds() -> None:
    heads = [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.0.0.1:22 HTTP/1.0\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
        b"Proxy-Connection: keep-alive\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        b"POST https://example.com:8443/upload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET http://[::1]:8080/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"GET http://user:pw@example.com HTTP/1.1\n\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ]
    for head in heads:
        for points, kind in PLANS:
            write("http_proxy", head + trailer(split_specs(points, kind)))


# -- padding -----------------------------------------------------------------------------


def padding_seeds() -> None:
    frames = [[], [(2, 100)], [(4, 40), (1, 0), (2, 1200)]]
    schemes = [
        DEFAULT_SCHEME_TEXT,
        SING_BOX_SCHEME,
        b"stop=3\n0=0-0\n1=1-1,c,65535-65535\n2=7-7,c,c,8-9",
        b"stop=2\r\n0=30-30",
        b"stop=+1\n1=-5-10,10-5,a-b,c",
    ]
    for scheme in schemes:
        for spec in frames:
            head = [(0, 0, 1), (len(spec), 0, 3)]
            for command, length in spec:
                head += [(command, 1, 10), (length, 0, 0xFFFF)]
            write("padding", scheme + trailer(head))
    for filler in (b"", bytes(range(64)), b"stop=9999" * 4):  # structured mode
        write("padding", filler + trailer([(1, 0, 1), (1, 0, 3), (2, 1, 10), (300, 0, 0xFFFF)]))


# -- address -----------------------------------------------------------------------------


def address_seeds() -> None:
    from anytls.core.uot import UOT_CODES

    addresses = [
        Address("127.0.0.1", 1080),
        Address("2001:db8::1", 443),
        Address("example.com", 443),
        Address(UOT_V2_MAGIC, 0),
    ]
    for address in addresses:
        write("address", address.encode() + trailer([(0, 0, 2), (0, 0, 3), (0, 0, 1)]))
        write(
            "address",
            b"\x00" + address.encode(UOT_CODES) + trailer([(0, 0, 2), (1, 0, 3), (1, 0, 1)]),
        )
        with_plans("address", address.encode() + b"leftover", [(1, 0, 2)])
        write("address", str(address).encode() + trailer([(2, 0, 2)]))
    raw_domain_ip = b"\x03\x0b2001:DB8::1\x00\x50"
    write("address", raw_domain_ip + trailer([(0, 0, 2), (0, 0, 3), (0, 0, 1)]))
    for text in (b"0.0.0.0:8443", b"[::]:8443", b"localhost:65535", b"host:00080"):
        write("address", text + trailer([(2, 0, 2)]))


def main() -> None:
    session_seeds()
    uot_seeds()
    socks5_seeds()
    http_seeds()
    padding_seeds()
    address_seeds()
    for folder in sorted(ROOT.iterdir()):
        print(f"{folder.name}: {sum(1 for _ in folder.iterdir())} files")


if __name__ == "__main__":
    main()
