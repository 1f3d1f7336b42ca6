"""Atheris harness: UDP-over-TCP request reader and packet decoders, fed whole and split.

Modes (first control value): 0 = v2 stream (UotRequestReader, then the decoder its
isConnect flag selects, fed the reader's leftover), 1 = connect-format decoder,
2 = non-connect (v1) decoder. Checked:

* only RemoteProtocolError escapes;
* the reader never buffers more than one request, the decoder's ``buffered`` stays below
  one maximal packet (header + 65535);
* whole and split feeds give the same request, packets and error type;
* every decoded request/packet re-encodes and decodes back to itself.

Run: python fuzz/fuzz_uot.py fuzz/corpus/uot -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris
from _common import consume_splits, split, unscoped

with atheris.instrument_imports(include=["anytls"]):
    from anytls.core.uot import (
        MAX_DATAGRAM,
        MAX_PACKET_HEADER,
        MAX_REQUEST_SIZE,
        UotPacketDecoder,
        UotRequestReader,
        decode_request,
        encode_connect_packet,
        encode_packet,
        encode_request,
    )
    from anytls.errors import RemoteProtocolError

MODES = 3


def run(mode: int, chunks: list):
    reader = UotRequestReader() if mode == 0 else None
    decoder = None if mode == 0 else UotPacketDecoder(connect=mode == 1)
    request = None
    packets: list = []
    error = None
    try:
        for chunk in chunks:
            if reader is not None:
                request = reader.feed(chunk)
                assert len(reader._buf) <= MAX_REQUEST_SIZE, len(reader._buf)
                if request is None:
                    continue
                chunk = reader.leftover
                reader = None
                decoder = UotPacketDecoder(connect=request[0])
            assert decoder is not None
            packets += decoder.feed(chunk)
            assert decoder.buffered < MAX_PACKET_HEADER + MAX_DATAGRAM, decoder.buffered
    except RemoteProtocolError as exc:
        error = type(exc)
    return request, packets, error, decoder is not None and decoder.connect


def check_round_trip(request, packets, connect: bool) -> None:
    if request is not None:
        is_connect, address = request
        encoded = encode_request(is_connect, address)
        expected = (is_connect, unscoped(address), len(encoded))
        assert decode_request(encoded) == expected, request
    for address, payload in packets:
        assert len(payload) <= MAX_DATAGRAM
        if connect:
            assert address is None
            encoded = encode_connect_packet(payload)
        else:
            encoded = encode_packet(address, payload)
        again = UotPacketDecoder(connect=connect)
        expected = None if address is None else unscoped(address)
        assert again.feed(encoded) == [(expected, payload)], (address, payload)
        assert again.buffered == 0


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, MODES - 1)
    points, kind = consume_splits(fdp)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())

    whole = run(mode, [payload])
    parts = run(mode, split(payload, points, kind))
    assert whole[2] is parts[2], (whole[2], parts[2])
    if whole[2] is None:
        assert whole == parts, (whole, parts)
    check_round_trip(*parts[:2], parts[3])


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
