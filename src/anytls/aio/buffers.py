"""The one receive buffer shared by every buffered protocol on the event loop thread.

``BufferedProtocol.get_buffer`` hands out this buffer and ``buffer_updated`` consumes it
synchronously (the bytes are copied into frames or transports before returning), so one
buffer per thread serves every socket: a thousand idle streams cost no receive memory.
"""

from __future__ import annotations

import threading

#: Size of one socket read; large reads cut per-call overhead on bulk transfers.
READ_SIZE = 256 * 1024

_local = threading.local()


def _thread_buffer(name: str) -> memoryview:
    view: memoryview | None = getattr(_local, name, None)
    if view is None:
        view = memoryview(bytearray(READ_SIZE))
        setattr(_local, name, view)
    return view


def shared_buffer() -> memoryview:
    """Return this thread's receive buffer."""
    return _thread_buffer("view")


def shared_raw_buffer() -> memoryview:
    """Return this thread's buffer for ciphertext read from TLS sockets.

    Separate from :func:`shared_buffer`: the TLS layer decrypts from this one into that
    one within the same callback.
    """
    return _thread_buffer("raw_view")
