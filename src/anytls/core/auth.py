"""The auth preface a client sends first (PROTOCOL.md §2).

``sha256(password)`` (32 raw bytes), padding0 length (u16be), padding0 (zero bytes). The
client writes it as one TLS record; Go servers parse it from a single read, so it must be.
Our server is more tolerant: :class:`PrefaceReader` accepts it split over many reads and
coalesced with the frames that follow, and compares hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping

from ..errors import AuthenticationError
from .constants import PREFACE_FIXED_SIZE

_U16 = struct.Struct(">H")


def password_hash(password: str) -> bytes:
    """The 32-byte digest that identifies a password on the wire."""
    return hashlib.sha256(password.encode("utf-8")).digest()


def build_preface(password: str, padding_length: int) -> bytes:
    """Return the full auth preface for ``password`` with ``padding_length`` zero bytes."""
    padding_length = max(0, min(padding_length, 0xFFFF))
    return password_hash(password) + _U16.pack(padding_length) + bytes(padding_length)


class PrefaceReader:
    """Incremental server-side preface check against a table of users.

    ``users`` maps user name to password. :meth:`feed` returns the user name once the
    whole preface has arrived (``None`` while more bytes are needed) and raises
    :class:`AuthenticationError` for an unknown hash. Bytes after the preface are kept
    in :attr:`leftover`.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = [(name, password_hash(pw)) for name, pw in users.items()]
        self._buf = bytearray()
        self._user: str | None = None
        self._padding = -1
        self.leftover = b""

    def refuse_all(self) -> None:
        """Fail this preface whatever password it carries, exactly as a wrong one fails.

        The same number of comparisons runs, against random hashes no password matches.
        """
        self._users = [(name, secrets.token_bytes(32)) for name, _ in self._users]

    def feed(self, data: bytes | bytearray | memoryview) -> str | None:
        """Consume bytes; see the class docstring."""
        if self._user is None:
            self._buf += data
            if len(self._buf) < PREFACE_FIXED_SIZE:
                return None
            digest = bytes(self._buf[:32])
            matched: str | None = None
            # Compare against every user so timing says nothing about which one is near.
            for name, expected in self._users:
                if hmac.compare_digest(digest, expected) and matched is None:
                    matched = name
            if matched is None:
                raise AuthenticationError("unknown password hash in the auth preface")
            self._user = matched
            (self._padding,) = _U16.unpack_from(self._buf, 32)
            del self._buf[:PREFACE_FIXED_SIZE]
        else:
            self._buf += data
        if len(self._buf) < self._padding:
            return None
        self.leftover = bytes(self._buf[self._padding :])
        self._buf.clear()
        return self._user
