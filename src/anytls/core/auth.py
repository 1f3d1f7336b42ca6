"""The auth preface a client sends first (PROTOCOL.md §2).

``sha256(password)`` (32 raw bytes), padding0 length (u16be), padding0 (zero bytes). The
client writes it as one TLS record; Go servers parse it from a single read, so it must be.
Our server is more tolerant: :class:`PrefaceReader` accepts it split over many reads and
coalesced with the frames that follow, and finds the user by its digest in O(1).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping

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


class UserTable(Mapping[str, str]):
    """User name → password, with the password digests indexed once for O(1) lookup.

    Build it once per user list (the server does, on start and on every update) and hand
    it to every session: a :class:`PrefaceReader` given a plain mapping hashes every
    password for each connection, which costs 10 000 SHA-256 runs per handshake at 10 000
    users. The lookup is a dict probe on the 32-byte digest the client sent (SipHash
    keyed per process, then one comparison), as sing-box and anytls-go do with a map.
    """

    __slots__ = ("_by_hash", "_users")

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)
        self._by_hash: dict[bytes, str] = {}
        for name, password in self._users.items():
            self._by_hash.setdefault(password_hash(password), name)

    def __getitem__(self, name: str) -> str:
        return self._users[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def lookup(self, digest: bytes) -> str | None:
        """The user whose password hashes to ``digest``, if any."""
        return self._by_hash.get(digest)


class PrefaceReader:
    """Incremental server-side preface check against a table of users.

    ``users`` maps user name to password (a :class:`UserTable` avoids re-hashing).
    :meth:`feed` returns the user name once the whole preface has arrived (``None`` while
    more bytes are needed) and raises :class:`AuthenticationError` for an unknown hash.
    Bytes after the preface are kept in :attr:`leftover`.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = users if isinstance(users, UserTable) else UserTable(users)
        self._buf = bytearray()
        self._user: str | None = None
        self._padding = -1
        self.leftover = b""

    def refuse_all(self) -> None:
        """Fail this preface whatever password it carries, exactly as a wrong one fails
        (the same one dictionary lookup runs, in a table no hash is in)."""
        self._users = UserTable({})

    def feed(self, data: bytes | bytearray | memoryview) -> str | None:
        """Consume bytes; see the class docstring."""
        if self._user is None:
            self._buf += data
            if len(self._buf) < PREFACE_FIXED_SIZE:
                return None
            digest = bytes(self._buf[:32])
            matched = self._users.lookup(digest)
            if matched is None:
                raise AuthenticationError("unknown password hash in the auth preface", digest)
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
