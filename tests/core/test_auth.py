from __future__ import annotations

import pytest

from anytls.core.auth import PrefaceReader, build_preface
from anytls.errors import AuthenticationError

PASSWORD_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"


def test_preface_bytes() -> None:
    preface = build_preface("password", 30)
    assert preface.hex() == PASSWORD_HASH + "001e" + "00" * 30
    assert len(preface) == 64


def test_byte_at_a_time_with_trailing_frames() -> None:
    data = build_preface("pw2", 5) + b"\x04rest"
    reader = PrefaceReader({"a": "pw1", "b": "pw2"})
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    user = next(r for r in results if r is not None)
    assert user == "b"
    # the user is reported exactly when the padding is complete
    assert results.index("b") == len(build_preface("pw2", 5)) - 1
    assert reader.leftover == b""


def test_coalesced_leftover() -> None:
    reader = PrefaceReader({"a": "pw"})
    assert reader.feed(build_preface("pw", 0) + b"frames") == "a"
    assert reader.leftover == b"frames"


def test_wrong_password() -> None:
    reader = PrefaceReader({"a": "pw"})
    with pytest.raises(AuthenticationError):
        reader.feed(build_preface("nope", 30))


def test_short_preface_needs_more() -> None:
    reader = PrefaceReader({"a": "pw"})
    assert reader.feed(build_preface("pw", 30)[:40]) is None


def test_user_table_finds_users_by_digest() -> None:
    from anytls.core.auth import UserTable, password_hash

    users = {f"u{i}": f"pw{i}" for i in range(10_000)}
    table = UserTable(users)
    assert len(table) == 10_000 and table["u7"] == "pw7" and list(table)[:2] == ["u0", "u1"]
    assert table.lookup(password_hash("pw9999")) == "u9999"
    assert table.lookup(password_hash("nope")) is None
    # Two users with one password: the first one wins, as the list order says.
    assert UserTable({"a": "same", "b": "same"}).lookup(password_hash("same")) == "a"
    reader = PrefaceReader(table)
    assert reader.feed(build_preface("pw42", 3) + b"rest") == "u42"
    assert reader.leftover == b"rest"
