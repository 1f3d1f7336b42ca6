"""The padding scheme (PROTOCOL.md §5) and its application to a client's first packets.

A scheme is ``key=value`` text: ``stop=N`` says how many packets are shaped, and line
``k`` lists what packet ``k`` becomes: ``a-b`` is a record size drawn uniformly from
``[a, b)`` (exactly ``a`` when equal), ``c`` is a check mark that ends the list when
the packet's bytes are used up. Packet 0 is the auth preface: only the first size of line
``0`` is used, as the padding0 length. For later packets, :func:`shape_packet` cuts the
bytes of one packet into records of the drawn sizes and fills short ones with a Waste
frame, exactly as anytls-go's ``writeConn`` does. The md5 of the raw text is what
clients advertise (``padding-md5``) and servers compare.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from ..errors import PaddingSchemeError
from .constants import HEADER_SIZE
from .frame import waste_frame
from .settings import parse_kv

DEFAULT_SCHEME_TEXT = (
    b"stop=8\n"
    b"0=30-30\n"
    b"1=100-400\n"
    b"2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000\n"
    b"3=9-9,500-1000\n"
    b"4=500-1000\n"
    b"5=500-1000\n"
    b"6=500-1000\n"
    b"7=500-1000"
)

#: A check mark in a packet's size list.
CHECK = -1
#: Padding bytes one packet may add. Real schemes add a few KiB; this stops a hostile
#: pushed scheme (thousands of 64 KiB entries) from making one write hundreds of MB.
MAX_PADDING_PER_PACKET = 256 * 1024


#: Go's ``int`` on the 64-bit platforms the reference runs on.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _atoi(text: str) -> int | None:
    """Go ``strconv.Atoi``-like: optional sign then digits, nothing else, fitting 64 bits."""
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit():
        return None
    # Out of range for Go is an error too; dropping leading zeros and checking the length
    # first also keeps int() away from its 4300-digit limit, where it raises ValueError.
    digits = body.lstrip("0") or "0"
    if len(digits) > 19:
        return None
    value = -int(digits) if text[:1] == "-" else int(digits)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


@dataclass(frozen=True)
class PaddingScheme:
    """A parsed padding scheme; build it with :meth:`parse` or :meth:`default`."""

    raw: bytes
    """The exact text; its md5 is what goes on the wire."""
    stop: int
    """Packets numbered below this are shaped."""
    lines: dict[int, tuple[tuple[int, int], ...]] = field(repr=False)
    """Per packet number: ``(low, high)`` size ranges, ``(CHECK, CHECK)`` for check marks."""
    md5: str = field(repr=False)
    """Lower-case hex md5 of :attr:`raw`."""

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview) -> PaddingScheme:
        """Parse scheme text; raise :class:`PaddingSchemeError` when ``stop`` is missing or bad."""
        raw = bytes(raw)
        entries = parse_kv(raw)
        if not entries:
            raise PaddingSchemeError("padding scheme is empty or has no key=value lines")
        stop = _atoi(entries.get("stop", ""))
        if stop is None:
            raise PaddingSchemeError(
                "padding scheme needs a 'stop=N' line with an integer N "
                "(check for spaces or Windows line endings)"
            )
        lines: dict[int, tuple[tuple[int, int], ...]] = {}
        for key, value in entries.items():
            number = _atoi(key)
            if number is None or number < 0 or str(number) != key:
                continue
            items: list[tuple[int, int]] = []
            for part in value.split(","):
                if part == "c":
                    items.append((CHECK, CHECK))
                    continue
                lo_text, sep, hi_text = part.partition("-")
                if not sep:
                    continue
                lo, hi = _atoi(lo_text), _atoi(hi_text)
                if lo is None or hi is None or lo <= 0 or hi <= 0:
                    continue
                if lo > hi:
                    lo, hi = hi, lo
                items.append((lo, hi))
            lines[number] = tuple(items)
        return cls(raw=raw, stop=stop, lines=lines, md5=hashlib.md5(raw).hexdigest())

    @classmethod
    def default(cls) -> PaddingScheme:
        """The scheme every implementation starts with (md5 75cff2ad…)."""
        return _DEFAULT

    def sizes(self, packet: int) -> list[int]:
        """Draw the record sizes for ``packet`` (:data:`CHECK` marks included)."""
        out: list[int] = []
        for lo, hi in self.lines.get(packet, ()):
            if lo == CHECK:
                out.append(CHECK)
            elif lo == hi:
                out.append(lo)
            else:
                out.append(lo + secrets.randbelow(hi - lo))
        return out

    def preface_padding_length(self) -> int:
        """Length of padding0 in the auth preface: the first size of line ``0``."""
        for size in self.sizes(0):
            if size != CHECK:
                return size
        return 0


_DEFAULT = PaddingScheme.parse(DEFAULT_SCHEME_TEXT)


def shape_packet(data: bytes, sizes: list[int]) -> list[bytes]:
    """Split one packet into the records its padding ``sizes`` prescribe (§5.3).

    Each returned item is meant to be one TLS write (one record).
    """
    records: list[bytes] = []
    view = memoryview(data)
    pos = 0
    total = len(data)
    wasted = 0
    for size in sizes:
        remaining = total - pos
        if size == CHECK:
            if remaining == 0:
                break
            continue
        if remaining > size:
            records.append(bytes(view[pos : pos + size]))
            pos += size
        elif remaining > 0:
            pad = min(size - remaining - HEADER_SIZE, MAX_PADDING_PER_PACKET - wasted)
            chunk = bytes(view[pos:])
            records.append(chunk + waste_frame(pad) if pad > 0 else chunk)
            wasted += max(pad, 0)
            pos = total
        elif wasted < MAX_PADDING_PER_PACKET:
            pad = min(size, MAX_PADDING_PER_PACKET - wasted)
            records.append(waste_frame(pad))
            wasted += pad
        else:
            break
    if pos < total:
        records.append(bytes(view[pos:]))
    return records
