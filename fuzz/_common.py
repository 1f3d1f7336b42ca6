"""Helpers shared by the Atheris harnesses in this folder (not a harness itself).

Input layout used by every harness: the control values (mode, split points, ...) are read
with ``FuzzedDataProvider.ConsumeIntInRange``, which takes its bytes from the *end* of the
input, and the payload is whatever is left at the front. A realistic byte stream with a few
control bytes appended (see :func:`trailer`) is therefore a good seed, and ``make_corpus.py``
writes the seeds that way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

#: Most split points one input can ask for.
MAX_SPLITS = 8
#: Split points are drawn from 0..SPLIT_RANGE and taken modulo ``len(payload) + 1``.
SPLIT_RANGE = 0xFFFF
#: Chunk types a split feed may use (the APIs accept all three).
CHUNK_TYPES = (bytes, bytearray, memoryview)


def consume_splits(fdp) -> tuple[list[int], int]:
    """Read ``(split points, chunk type index)`` from the end of the input."""
    count = fdp.ConsumeIntInRange(0, MAX_SPLITS)
    points = [fdp.ConsumeIntInRange(0, SPLIT_RANGE) for _ in range(count)]
    kind = fdp.ConsumeIntInRange(0, len(CHUNK_TYPES) - 1)
    return points, kind


def split(payload: bytes, points: Iterable[int], kind: int = 0) -> list:
    """Cut ``payload`` at ``points`` (mod len+1); empty chunks are kept on purpose."""
    cuts = sorted(p % (len(payload) + 1) for p in points)
    make = CHUNK_TYPES[kind % len(CHUNK_TYPES)]
    chunks = []
    start = 0
    for cut in [*cuts, len(payload)]:
        chunks.append(make(payload[start:cut]))
        start = cut
    return chunks


def _nbytes(lo: int, hi: int) -> int:
    span = hi - lo
    n = 0
    while span >> (8 * n):
        n += 1
    return n


def trailer(specs: Sequence[tuple[int, int, int]]) -> bytes:
    """Bytes to append to a payload so that successive ``ConsumeIntInRange(lo, hi)`` calls
    return the given values; ``specs`` is ``[(value, lo, hi), ...]`` in consumption order.

    libFuzzer/Atheris read each integer from the end of the input, most significant byte
    first, and reduce it modulo the range, so the encoding is the big-endian bytes of
    ``value - lo``, reversed as a whole.
    """
    out = bytearray()
    for value, lo, hi in specs:
        assert lo <= value <= hi
        out += (value - lo).to_bytes(_nbytes(lo, hi), "big")
    return bytes(reversed(out))


def split_specs(points: Sequence[int], kind: int = 0) -> list[tuple[int, int, int]]:
    """The ``trailer`` specs matching :func:`consume_splits`."""
    specs = [(len(points), 0, MAX_SPLITS)]
    specs += [(p, 0, SPLIT_RANGE) for p in points]
    specs.append((kind, 0, len(CHUNK_TYPES) - 1))
    return specs


def check_bytes_list(out) -> None:
    """``data_to_send()`` must return a list of bytes objects."""
    assert isinstance(out, list), type(out)
    for item in out:
        assert isinstance(item, bytes), type(item)


def unscoped(address):
    """``address`` without an IPv6 zone ("fe80::1%eth0" -> "fe80::1").

    A *domain* that spells a scoped IPv6 literal is normalised to that IP with its zone
    (as sing's ParseSocksaddr does), but the wire format has no room for a zone, so
    ``encode()`` drops it: round trips are compared modulo the zone (see FINDINGS.md).
    """
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return address  # a domain name, even one like "a.%b:c"
    if getattr(ip, "scope_id", None) is None:
        return address
    return type(address)(address.host.partition("%")[0], address.port)
