"""Shared runner for the command-line programs: event loop choice and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` on uvloop when available; SIGINT/SIGTERM set the event."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop missing
        asyncio.run(wrapper())
    else:
        if sys.version_info >= (3, 12):  # pragma: no cover
            asyncio.run(wrapper(), loop_factory=uvloop.new_event_loop)
        else:
            uvloop.install()
            asyncio.run(wrapper())
