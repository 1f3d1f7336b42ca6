"""Atheris harness: PaddingScheme.parse, sizes() and shape_packet.

Modes (first control value): 0 = the payload is the scheme text as it would arrive in an
UpdatePaddingScheme frame; 1 = a scheme assembled from fuzzer-chosen pieces (stop lines,
size lists, check marks, signs, leading zeros, very long digit runs, CR, junk) so that
number-parsing corners are reached without megabytes of mutation. Then a packet of 0-3
frames with fuzzer-chosen commands and lengths is built. Checked:

* parse raises nothing but PaddingSchemeError;
* the parsed scheme is consistent (raw, md5, stop an int, ranges 0 < lo <= hi);
* sizes(k) draws inside the ranges, and shape_packet's records, concatenated and stripped
  of Waste frames, give back exactly the packet (every frame whole);
* a client Session using the scheme can initiate, open a stream and produce output.

Run: python fuzz/fuzz_padding.py fuzz/corpus/padding -max_total_time=600 -max_len=16384
"""

from __future__ import annotations

import hashlib
import sys

import atheris

with atheris.instrument_imports(include=["anytls"]):
    from anytls.core.constants import HEADER, HEADER_SIZE, MAX_FRAME_DATA, Command
    from anytls.core.padding import CHECK, PaddingScheme, shape_packet
    from anytls.core.session import Session
    from anytls.errors import PaddingSchemeError

MODES = 2
MAX_FRAMES = 3
#: Skip shaping when the drawn sizes would build more than this many bytes (a scheme may
#: legitimately ask for thousands of 64 KiB waste records; see FINDINGS.md).
MAX_SHAPED = 4 << 20
#: How many packet lines of one scheme are exercised.
MAX_LINES = 6


def number(fdp) -> str:
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return "-" + str(fdp.ConsumeIntInRange(0, 2000))
    if kind == 1:
        return "+" + str(fdp.ConsumeIntInRange(0, 2000))
    if kind == 2:
        return "0" * fdp.ConsumeIntInRange(1, 6000) + str(fdp.ConsumeIntInRange(0, 2000))
    if kind == 3:  # very long digit run (Python caps int() at 4300 digits)
        digit = str(fdp.ConsumeIntInRange(0, 9))
        return digit * fdp.ConsumeIntInRange(1, 6000)
    if kind == 4:  # around the 64-bit limits
        return str((1 << 63) + fdp.ConsumeIntInRange(-3, 3))
    if kind == 5:
        return ""
    if kind == 6:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 4))
    return str(fdp.ConsumeIntInRange(0, 2000))


def item(fdp) -> str:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return "c"
    if kind == 1:
        return number(fdp)
    if kind == 2:
        return number(fdp) + "-" + number(fdp) + "-" + number(fdp)
    return number(fdp) + "-" + number(fdp)


def structured_scheme(fdp) -> bytes:
    lines = []
    for _ in range(fdp.ConsumeIntInRange(0, 10)):
        kind = fdp.ConsumeIntInRange(0, 4)
        if kind == 0:
            key = "stop"
        elif kind == 1:
            key = number(fdp)
        elif kind == 2:
            key = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 6))
        else:
            key = str(fdp.ConsumeIntInRange(0, 10))
        items = [item(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
        sep = "=" if fdp.ConsumeIntInRange(0, 7) else ""
        end = "\r" if fdp.ConsumeIntInRange(0, 15) == 0 else ""
        lines.append(key + sep + ",".join(items) + end)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def build_packet(fdp) -> bytes:
    out = bytearray()
    for index in range(fdp.ConsumeIntInRange(0, MAX_FRAMES)):
        command = fdp.ConsumeIntInRange(1, 10)  # anything but Waste
        length = fdp.ConsumeIntInRange(0, MAX_FRAME_DATA)
        out += HEADER.pack(command, index + 1, length)
        out += bytes((index * 7 + i) & 0xFF for i in range(min(length, 64))) + bytes(
            max(0, length - 64)
        )
    return bytes(out)


def strip_waste(stream: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(stream):
        assert len(stream) - pos >= HEADER_SIZE, ("partial header", pos, len(stream))
        command, _, length = HEADER.unpack_from(stream, pos)
        end = pos + HEADER_SIZE + length
        assert end <= len(stream), ("partial frame", pos, length, len(stream))
        if command != Command.WASTE:
            out += stream[pos:end]
        pos = end
    return bytes(out)


def shaped_bytes(sizes: list[int]) -> int:
    return sum(min(size, MAX_FRAME_DATA) + HEADER_SIZE for size in sizes if size != CHECK)


def check_scheme(raw: bytes, packet: bytes) -> None:
    try:
        scheme = PaddingScheme.parse(raw)
    except PaddingSchemeError:
        return
    assert scheme.raw == raw
    assert scheme.md5 == hashlib.md5(raw).hexdigest()
    assert type(scheme.stop) is int
    for key, items in scheme.lines.items():
        assert type(key) is int and key >= 0, key
        for lo, hi in items:
            assert (lo, hi) == (CHECK, CHECK) or 0 < lo <= hi, (key, lo, hi)
    assert scheme.preface_padding_length() >= 0

    budget_ok = True
    for key in [*sorted(scheme.lines)[:MAX_LINES], 1]:
        items = scheme.lines.get(key, ())
        sizes = scheme.sizes(key)
        assert len(sizes) == len(items)
        for size, (lo, hi) in zip(sizes, items, strict=True):
            if lo == CHECK:
                assert size == CHECK
            else:
                assert size == lo if lo == hi else lo <= size < hi, (size, lo, hi)
        if shaped_bytes(sizes) > MAX_SHAPED:
            budget_ok = False
            continue
        records = shape_packet(packet, sizes)
        assert all(type(r) is bytes and r for r in records), records
        assert strip_waste(b"".join(records)) == packet

    if budget_ok and scheme.stop <= MAX_LINES + 2:
        client = Session.client("password", padding=scheme)
        client.initiate()
        client.open_stream(b"\x01\x7f\x00\x00\x01\x00\x50", 0.0)
        out = client.data_to_send()
        assert out and all(type(r) is bytes for r in out)
        first = next((r for r in scheme.lines.get(0, ()) if r[0] != CHECK), (0, 0))
        lo, hi = (min(first[0], 0xFFFF), min(first[1], 0xFFFF))
        padding0 = len(out[0]) - 34
        assert padding0 == lo if lo == hi else lo <= padding0 <= hi, (padding0, first)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, MODES - 1)
    packet = build_packet(fdp)
    raw = structured_scheme(fdp) if mode == 1 else fdp.ConsumeBytes(fdp.remaining_bytes())
    check_scheme(raw, packet)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
