"""The kept-alive absolute-URI forwarding state machine (sans-IO)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.address import Address
from anytls.core.http_forward import (
    Action,
    CloseLocal,
    CloseOrigin,
    Handoff,
    HttpForward,
    OpenOrigin,
    PauseLocal,
    ToLocal,
    ToOrigin,
    end_to_end,
    origin_form,
)

GET_A = b"GET http://a.example/one?x=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n"
GET_A2 = b"GET http://a.example/two HTTP/1.1\r\nHost: a.example\r\n\r\n"
GET_B = b"GET http://b.example:8080/three HTTP/1.1\r\nHost: b.example:8080\r\n\r\n"
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def _local(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ToLocal))


def _origin(actions: list[Action]) -> bytes:
    out = b""
    for a in actions:
        if isinstance(a, OpenOrigin | ToOrigin):
            out += a.data
    return out


def _kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_two_requests_to_one_origin_share_its_connection() -> None:
    f = HttpForward()
    first = f.receive_local(GET_A)
    assert _kinds(first) == ["OpenOrigin"]
    open_ = first[0]
    assert isinstance(open_, OpenOrigin)
    assert open_.address == Address("a.example", 80) and open_.method == "GET"
    assert open_.data == b"GET /one?x=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n"
    assert _local(f.receive_origin(OK_HI)) == OK_HI
    second = f.receive_local(GET_A2)
    assert _kinds(second) == ["ToOrigin"]  # the same origin connection, no new one
    assert _origin(second) == b"GET /two HTTP/1.1\r\nHost: a.example\r\n\r\n"
    assert _local(f.receive_origin(OK_HI)) == OK_HI
    assert f.requests == 2 and f.origin_requests == 2 and not f.closed


def test_another_origin_ends_the_connection_and_opens_one() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(OK_HI)
    actions = f.receive_local(GET_B)
    assert _kinds(actions) == ["CloseOrigin", "OpenOrigin"]
    assert isinstance(actions[1], OpenOrigin)
    assert actions[1].address == Address("b.example", 8080)
    assert actions[1].data.startswith(b"GET /three HTTP/1.1\r\nHost: b.example:8080\r\n")


def test_hop_by_hop_and_proxy_headers_stay_on_their_hop() -> None:
    f = HttpForward()
    request = (
        b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nProxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nConnection: keep-alive, X-Private\r\n"
        b"X-Private: secret\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n"
    )
    head = _origin(f.receive_local(request))
    assert head == b"GET / HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n"
    reply = (
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\nServer: origin\r\n\r\nok"
    )
    actions = f.receive_origin(reply)
    # the origin's "Connection: close" is its own business: the client's connection stays
    assert _local(actions) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: origin\r\n\r\nok"
    assert _kinds(actions)[-1] == "CloseOrigin" and not f.closed
    assert _kinds(f.receive_local(GET_A2)) == ["OpenOrigin"]  # a fresh origin connection


def test_a_close_delimited_response_reaches_an_http11_client_chunked() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    body = f.receive_origin(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nsome bytes")
    assert _local(body) == (
        b"HTTP/1.1 200 OK\r\nServer: old\r\nTransfer-Encoding: chunked\r\n\r\na\r\nsome bytes\r\n"
    )
    end = f.origin_ended()  # the origin's close ends the body
    assert _local(end) == b"0\r\n\r\n"
    assert _kinds(end) == ["ToLocal", "CloseOrigin"] and not f.closed


def test_pipelined_requests_wait_for_the_response_before_them() -> None:
    f = HttpForward()
    actions = f.receive_local(GET_A + GET_A2)
    assert _kinds(actions) == ["OpenOrigin", "PauseLocal"]
    assert actions[1] == PauseLocal(True)
    actions = f.receive_origin(OK_HI)
    assert _kinds(actions) == ["ToLocal", "ToLocal", "PauseLocal", "ToOrigin"]
    assert actions[2] == PauseLocal(False)
    assert _origin(actions) == b"GET /two HTTP/1.1\r\nHost: a.example\r\n\r\n"


def test_the_client_asking_to_close_closes_after_the_response() -> None:
    f = HttpForward()
    f.receive_local(GET_A.replace(b"User-Agent", b"Connection: close\r\nUser-Agent"))
    actions = f.receive_origin(OK_HI)
    assert _local(actions).startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in _local(actions).lower()
    assert actions[-1] == CloseLocal() and f.closed


def test_an_http10_client_gets_a_closed_connection() -> None:
    f = HttpForward()
    f.receive_local(b"GET http://a.example/ HTTP/1.0\r\n\r\n")
    actions = f.receive_origin(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    assert _local(actions) == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi"
    assert isinstance(actions[-1], CloseLocal) and f.closed


def test_connect_after_a_forwarded_request_is_handed_off_with_what_followed() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(OK_HI)
    actions = f.receive_local(
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03"
    )
    assert _kinds(actions) == ["CloseOrigin", "Handoff"]
    assert actions[1] == Handoff(
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03"
    )
    assert f.closed and f.receive_local(b"more") == []


def test_an_upgrade_request_is_handed_off() -> None:
    f = HttpForward()
    request = (
        b"GET http://a.example/ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n"
    )
    assert f.receive_local(request) == [Handoff(request)]


def test_every_request_needs_the_credentials() -> None:
    token = base64.b64encode(b"u:p").decode()
    f = HttpForward(auth=("u", "p"))
    with_auth = GET_A.replace(
        b"User-Agent", f"Proxy-Authorization: Basic {token}\r\nUser-Agent".encode()
    )
    opened = f.receive_local(with_auth)
    assert _kinds(opened) == ["OpenOrigin"]
    assert b"proxy-authorization" not in _origin(opened).lower()  # never sent on
    f.receive_origin(OK_HI)
    actions = f.receive_local(GET_A2)  # no credentials this time
    assert _local(actions).startswith(b"HTTP/1.1 407 ")
    assert _kinds(actions) == ["ToLocal", "CloseOrigin", "CloseLocal"] and f.closed


def test_a_garbled_response_becomes_a_502_on_a_new_origin_connection() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    actions = f.receive_origin(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert _local(actions).startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert _local(actions).endswith(
        b"anytls-client: the origin did not answer in HTTP/1.x (its answer began "
        b"'SSH-2.0-OpenSSH\\r\\n\\r\\n')\n"
    )
    assert _kinds(actions) == ["CloseOrigin", "ToLocal", "CloseLocal"]


def test_an_origin_that_closes_without_answering_is_said_in_words() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    actions = f.origin_ended()
    assert _local(actions).endswith(
        b"anytls-client: the origin closed the connection without answering\n"
    )


def test_a_reused_origin_connection_that_ends_unanswered_closes_without_a_response() -> None:
    # The origin may close an idle connection just as the next request goes out: the
    # client then retries on a new connection, which a 502 would prevent.
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(OK_HI)
    f.receive_local(GET_A2)
    actions = f.origin_ended()
    assert _local(actions) == b""
    assert isinstance(actions[-1], CloseLocal) and not actions[-1].reset


def test_a_response_cut_short_resets_the_client() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    actions = f.origin_ended()
    assert isinstance(actions[-1], CloseLocal) and actions[-1].reset


def test_an_origin_closing_an_idle_connection_is_forgotten() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(OK_HI)
    assert f.origin_ended() == [CloseOrigin()]
    assert not f.closed
    assert _kinds(f.receive_local(GET_A2)) == ["OpenOrigin"]


def test_request_bodies_are_framed_for_the_origin() -> None:
    f = HttpForward()
    post = b"POST http://a.example/up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhel"
    assert _origin(f.receive_local(post)).endswith(b"Content-Length: 5\r\n\r\nhel")
    assert _origin(f.receive_local(b"lo")) == b"lo"
    f.receive_origin(OK_HI)
    chunked = (
        b"POST http://a.example/up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert _origin(f.receive_local(chunked)).endswith(
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )


def test_head_and_informational_responses() -> None:
    f = HttpForward()
    f.receive_local(b"HEAD http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
    actions = f.receive_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert _local(actions) == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    post = (
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    assert _kinds(f.receive_local(post)) == ["ToOrigin"]  # the HEAD's connection is reused
    assert (
        _local(f.receive_origin(b"HTTP/1.1 100 Continue\r\n\r\n"))
        == b"HTTP/1.1 100 Continue\r\n\r\n"
    )


def test_a_request_that_is_not_for_a_proxy_gets_a_400() -> None:
    f = HttpForward()
    actions = f.receive_local(b"GET /local/path HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert _local(actions).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(actions[-1], CloseLocal) and f.closed


def test_origin_form() -> None:
    assert origin_form(b"http://a.example") == (Address("a.example", 80), b"a.example", b"/")
    assert origin_form(b"https://[::1]:8443/x?y") == (Address("::1", 8443), b"[::1]:8443", b"/x?y")
    for bad in (b"/relative", b"http://:80/", b"http://a.example:99999/", "http://é/".encode()):
        try:
            origin_form(bad)
        except ValueError as exc:
            assert str(exc)
        else:
            raise AssertionError(bad)


def test_end_to_end_headers() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-A"),
        (b"X-A", b"1"),
        (b"TE", b"trailers"),
        (b"X-B", b"2"),
    ]
    assert end_to_end(headers) == [(b"X-B", b"2")]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(GET_A + GET_A2) - 1), max_size=6))
def test_how_the_requests_are_cut_does_not_change_what_the_origin_gets(cuts: list[int]) -> None:
    data = GET_A + GET_A2
    points = sorted(set(cuts))
    pieces = [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]
    f = HttpForward()
    sent = b""
    for piece in pieces:
        sent += _origin(f.receive_local(piece))
    sent += _origin(f.receive_origin(OK_HI))
    assert sent == (
        b"GET /one?x=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: a.example\r\n\r\n"
    )


_PIECES = st.sampled_from(
    [
        GET_A,
        GET_A2,
        GET_B,
        OK_HI,
        b"HTTP/1.0 200 OK\r\n\r\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc",
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n",
        b"",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.one_of(_PIECES, st.binary(max_size=40))),
        max_size=12,
    )
)
def test_any_bytes_from_either_side_give_actions_never_an_exception(
    steps: list[tuple[bool, bytes]],
) -> None:
    f = HttpForward(auth=None)
    for from_local, data in steps:
        if from_local:
            actions = f.receive_local(data)
        else:
            actions = f.receive_origin(data) if data else f.origin_ended()
        assert all(isinstance(a, Action) for a in actions)
        if any(isinstance(a, CloseLocal | Handoff) for a in actions):
            assert f.closed
    # once closed, nothing more comes out of it
    if f.closed:
        assert f.receive_local(GET_A) == [] and f.receive_origin(OK_HI) == []


# ------------------------------------------------------------------ found in review
def test_an_unsolicited_response_on_an_idle_origin_connection_is_not_passed_on() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_origin(OK_HI)
    # some servers send this before closing an idle connection
    late = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert f.receive_origin(late) == [CloseOrigin()]
    assert f.origin_ended() == []  # that connection is already forgotten
    actions = f.receive_local(GET_A2)
    assert _kinds(actions) == ["OpenOrigin"] and not f.closed
    assert _local(f.receive_origin(OK_HI)) == OK_HI


def test_bytes_past_a_response_end_that_connection() -> None:
    # An early answer to a POST, then a stray byte: that connection ends at once (its
    # close must not hide behind the byte, nor further bytes pile up behind it).
    f = HttpForward()
    f.receive_local(
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nab"
    )
    early = f.receive_origin(OK_HI + b"X")
    assert _local(early) == OK_HI and early[-1] == CloseOrigin()  # at once, not at the end
    assert f.origin_ended() == []
    assert f.receive_local(b"cd") == []  # the rest of the body has nowhere to go
    assert _kinds(f.receive_local(GET_A2)) == ["OpenOrigin"]
    # ... and a stray byte without a close: that connection is not used again either
    assert _kinds(f.receive_origin(OK_HI + b"Y")) == ["ToLocal", "ToLocal", "CloseOrigin"]
    assert _kinds(f.receive_local(GET_A2)) == ["OpenOrigin"]


def test_what_follows_a_last_request_is_not_read() -> None:
    f = HttpForward()
    post = b"POST http://a.example/ HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc\r\n"  # old clients
    assert _kinds(f.receive_local(post)) == ["OpenOrigin", "ToOrigin"]
    assert f.receive_local(b"\r\n") == []
    actions = f.receive_origin(OK_HI)
    assert _local(actions).startswith(b"HTTP/1.1 200 OK\r\n") and _local(actions).endswith(b"hi")
    assert actions[-1] == CloseLocal()  # closed, not reset
    g = HttpForward()
    close = GET_A.replace(b"User-Agent", b"Connection: close\r\nUser-Agent")
    g.receive_local(close + GET_A2)  # a request behind the last one is not read
    assert g.receive_origin(OK_HI)[-1] == CloseLocal()


def test_a_large_response_head_arriving_in_pieces() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    head = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"Set-Cookie: c%d=%s\r\n" % (i, b"v" * 900) for i in range(20))
        + b"Content-Length: 2\r\n\r\n"
    )
    out = b""
    for i in range(0, len(head), 1000):
        out += _local(f.receive_origin(head[i : i + 1000]))
    out += _local(f.receive_origin(b"hi"))
    assert out == head + b"hi"


def test_transfer_encoding_drops_content_length_on_the_way_to_the_origin() -> None:
    f = HttpForward()
    both = (
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 99\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    )
    sent = _origin(f.receive_local(both))
    assert b"content-length" not in sent.lower()
    assert sent.endswith(b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")


def test_no_informational_response_for_an_http10_client() -> None:
    f = HttpForward()
    f.receive_local(b"POST http://a.example/ HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
    assert f.receive_origin(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    assert _local(f.receive_origin(OK_HI)).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_handoff_says_whether_the_client_had_closed() -> None:
    f = HttpForward()
    f.receive_local(GET_A)
    f.receive_local(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    f.receive_local(b"")  # the client closes its side, the CONNECT still queued
    actions = f.receive_origin(OK_HI)
    assert actions[-1] == Handoff(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", eof=True)


def test_idle_and_a_started_head() -> None:
    f = HttpForward()
    assert f.idle and not f.head_started
    f.receive_local(GET_A)
    assert not f.idle
    f.receive_origin(OK_HI)
    assert f.idle and not f.head_started
    f.receive_local(b"GET http://a.exa")
    assert f.idle and f.head_started


def test_empty_lines_between_requests_are_skipped() -> None:
    f = HttpForward()
    post = b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\n"
    f.receive_local(post + b"abc\r\n")  # an old client's CRLF after the body
    actions = f.receive_origin(OK_HI)
    assert _local(actions) == OK_HI and not f.closed
    assert f.receive_local(b"\r\n\n") == []
    assert _kinds(f.receive_local(GET_A2)) == ["ToOrigin"]


def test_an_upgrade_to_a_relative_target_gets_a_400() -> None:
    f = HttpForward()
    actions = f.receive_local(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert _local(actions).startswith(b"HTTP/1.1 400 ")
    assert isinstance(actions[-1], CloseLocal)
