"""Wire constants of the AnyTLS frame layer (PROTOCOL.md §3) and named limits."""

from __future__ import annotations

import enum
import struct

#: Frame header: command u8, stream id u32be, data length u16be.
HEADER = struct.Struct(">BIH")
HEADER_SIZE = HEADER.size
#: Largest data length a frame can carry.
MAX_FRAME_DATA = 0xFFFF
#: Protocol version this implementation speaks.
PROTOCOL_VERSION = 2
#: Bytes of the auth preface before padding0: sha256 digest + u16 padding length.
PREFACE_FIXED_SIZE = 34


class Command(enum.IntEnum):
    """Frame commands; 7–10 exist from protocol version 2 on."""

    WASTE = 0
    SYN = 1
    PSH = 2
    FIN = 3
    SETTINGS = 4
    ALERT = 5
    UPDATE_PADDING_SCHEME = 6
    SYNACK = 7
    HEART_REQUEST = 8
    HEART_RESPONSE = 9
    SERVER_SETTINGS = 10


class Role(enum.Enum):
    """Which end of a session this is."""

    CLIENT = "client"
    SERVER = "server"
