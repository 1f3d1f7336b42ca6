"""Atheris harness: SOCKS5 server handshake and UDP datagram parsing.

Modes (first control value): 0 = Socks5Handshake() (no auth), 1 = Socks5Handshake with
credentials (USER, PASSWORD), 2 = parse_udp_datagram. Checked:

* only RemoteProtocolError escapes;
* the handshake buffers at most one message (an RFC 1929 auth message: 3 + 255 + 255);
* whole and split feeds give the same replies, request, failure, relayed bytes and error;
* a decoded request/datagram address re-encodes (reply(), build_udp_datagram()) and a
  datagram round-trips.

Run: python fuzz/fuzz_socks5.py fuzz/corpus/socks5 -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris
from _common import CHUNK_TYPES, consume_splits, split, unscoped

with atheris.instrument_imports(include=["anytls"]):
    from anytls.core.socks5 import (
        Reply,
        Socks5Handshake,
        build_udp_datagram,
        parse_udp_datagram,
        reply,
    )
    from anytls.errors import RemoteProtocolError

USER = "user"
PASSWORD = "pass"
MAX_HANDSHAKE_BUF = 3 + 255 + 255
MODES = 3


def run(credentials, chunks: list):
    handshake = Socks5Handshake(credentials)
    replies = bytearray()
    relay = bytearray()
    error = None
    for chunk in chunks:
        if handshake.request is not None:
            relay += chunk  # after the handshake the caller relays
            continue
        was_failed = handshake.failed is not None
        try:
            out = handshake.receive_data(chunk)
        except RemoteProtocolError as exc:
            error = type(exc)
            break
        assert isinstance(out, bytes)
        if was_failed:
            assert out == b"", out
        assert len(handshake._buf) <= MAX_HANDSHAKE_BUF, len(handshake._buf)
        replies += out
        if handshake.request is not None:
            assert handshake.failed is None
            relay += handshake.leftover
    if handshake.request is not None:
        _command, address = handshake.request
        assert reply(Reply.SUCCEEDED, address)[:3] == b"\x05\x00\x00"
    return bytes(replies), handshake.request, handshake.failed, bytes(relay), error


def check_datagram(data: bytes, kind: int) -> None:
    try:
        result = parse_udp_datagram(CHUNK_TYPES[kind](data))
    except RemoteProtocolError:
        return
    if result is None:
        assert data[2] != 0
        return
    address, payload = result
    payload = bytes(payload)
    again = parse_udp_datagram(build_udp_datagram(address, payload))
    assert again is not None
    assert again[0] == unscoped(address), (address, again[0])
    assert bytes(again[1]) == payload


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, MODES - 1)
    points, kind = consume_splits(fdp)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 2:
        check_datagram(payload, kind)
        return
    credentials = (USER, PASSWORD) if mode == 1 else None
    whole = run(credentials, [payload])
    parts = run(credentials, split(payload, points, kind))
    assert whole[4] is parts[4], (whole[4], parts[4])
    if whole[4] is None:
        assert whole == parts, (whole, parts)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
