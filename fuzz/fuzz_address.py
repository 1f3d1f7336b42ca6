"""Atheris harness: SOCKS5/UoT address decoding, AddressReader and Address.parse.

Modes (first control value):

0. ``decode_address(payload, offset, codes)`` with SOCKS or UoT codes: only
   RemoteProtocolError; a decoded address ends inside the buffer, re-encodes with the same
   codes and decodes back to itself; None only when the buffer is shorter than the
   address would be.
1. ``AddressReader`` fed the payload split at input-derived points: never buffers more
   than MAX_ADDRESS_SIZE bytes, and agrees with decoding the whole payload (address,
   error type, leftover + the chunks after it == the bytes after the address).
2. ``Address.parse(text)`` on the payload decoded as UTF-8 with surrogateescape (what
   ``sys.argv`` holds for undecodable bytes): only ConfigError; a parsed address prints
   (str) to text that parses back to itself.
3. The same with a fuzzer-built ``host:port`` whose port is a digit run of chosen length
   (up to 6000, past int()'s 4300-digit limit) after chosen leading zeros.

Run: python fuzz/fuzz_address.py fuzz/corpus/address -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris
from _common import consume_splits, split, unscoped

with atheris.instrument_imports(include=["anytls"]):
    from anytls.core.address import (
        MAX_ADDRESS_SIZE,
        SOCKS_CODES,
        Address,
        AddressReader,
        decode_address,
    )
    from anytls.core.uot import UOT_CODES
    from anytls.errors import ConfigError, RemoteProtocolError

CODES = (SOCKS_CODES, UOT_CODES)
MODES = 4


def check_decode(payload: bytes, offset: int, codes) -> None:
    try:
        result = decode_address(payload, offset, codes)
    except RemoteProtocolError:
        return
    if result is None:
        assert len(payload) - offset < MAX_ADDRESS_SIZE, (len(payload), offset)
        return
    address, end = result
    assert offset < end <= len(payload), (offset, end, len(payload))
    encoded = address.encode(codes)
    expected = (unscoped(address), len(encoded))
    assert decode_address(encoded, 0, codes) == expected, (address, encoded)


def check_reader(payload: bytes, points: list[int], kind: int) -> None:
    codes = SOCKS_CODES
    try:
        whole = decode_address(payload, 0, codes)
        whole_error = None
    except RemoteProtocolError as exc:
        whole, whole_error = None, type(exc)
    reader = AddressReader(codes)
    got = None
    error = None
    after = bytearray()
    for chunk in split(payload, points, kind):
        if got is not None:
            after += chunk
            continue
        try:
            got = reader.feed(chunk)
        except RemoteProtocolError as exc:
            error = type(exc)
            break
        assert len(reader._buf) <= MAX_ADDRESS_SIZE, len(reader._buf)
        if got is not None:
            after += reader.leftover
    assert error is whole_error, (error, whole_error)
    if whole_error is not None:
        return
    if whole is None:
        assert got is None
        return
    assert got == whole[0], (got, whole)
    assert bytes(after) == payload[whole[1] :]


def check_parse(payload: bytes) -> None:
    text = payload.decode("utf-8", "surrogateescape")
    try:
        address = Address.parse(text)
    except ConfigError:
        return
    assert Address.parse(str(address)) == address, (text, address)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, MODES - 1)
    if mode == 0:
        offset = fdp.ConsumeIntInRange(0, 3)
        codes = CODES[fdp.ConsumeIntInRange(0, 1)]
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        check_decode(payload, min(offset, len(payload)), codes)
    elif mode == 1:
        points, kind = consume_splits(fdp)
        check_reader(fdp.ConsumeBytes(fdp.remaining_bytes()), points, kind)
    elif mode == 2:
        check_parse(fdp.ConsumeBytes(fdp.remaining_bytes()))
    else:
        zeros = b"0" * fdp.ConsumeIntInRange(0, 6000)
        digits = str(fdp.ConsumeIntInRange(0, 9)).encode() * fdp.ConsumeIntInRange(0, 6000)
        check_parse(fdp.ConsumeBytes(fdp.remaining_bytes()) + b":" + zeros + digits)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
