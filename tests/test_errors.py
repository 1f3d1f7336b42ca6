"""Typed failure reasons: the one parser of servers' error text, and the one mapping of
reasons to SOCKS5 replies and HTTP statuses."""

from __future__ import annotations

import pytest

from anytls.core.socks5 import Reply
from anytls.errors import FailureReason, SessionClosedError, StreamOpenError
from anytls.inbound.mixed import SOCKS_REPLIES, http_status_for, socks_reply_for


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # sing-box / anytls-go (Go net errors) and our server, which speaks the same forms
        ("dial tcp 127.0.0.1:9: connect: connection refused", FailureReason.REFUSED),
        ("dial tcp 10.0.0.1:80: i/o timeout", FailureReason.TIMED_OUT),
        (
            "dial tcp 10.0.0.1:80: connect: network is unreachable",
            FailureReason.NETWORK_UNREACHABLE,
        ),
        ("dial tcp 10.0.0.1:80: connect: no route to host", FailureReason.HOST_UNREACHABLE),
        ("lookup nowhere.invalid: no such host", FailureReason.HOST_UNREACHABLE),
        (
            "destination 127.0.0.1:80 is not allowed (private or local address)",
            FailureReason.NOT_ALLOWED,
        ),
        ("too many streams (limit 3)", FailureReason.OTHER),
    ],
)
def test_remote_text_is_read_once_into_a_reason(text: str, reason: FailureReason) -> None:
    assert FailureReason.from_remote_text(text) is reason


def test_every_reason_has_a_socks_reply() -> None:
    assert set(SOCKS_REPLIES) == set(FailureReason)


def test_replies_follow_the_reason_not_the_wording() -> None:
    refused = StreamOpenError("whatever the words", FailureReason.REFUSED)
    assert socks_reply_for(refused) is Reply.CONNECTION_REFUSED
    assert http_status_for(refused) == (502, "Bad Gateway")
    slow = StreamOpenError("no words about it", FailureReason.TIMED_OUT)
    assert socks_reply_for(slow) is Reply.TTL_EXPIRED
    assert http_status_for(slow) == (504, "Gateway Timeout")
    # A failed session never blames the destination in SOCKS, even if the text would.
    session = SessionClosedError("cannot connect: connection refused", FailureReason.REFUSED)
    assert socks_reply_for(session) is Reply.GENERAL_FAILURE
    timed_out = SessionClosedError("connecting timed out", FailureReason.TIMED_OUT)
    assert http_status_for(timed_out) == (504, "Gateway Timeout")
