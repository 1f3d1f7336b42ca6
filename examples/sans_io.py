"""The sans-IO core with your own I/O: a blocking socket fetches one URL through AnyTLS.

    python sans_io.py your.server 8443 password example.com 80

``anytls.core.session.Session`` never touches a socket or a clock: bytes from the server go
into ``receive_data()``, which returns events; ``open_stream()`` and ``send_data()`` queue
frames that ``data_to_send()`` hands back for you to write. Here the I/O is a plain
blocking TLS socket; a trio, curio or selector loop drives it the same way.
"""

from __future__ import annotations

import socket
import ssl
import sys

from anytls.core.address import Address
from anytls.core.events import StreamAcknowledged, StreamDataReceived, StreamEnded
from anytls.core.session import Session
from anytls.errors import StreamOpenError


def fetch(
    server: str, port: int, password: str, host: str, dest_port: int, request: bytes
) -> bytes:
    """Send ``request`` to ``host:dest_port`` through the server; return all it answers."""
    context = ssl.create_default_context()
    context.check_hostname = False  # a self-signed server certificate, as in the
    context.verify_mode = ssl.CERT_NONE  # quick start; verify a real one
    session = Session.client(password)
    session.initiate()  # the authentication preface and settings
    stream_id = session.open_stream(Address(host, dest_port).encode())
    session.send_data(stream_id, request)  # 0-RTT: no need to wait for the server
    response = bytearray()
    with (
        socket.create_connection((server, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server) as tls,
    ):
        while True:
            for chunk in session.data_to_send():
                tls.sendall(chunk)
            data = tls.recv(65536)
            if not data:
                return bytes(response)
            for event in session.receive_data(data):
                if isinstance(event, StreamAcknowledged) and event.error:
                    raise StreamOpenError(f"the server could not open {host}: {event.error}")
                if isinstance(event, StreamDataReceived) and event.stream_id == stream_id:
                    response += event.data
                elif isinstance(event, StreamEnded) and event.stream_id == stream_id:
                    return bytes(response)


if __name__ == "__main__":
    server, port, password, host, dest_port = sys.argv[1:6]
    request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    print(
        fetch(server, int(port), password, host, int(dest_port), request).decode(errors="replace")
    )
