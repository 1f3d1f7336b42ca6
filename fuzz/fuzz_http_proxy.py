"""Atheris harness: parse_request_head, on the whole input and on growing prefixes.

The mixed inbound calls ``parse_request_head(buffer)`` each time more bytes arrive, so the
harness does the same at split points taken from the input. Checked:

* only RemoteProtocolError escapes (ValueError, UnicodeError, h11 errors ... are bugs);
* prefixes are consistent with the whole: once a prefix yields a request, the whole input
  yields the same request with ``leftover`` extended by the rest; a prefix that is
  rejected means the whole input is rejected too;
* the result is usable: the target address encodes, and a forwarded request's rewritten
  head parses with h11 as one request for the same method with no Proxy-* headers.

Run: python fuzz/fuzz_http_proxy.py fuzz/corpus/http_proxy -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris
from _common import consume_splits

with atheris.instrument_imports(include=["anytls", "h11", "urllib"]):
    import h11

    from anytls.core.http_proxy import HttpProxyRequest, parse_request_head
    from anytls.errors import RemoteProtocolError

REJECTED = object()


def attempt(buf: bytes):
    try:
        return parse_request_head(buf)
    except RemoteProtocolError:
        return REJECTED


def check_request(request: HttpProxyRequest) -> None:
    request.target.encode()  # LocalProtocolError here would break the inbound later
    if request.is_connect:
        assert request.method == "CONNECT"
        assert request.forward_head == b""
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request.forward_head)
    event = conn.next_event()
    assert isinstance(event, h11.Request), (event, request.forward_head)
    assert event.method.decode() == request.method
    assert event.target.startswith(b"/"), event.target  # origin form
    names = [name for name, _ in event.headers]
    assert not any(name.startswith(b"proxy-") for name in names), names
    assert names.count(b"host") == 1, names
    assert conn.trailing_data[0] == b"", conn.trailing_data


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    points, _ = consume_splits(fdp)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())

    full = attempt(payload)
    if isinstance(full, HttpProxyRequest):
        check_request(full)
    for cut in sorted({p % (len(payload) + 1) for p in points}):
        prefix = attempt(payload[:cut])
        if prefix is None:
            continue
        if prefix is REJECTED:
            assert full is REJECTED, (cut, full)
            return
        assert isinstance(full, HttpProxyRequest), (cut, prefix, full)
        assert prefix.leftover + payload[cut:] == full.leftover, (cut, prefix, full)
        assert prefix.method == full.method
        assert prefix.target == full.target
        assert prefix.is_connect == full.is_connect
        assert prefix.proxy_authorization == full.proxy_authorization
        assert prefix.forward_head == full.forward_head
        return


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
