"""Destination policy: which addresses count as private (issue 17 #11)."""

from __future__ import annotations

import dataclasses

import pytest

from anytls.aio.outbound import is_private
from anytls.aio.server import ServerConfig

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",  # ULA
    "fe80::1",
    "fe80::1%lo",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:100.64.0.1",
    "::127.0.0.1",  # IPv4-compatible
    "::10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "100.128.0.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("ip", PRIVATE)
def test_private_addresses_are_refused(ip: str) -> None:
    assert is_private(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip: str) -> None:
    assert not is_private(ip)


def test_library_default_refuses_private_destinations() -> None:
    # The dataclass field itself (tests/conftest.py flips the constructor default).
    field = {f.name: f for f in dataclasses.fields(ServerConfig)}["allow_private"]
    assert field.default is False
    assert ServerConfig(users={"u": "p"}, allow_private=False).refuse_private
    assert not ServerConfig(users={"u": "p"}, allow_private=True).refuse_private
    assert ServerConfig(users={"u": "p"}, allow_private=True, deny_private=True).refuse_private
