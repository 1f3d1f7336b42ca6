"""The likely causes the client adds to failures (``anytls.aio.diagnose``)."""

from __future__ import annotations

from anytls.aio.diagnose import cause, hint
from anytls.errors import FailureReason, SessionClosedError, StreamClosedError, StreamOpenError


def test_a_destination_failure_does_not_blame_the_server() -> None:
    # The server reached the destination's network and says why it failed: asking whether
    # the AnyTLS server runs, or is firewalled, would send the user the wrong way.
    refused = StreamOpenError(
        "remote: dial tcp 127.0.0.1:1: connect: connection refused", FailureReason.REFUSED
    )
    timed_out = StreamOpenError(
        "remote: dial tcp 10.0.0.1:80: i/o timeout", FailureReason.TIMED_OUT
    )
    assert hint(refused) == "" and hint(timed_out) == ""
    # ... while the same words about the session with the server keep their hint
    assert "is the server running" in hint(ConnectionRefusedError("connection refused"))


def test_a_private_destination_names_the_server_flag() -> None:
    denied = StreamOpenError(
        "remote: destination 127.0.0.1:80 is not allowed (private or local address)",
        FailureReason.NOT_ALLOWED,
    )
    assert "--allow-private" in hint(denied)
    other = StreamOpenError("remote: forbidden by rule", FailureReason.NOT_ALLOWED)
    assert hint(other) == ""  # (another server's words: no advice about our flag)


def test_a_silent_close_mentions_the_login_lockout() -> None:
    closed = SessionClosedError("session with 127.0.0.1:8443 ended: closed")
    assert cause(closed) == "auth"
    assert "wrong password" in hint(closed) and "--auth-fail-limit" in hint(closed)


def test_a_stream_that_ended_is_not_blamed_on_the_password() -> None:
    # A stream the server ended (e.g. no destination in time) says nothing about the login.
    ended = StreamClosedError("stream 3 ended before the server acknowledged it")
    assert hint(ended) == ""
    # and a session error that already gives the likely causes gets no second copy
    said = SessionClosedError(
        "the server closed the connection without a word: most likely a wrong password"
    )
    assert hint(said) == ""
