"""Frame encoding (PROTOCOL.md §3).

A frame is a 7-byte header (command u8, stream id u32be, length u16be) followed by
``length`` data bytes. Decoding lives in :mod:`anytls.core.session`, which parses
frames straight out of the received buffer; this module builds them.
"""

from __future__ import annotations

from ..errors import LocalProtocolError
from .constants import HEADER, HEADER_SIZE, MAX_FRAME_DATA, Command

_pack_into = HEADER.pack_into
_pack = HEADER.pack


def encode_frame(command: int, stream_id: int, data: bytes | bytearray | memoryview = b"") -> bytes:
    """Return one frame; ``data`` must fit the 16-bit length field."""
    n = len(data)
    if n > MAX_FRAME_DATA:
        raise LocalProtocolError(f"frame data of {n} bytes exceeds the limit of {MAX_FRAME_DATA}")
    if not n:
        return _pack(command, stream_id, 0)
    out = bytearray(HEADER_SIZE + n)
    _pack_into(out, 0, command, stream_id, n)
    out[HEADER_SIZE:] = data
    return bytes(out)


def encode_data_frames(stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """Return ``data`` as consecutive PSH frames of at most 65535 data bytes each."""
    n = len(data)
    if n <= MAX_FRAME_DATA:
        out = bytearray(HEADER_SIZE + n)
        _pack_into(out, 0, Command.PSH, stream_id, n)
        out[HEADER_SIZE:] = data
        return bytes(out)
    view = memoryview(data)
    nframes = -(-n // MAX_FRAME_DATA)
    out = bytearray(n + nframes * HEADER_SIZE)
    pos = 0
    for start in range(0, n, MAX_FRAME_DATA):
        chunk = view[start : start + MAX_FRAME_DATA]
        size = len(chunk)
        _pack_into(out, pos, Command.PSH, stream_id, size)
        out[pos + HEADER_SIZE : pos + HEADER_SIZE + size] = chunk
        pos += HEADER_SIZE + size
    return bytes(out)


def waste_frame(data_length: int) -> bytes:
    """Return a padding (cmdWaste) frame carrying ``data_length`` zero bytes."""
    return encode_frame(Command.WASTE, 0, bytes(min(data_length, MAX_FRAME_DATA)))
