"""A resolver that stalls, for tests of what waits on name lookups."""

from __future__ import annotations

import asyncio

import pytest


def stall_lookups(
    monkeypatch: pytest.MonkeyPatch, answer: list[tuple[int, str]] | None
) -> tuple[asyncio.Event, list[str]]:
    """Make every name lookup (``anytls.aio.outbound.lookup``) wait for the returned event,
    then give ``answer`` (None: fail); the names asked for are listed in order."""
    from anytls.aio import outbound

    release = asyncio.Event()
    asked: list[str] = []

    async def stalled(host: str, port: int | None, kind: int) -> list[tuple[int, str]]:
        asked.append(host)
        await release.wait()
        if answer is None:
            raise OSError("the resolver gave up")
        return answer

    monkeypatch.setattr(outbound, "lookup", stalled)
    return release, asked
