"""tests/helpers/ja4.py against a published fingerprint: a Chrome 143 hello as
browserleaks.com reported it (ja4, and ja4_ro: its ciphers, extensions in wire order and
signature algorithms), rebuilt as bytes with GREASE added, parsed and fingerprinted."""

from __future__ import annotations

from tests.helpers.ja4 import is_grease, ja4, parse_client_hello

PUBLISHED_JA4 = "t13d1516h2_8daaf6152771_d8a2da3f94cd"
CIPHERS = "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035"
EXTENSIONS = "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b"
SIGALGS = "0403,0804,0401,0503,0805,0501,0806,0601"


def _u16s(text: str) -> list[int]:
    return [int(x, 16) for x in text.split(",")]


def _vec(data: bytes, length_bytes: int) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def _u16_bytes(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def _extension(ext: int) -> bytes:
    body = b""
    if ext == 0x0000:
        body = _vec(b"\x00" + _vec(b"tls.browserleaks.com", 2), 2)
    elif ext == 0x0010:
        body = _vec(_vec(b"h2", 1) + _vec(b"http/1.1", 1), 2)
    elif ext == 0x002B:
        body = _vec(_u16_bytes([0x3A3A, 0x0304, 0x0303]), 1)
    elif ext == 0x000D:
        body = _vec(_u16_bytes(_u16s(SIGALGS)), 2)
    return ext.to_bytes(2, "big") + _vec(body, 2)


def _hello() -> bytes:
    extensions = [0x1A1A, *_u16s(EXTENSIONS), 0x4A4A]
    body = (
        b"\x03\x03"
        + bytes(32)
        + _vec(bytes(32), 1)
        + _vec(_u16_bytes([0x8A8A, *_u16s(CIPHERS)]), 2)
        + b"\x01\x00"
        + _vec(b"".join(_extension(e) for e in extensions), 2)
    )
    return b"\x01" + _vec(body, 3)


def test_ja4_of_a_published_chrome_hello() -> None:
    hello = parse_client_hello(_hello())
    assert hello.sni == "tls.browserleaks.com"
    assert hello.alpn == [b"h2", b"http/1.1"]
    assert hello.supported_versions == [0x3A3A, 0x0304, 0x0303]
    assert [e for e in hello.extensions if not is_grease(e)] == _u16s(EXTENSIONS)
    assert ja4(hello) == PUBLISHED_JA4


def test_grease_values() -> None:
    assert all(is_grease(0x0A0A + 0x1010 * i) for i in range(16))
    assert not any(is_grease(v) for v in (0x0000, 0x1301, 0x0A1A, 0xFAFB))
