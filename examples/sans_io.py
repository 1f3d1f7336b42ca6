"""The sans-IO core with your own I/O: a blocking socket fetches one URL through AnyTLS.

    python sans_io.py your.server 8443 password 3f9a…c2 example.com 80

(``3f9a…c2``: the ``pinSHA256`` of the server's share link.)

``anytls.core.session.Session`` never touches a socket or a clock: bytes from the server go
into ``receive_data()``, which returns events; ``open_stream()`` and ``send_data()`` queue
frames that ``data_to_send()`` hands back for you to write. Here the I/O is a plain
blocking TLS socket; a trio, curio or selector loop drives it the same way.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import sys

from anytls.core.address import Address
from anytls.core.events import StreamAcknowledged, StreamDataReceived, StreamEnded
from anytls.core.session import Session
from anytls.errors import CertificatePinError, StreamOpenError


def fetch(
    server: str, port: int, password: str, pin: str, host: str, dest_port: int, request: bytes
) -> bytes:
    """Send ``request`` to ``host:dest_port`` through the server whose certificate has the
    SHA-256 ``pin`` (hex, as in a share link's pinSHA256); return all it answers."""
    context = ssl.create_default_context()
    context.check_hostname = False  # the pin, checked below, names the one certificate
    context.verify_mode = ssl.CERT_NONE  # to accept (the quick start's are self-signed)
    session = Session.client(password)
    session.initiate()  # the authentication preface and settings
    stream_id = session.open_stream(Address(host, dest_port).encode())
    session.send_data(stream_id, request)  # 0-RTT: no need to wait for the server
    response = bytearray()
    with (
        socket.create_connection((server, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server) as tls,
    ):
        certificate = tls.getpeercert(binary_form=True) or b""
        if hashlib.sha256(certificate).hexdigest() != pin.replace(":", "").lower():
            raise CertificatePinError(f"{server} is not the pinned server: nothing was sent")
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
    if len(sys.argv) < 7 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)  # the usage, on stderr
    server, port, password, pin, host, dest_port = sys.argv[1:7]
    request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    answer = fetch(server, int(port), password, pin, host, int(dest_port), request)
    print(answer.decode(errors="replace"))
