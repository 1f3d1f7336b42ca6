"""Frame encoding and decoding (PROTOCOL.md §3).

A frame is a 7-byte header (command u8, stream id u32be, length u16be) followed by
``length`` data bytes. The encoders build frames as ``bytes``; :class:`FrameDecoder`
splits a received byte stream back into frames, straight out of the caller's buffer.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import LocalProtocolError
from .constants import HEADER, HEADER_SIZE, MAX_FRAME_DATA, Command

_join = b"".join
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from
_PSH = int(Command.PSH)

#: ``on_data(stream_id, chunk)``: part of a PSH frame's data, as it arrives.
DataHandler = Callable[[int, memoryview], None]
#: ``on_frame(command, stream_id, payload) -> stop``: one whole non-PSH frame; returning
#: True stops decoding (the session ended) and reports everything as consumed.
FrameHandler = Callable[[int, int, memoryview], bool]


class FrameDecoder:
    """Splits the received byte stream into frames.

    PSH data is handed on as it arrives, without waiting for the whole frame, so a 64 KiB
    frame trickling in costs no 64 KiB buffer; every other frame is delivered whole (the
    caller keeps at most 7 + 65535 unconsumed bytes). Every length is honoured, also on
    frames that should carry none, so a sloppy peer cannot desynchronise the stream.
    """

    __slots__ = ("frames", "psh_left", "psh_stream")

    def __init__(self) -> None:
        #: Whole frame headers decoded so far (any command).
        self.frames = 0
        self.psh_stream = 0
        self.psh_left = 0

    def whole_data_frame(self, view: memoryview) -> int:
        """The stream id if ``view`` is exactly one whole PSH frame and no frame is in
        progress (the usual small read: a request, a datagram), else 0. Its data is then
        ``view[HEADER_SIZE:]``, consumed; otherwise nothing is, and :meth:`decode` takes it.
        """
        if self.psh_left or len(view) <= HEADER_SIZE or view[0] != _PSH:
            return 0
        _, stream_id, length = _unpack_from(view)
        if length != len(view) - HEADER_SIZE or not stream_id:
            return 0
        self.frames += 1
        return stream_id  # type: ignore[no-any-return]

    def decode(self, view: memoryview, on_data: DataHandler, on_frame: FrameHandler) -> int:
        """Decode what ``view`` holds; return how many bytes were consumed.

        The caller keeps the rest and passes it again, with more bytes, next time.
        """
        pos = 0
        end = len(view)
        while True:
            if self.psh_left:
                take = min(self.psh_left, end - pos)
                if not take:
                    return pos
                on_data(self.psh_stream, view[pos : pos + take])
                pos += take
                self.psh_left -= take
                continue
            if end - pos < HEADER_SIZE:
                return pos
            command, stream_id, length = _unpack_from(view, pos)
            if command == _PSH:
                self.frames += 1
                pos += HEADER_SIZE
                self.psh_stream = stream_id
                self.psh_left = length
                continue
            if end - pos - HEADER_SIZE < length:
                return pos
            self.frames += 1
            start = pos + HEADER_SIZE
            pos = start + length
            if on_frame(command, stream_id, view[start:pos]):
                return end


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
