"""The UDP datagram matrix shared by the UoT interop tests: sizes, paced sending, loss,
order and round-trip figures.

    items = matrix_items([a, b, c])                  # 1000 datagrams, sizes 1..1400
    result = await run_matrix(send, recv, items)     # windows of 25, like a real client
    result.check()                                   # nothing lost, corrupted or reordered
    rtts = await measure_rtt(send, recv, a)
    record("ours lib → sing-box server (non-connect)", result, rtts)

``send(payload, (host, port))`` may be sync or async; ``recv()`` is a coroutine returning
``(payload, (host, port))``. Datagrams are paced in windows because UDP may drop on a burst
(socket buffers), so a loss here means a bug, not a full buffer. Every payload is unique
(its size identifies it), so replies are matched by content.

sing-box 1.14.4 limits (measured, see the interop tests): its UoT reader takes datagrams up
to 16 384 bytes (``buf.UDPBufferSize``); a larger one closes the stream ("UoT read: short
buffer") and a larger UDP reply to its server is truncated to 16 384; its client reads
replies of at most 16 122 bytes (16 KiB minus header room).

``record`` prints one ``UDPSTATS`` line (visible with ``pytest -s``) and, when the
``ANYTLS_UDP_STATS`` environment variable names a file, appends the figures as JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "SINGBOX_CLIENT_MAX_REPLY",
    "SINGBOX_MAX_DATAGRAM",
    "Item",
    "MatrixResult",
    "matrix_items",
    "measure_rtt",
    "payload",
    "record",
    "run_matrix",
    "small_sizes",
]

#: Largest datagram sing-box 1.14.4 carries through UoT (its packet buffer).
SINGBOX_MAX_DATAGRAM = 16384
#: Largest reply a sing-box 1.14.4 client reads from a UoT stream.
SINGBOX_CLIENT_MAX_REPLY = 16122

Target = tuple[str, int]
Send = Callable[[bytes, Target], Awaitable[None] | None]
Recv = Callable[[], Awaitable[tuple[bytes, Target]]]


def small_sizes(count: int = 1000, largest: int = 1400) -> list[int]:
    """``count`` distinct sizes spread evenly over 1..``largest`` (both ends included)."""
    return [1 + (i * (largest - 1)) // (count - 1) for i in range(count)]


def payload(index: int, size: int) -> bytes:
    """Deterministic bytes for datagram ``index`` (content differs between datagrams)."""
    seed = hashlib.sha256(b"udp-matrix-%d" % index).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Item:
    index: int
    payload: bytes
    target: Target
    #: Where the reply must come from (None: do not check the source).
    source: Target | None = None


def matrix_items(
    targets: Sequence[Target],
    big: Sequence[int] = (),
    count: int = 1000,
    largest: int = 1400,
    check_source: bool = True,
) -> list[Item]:
    """``count`` small datagrams cycling over ``targets``, then the ``big`` sizes (sent to
    the first target)."""
    items = [
        Item(i, payload(i, size), targets[i % len(targets)])
        for i, size in enumerate(small_sizes(count, largest))
    ]
    items += [Item(count + j, payload(count + j, size), targets[0]) for j, size in enumerate(big)]
    if check_source:
        for it in items:
            it.source = it.target
    return items


@dataclass
class MatrixResult:
    sent: int = 0
    received: int = 0
    lost: list[Item] = field(default_factory=list)
    wrong_source: list[tuple[Item, Target]] = field(default_factory=list)
    unexpected: int = 0
    out_of_order: int = 0
    elapsed: float = 0.0
    bytes_sent: int = 0

    @property
    def loss(self) -> float:
        return len(self.lost) / self.sent if self.sent else 0.0

    def check(self) -> None:
        """Assert: nothing lost, no unknown payloads, right sources, per-target order."""
        problems = []
        if self.lost:
            problems.append(
                f"{len(self.lost)} of {self.sent} lost, e.g. "
                + ", ".join(f"#{it.index} ({len(it.payload)} B)" for it in self.lost[:5])
            )
        if self.unexpected:
            problems.append(f"{self.unexpected} replies match no datagram sent (corrupted?)")
        if self.wrong_source:
            it, src = self.wrong_source[0]
            problems.append(
                f"{len(self.wrong_source)} replies from the wrong source, e.g. #{it.index} "
                f"from {src}, expected {it.source}"
            )
        if self.out_of_order:
            problems.append(f"{self.out_of_order} replies out of order within their target")
        assert not problems, "; ".join(problems)


def _norm_host(host: str) -> str:
    return host.lower().split("%")[0]


async def _call(send: Send, data: bytes, target: Target) -> None:
    result = send(data, target)
    if inspect.isawaitable(result):
        await result


async def run_matrix(
    send: Send,
    recv: Recv,
    items: Sequence[Item],
    window: int = 25,
    timeout: float = 3.0,  # noqa: ASYNC109 - per-window wait for stragglers
    big_window: int = 1,
) -> MatrixResult:
    """Send ``items`` in windows and collect the echoes; returns the figures.

    Datagrams larger than 2 KiB go ``big_window`` at a time (a few 16–64 KiB datagrams in
    one burst can overflow a default socket buffer).
    """
    result = MatrixResult()
    by_payload = {it.payload: it for it in items}
    last_index: dict[Target, int] = {}
    start = time.perf_counter()
    pos = 0
    while pos < len(items):
        size = window if len(items[pos].payload) <= 2048 else big_window
        chunk = items[pos : pos + size]
        pos += len(chunk)
        pending = {it.payload for it in chunk}
        for it in chunk:
            await _call(send, it.payload, it.target)
            result.sent += 1
            result.bytes_sent += len(it.payload)
        while pending:
            try:
                data, source = await asyncio.wait_for(recv(), timeout)
            except TimeoutError:
                break
            it = by_payload.get(data)
            if it is None or data not in pending:
                result.unexpected += 1
                continue
            pending.discard(data)
            result.received += 1
            if it.source is not None and (
                _norm_host(source[0]),
                source[1],
            ) != (_norm_host(it.source[0]), it.source[1]):
                result.wrong_source.append((it, source))
            key = it.target
            if last_index.get(key, -1) > it.index:
                result.out_of_order += 1
            last_index[key] = max(last_index.get(key, -1), it.index)
        result.lost.extend(by_payload[p] for p in pending)
    result.elapsed = time.perf_counter() - start
    return result


async def measure_rtt(
    send: Send,
    recv: Recv,
    target: Target,
    count: int = 200,
    size: int = 64,
    timeout: float = 3.0,  # noqa: ASYNC109
) -> list[float]:
    """Ping-pong ``count`` small datagrams one at a time; return the round trips (seconds)."""
    rtts: list[float] = []
    for i in range(count):
        data = (b"rtt-%06d-" % i).ljust(size, b".")
        t0 = time.perf_counter()
        await _call(send, data, target)
        while True:
            got, _ = await asyncio.wait_for(recv(), timeout)
            if got == data:
                break
        rtts.append(time.perf_counter() - t0)
    return rtts


def record(
    pair: str, result: MatrixResult | None, rtts: Sequence[float] = (), **extra: object
) -> dict[str, object]:
    """Print (and optionally append to ``$ANYTLS_UDP_STATS``) the figures of one pair."""
    row: dict[str, object] = {"pair": pair}
    if result is not None:
        row.update(
            sent=result.sent,
            received=result.received,
            lost=len(result.lost),
            loss_pct=round(100 * result.loss, 3),
            out_of_order=result.out_of_order,
            seconds=round(result.elapsed, 3),
            mbytes=round(result.bytes_sent / 1e6, 3),
        )
    if rtts:
        ordered = sorted(rtts)
        row.update(
            rtt_n=len(rtts),
            rtt_p50_ms=round(statistics.median(ordered) * 1000, 3),
            rtt_p90_ms=round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        )
    row.update(extra)
    print("UDPSTATS " + json.dumps(row, ensure_ascii=False))
    path = os.environ.get("ANYTLS_UDP_STATS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return row
