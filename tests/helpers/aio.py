"""Run async test bodies without a pytest asyncio plugin.

    from tests.helpers.aio import async_test

    @async_test                      # default 60 s budget
    async def test_something(tmp_path): ...

    @async_test(timeout=10)
    async def test_fast(): ...

The decorated function becomes a plain sync test that runs the coroutine with
``asyncio.run`` inside ``asyncio.timeout``; fixtures work as usual (the signature is kept).
A timeout fails the test with a message naming the budget; cleanup in ``finally`` /
``async with`` blocks of the test still runs because the task is cancelled, not killed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClockLoop",
    "async_test",
    "poll_until",
    "run_async",
    "wait_until",
]

DEFAULT_TIMEOUT = 60.0

P = ParamSpec("P")
T = TypeVar("T")


def run_async(
    coro_fn: Callable[[], Awaitable[T]],
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    debug: bool = False,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run ``coro_fn()`` in a fresh event loop with an overall timeout."""

    async def main() -> T:
        cm = asyncio.timeout(timeout)
        try:
            async with cm:
                return await coro_fn()
        except TimeoutError as exc:
            if not cm.expired():
                raise  # a TimeoutError from the test body itself
            # Re-raise with a clear message; the original chain stays attached.
            raise AssertionError(f"async test exceeded its {timeout}s budget") from exc

    with asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main())


@overload
def async_test(fn: Callable[P, Coroutine[Any, Any, T]], /) -> Callable[P, T]: ...


@overload
def async_test(
    *, timeout: float | None = DEFAULT_TIMEOUT, debug: bool = False
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, T]]: ...


def async_test(
    fn: Callable[P, Coroutine[Any, Any, T]] | None = None,
    /,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    debug: bool = False,
) -> Any:
    """Decorator: run an ``async def`` test via ``asyncio.run`` with a timeout (60 s)."""

    def decorate(f: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return run_async(lambda: f(*args, **kwargs), timeout, debug=debug)

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate


async def wait_until(condition: Callable[[], object], timeout: float = 2.0) -> None:  # noqa: ASYNC109
    """Poll ``condition()`` every 10 ms until it is true or ``timeout`` seconds passed.

    Returns either way: the caller asserts the state it expects afterwards.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:  # noqa: ASYNC110 - polling is the point
        await asyncio.sleep(0.01)  # the poll interval


async def poll_until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], object],
    timeout: float = 5.0,  # noqa: ASYNC109
    interval: float = 0.02,
) -> T:
    """Await ``fetch()`` every ``interval`` seconds until ``done(value)`` is true or
    ``timeout`` seconds passed; return the last value (the caller asserts on it).

    For states only an awaitable can read (an HTTP endpoint, a scrape, a connect attempt).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await fetch()
        if done(value) or loop.time() >= deadline:
            return value
        await asyncio.sleep(interval)  # the poll interval


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves forward: ``loop.advance(30)`` makes every
    timer due within 30 s fire on the next iterations, without waiting.

    Use with ``run_async(main, timeout=None, loop_factory=ClockLoop)`` (a budget measured
    on this clock would expire when it jumps; pytest-timeout still bounds the test).
    """

    def __init__(self) -> None:
        super().__init__()
        self._offset = 0.0

    def time(self) -> float:
        return super().time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self._offset += seconds
        self.call_soon(lambda: None)  # wake the selector to look at the timers again
