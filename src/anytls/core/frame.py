"""Frame encoding (PROTOCOL.md §3).

A frame is a 7-byte header (command u8, stream id u32be, length u16be) followed by
``length`` data bytes. Decoding lives in :mod:`anytls.core.session`, which parses
frames straight out of the received buffer; this module builds them.
"""

from __future__ import annotations

from ..errors import LocalProtocolError
from .constants import HEADER, MAX_FRAME_DATA, Command

_join = b"".join
_pack = HEADER.pack


def encode_frame(command: int, stream_id: int, data: bytes | bytearray | memoryview = b"") -> bytes:
    """Return one frame; ``data`` must fit the 16-bit length field."""
    n = len(data)
    if n > MAX_FRAME_DATA:
        raise LocalProtocolError(f"frame data of {n} bytes exceeds the limit of {MAX_FRAME_DATA}")
    header = _pack(command, stream_id, n)
    # join copies once and never zero-fills, unlike building a bytearray first
    return _join((header, data)) if n else header


def encode_data_frames(stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """Return ``data`` as consecutive PSH frames of at most 65535 data bytes each."""
    n = len(data)
    if n <= MAX_FRAME_DATA:
        return _join((_pack(Command.PSH, stream_id, n), data))
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, n, MAX_FRAME_DATA):
        chunk = view[start : start + MAX_FRAME_DATA]
        parts.append(_pack(Command.PSH, stream_id, len(chunk)))
        parts.append(chunk)
    return _join(parts)


def waste_frame(data_length: int) -> bytes:
    """Return a padding (cmdWaste) frame carrying ``data_length`` zero bytes."""
    return encode_frame(Command.WASTE, 0, bytes(min(data_length, MAX_FRAME_DATA)))
