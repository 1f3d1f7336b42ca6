"""TCP Fast Open (RFC 7413, Linux): the TLS ClientHello rides in the SYN of a reconnect.

A client that has met a server before holds a TFO cookie for it; with
``TCP_FASTOPEN_CONNECT`` set before ``connect()``, the kernel defers the SYN to the first
write and sends the ClientHello in it, so the TLS handshake starts one round trip earlier.
The server must opt in per listener (``TCP_FASTOPEN`` with a queue length). Both ends also
need the ``net.ipv4.tcp_fastopen`` sysctl: bit 1 (value 1, Linux's default) lets clients
use TFO, bit 2 (value 2) lets servers accept it, so a server host needs
``sysctl -w net.ipv4.tcp_fastopen=3``. Without a cookie, or when a middlebox drops SYN
data, the kernel falls back to an ordinary handshake by itself.

The options are plain socket options, set on a socket before it connects or on a listener,
so any way of building the connection can use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

#: Linux option numbers (``socket`` lacks the names on some Python builds).
TCP_FASTOPEN = getattr(socket, "TCP_FASTOPEN", 23)
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"
CLIENT_ENABLED = 0x1
SERVER_ENABLED = 0x2
#: Connections a listener may hold with SYN data whose handshake is not complete yet.
LISTEN_QUEUE = 1024


def sysctl_value(path: str = SYSCTL) -> int | None:
    """``net.ipv4.tcp_fastopen`` (None where it cannot be read, e.g. not Linux)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0], 0)
    except (OSError, ValueError, IndexError):
        return None


def sysctl_problem(server: bool, path: str = SYSCTL) -> str | None:
    """Why TFO will not work on this host for a server or a client, or None."""
    value = sysctl_value(path)
    if value is None:
        return f"TCP Fast Open needs Linux ({path} is not readable)"
    bit = SERVER_ENABLED if server else CLIENT_ENABLED
    if not value & bit:
        want = value | bit
        return (
            f"net.ipv4.tcp_fastopen is {value}: TCP Fast Open is off for "
            f"{'servers' if server else 'clients'}; run `sysctl -w net.ipv4.tcp_fastopen={want}`"
        )
    return None


def enable_on_listener(sock: socket.socket, queue: int = LISTEN_QUEUE) -> bool:
    """Let ``sock`` (a TCP listener) accept data in SYNs; False if the kernel refused."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, queue)
    except OSError:
        return False
    return True


def enable_before_connect(sock: socket.socket) -> bool:
    """Make ``sock``'s ``connect()`` send its first write in the SYN; False if refused."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    except OSError:
        return False
    return True


async def connect(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket to ``host:port`` with Fast Open enabled, connected.

    Addresses are tried in the resolver's order; the last error is raised if none works.
    With a cookie cached the SYN is only sent with the first write (the ClientHello).
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_before_connect(sock)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            error = exc
            with contextlib.suppress(OSError):
                sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error
