"""TLS contexts: Go's TLS 1.3 suite order on both ends, generated certificates."""

from __future__ import annotations

import contextlib
import ssl

from anytls.aio.tls import client_context, prefer_go_ciphersuites, server_context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> str:
    """Run a TLS handshake in memory; return the suite the server chose."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done: set[str] = set()
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if name not in done:
                try:
                    obj.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == {"c", "s"}:
            break
    assert done == {"c", "s"}
    cipher = s.cipher()
    assert cipher is not None and cipher == c.cipher()
    return cipher[0]


def stock_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_server_chooses_aes128_like_go_even_when_the_client_prefers_aes256() -> None:
    client = stock_client()
    assert client.get_ciphers()[0]["name"] == "TLS_AES_256_GCM_SHA384"  # OpenSSL's order
    assert handshake(client, server_context()) == "TLS_AES_128_GCM_SHA256"


def test_client_offers_aes128_first_like_go() -> None:
    ours = client_context(insecure=True)
    assert [c["name"] for c in ours.get_ciphers()[:3]] == [
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_256_GCM_SHA384",
    ]
    # A server that honours the client's order gets AES-128 from us, AES-256 from stock.
    server = server_context()
    server.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    assert handshake(ours, server) == "TLS_AES_128_GCM_SHA256"
    assert handshake(stock_client(), server) == "TLS_AES_256_GCM_SHA384"


def test_prefer_go_ciphersuites_reports_success_and_keeps_other_settings() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    options = ctx.options
    assert prefer_go_ciphersuites(ctx)
    assert ctx.options == options
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def _records(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = int.from_bytes(data[3:5], "big")
        out.append(data[: 5 + length])
        data = data[5 + length :]
    return out


def tickets_sent(server_ctx: ssl.SSLContext) -> int:
    """Records the server writes when it completes the handshake (its tickets, in TLS 1.3)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = stock_client().wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(4):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        s_in.write(c_out.read())
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            c_in.write(s_out.read())
            continue
        return len(_records(s_out.read()))  # written after the client's Finished
    raise AssertionError("no handshake")


def test_server_sends_one_session_ticket_like_go() -> None:
    ours = server_context()
    assert tickets_sent(ours) == 1
    ours.num_tickets = 2  # OpenSSL's default, for contrast
    assert tickets_sent(ours) == 2
