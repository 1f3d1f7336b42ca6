"""Failed-authentication counting per source (issue 17 #13)."""

from __future__ import annotations

from anytls.core.auth_limit import AuthFailureLimiter, source_key


def test_sources_are_ipv4_addresses_and_ipv6_slash_64() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_limit_per_window_and_reported_once() -> None:
    limiter = AuthFailureLimiter(window=60)
    reached = [limiter.failed("2001:db8::1", 100.0 + i, 3) for i in range(5)]
    assert reached == [False, False, True, False, False]
    assert limiter.limited("2001:db8::ffff", 110.0, 3)  # same /64
    assert not limiter.limited("192.0.2.1", 110.0, 3)
    assert not limiter.limited("2001:db8::1", 160.0, 3)  # a new minute
    assert not limiter.failed("2001:db8::1", 160.0, 3)
    assert not limiter.limited("2001:db8::1", 160.0, 3)


def test_zero_means_no_limit_and_the_table_is_bounded() -> None:
    limiter = AuthFailureLimiter(max_sources=100)
    assert not any(limiter.failed("192.0.2.1", 0.0, 0) for _ in range(50))
    assert not limiter.limited("192.0.2.1", 0.0, 0) and len(limiter) == 0
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", 0.0, 10)
    assert len(limiter) == 100
