"""Shared lifecycle of a helper program run as a real subprocess (sing-box, anytls-*).

:class:`ManagedProcess` spawns the program with stdout+stderr going to ``log_path``, waits
until it is ready, and stops it with SIGTERM, then SIGKILL after 5 s, then reaps it; an
``atexit`` hook kills any instance that was never stopped. It works as a sync and as an
async context manager.

Subclasses implement ``_spawn`` (prepare, then :meth:`ManagedProcess._launch`) and
``_startup``: a generator that yields :class:`WaitPort` / :class:`Sleep` steps. The same
generator drives both :meth:`ManagedProcess.start` and :meth:`ManagedProcess.start_sync`;
a :class:`WaitPort` that times out raises :class:`TimeoutError` inside the generator.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import re
import signal
import subprocess
import time
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from .net import wait_port, wait_port_sync

__all__ = ["STOP_TIMEOUT", "ManagedProcess", "Sleep", "WaitPort"]

STOP_TIMEOUT = 5.0

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


@dataclass(frozen=True)
class WaitPort:
    """Start-up step: wait until ``host:port`` accepts TCP (TimeoutError after ``timeout``)."""

    host: str
    port: int
    timeout: float


@dataclass(frozen=True)
class Sleep:
    """Start-up step: pause for ``seconds``."""

    seconds: float


StartupSteps = Generator[WaitPort | Sleep, None, None]


def _advance(steps: StartupSteps, exc: TimeoutError | None) -> WaitPort | Sleep | None:
    """Next step of ``steps`` (after throwing ``exc`` into it, if any); None when done."""
    try:
        return next(steps) if exc is None else steps.throw(exc)
    except StopIteration:
        return None


class ManagedProcess:
    """Base class: one subprocess whose output is logged to ``log_path``."""

    #: Exception raised when start-up fails.
    _error: ClassVar[type[AssertionError]] = AssertionError
    #: Poll interval of :meth:`wait_log`.
    _log_poll: ClassVar[float] = 0.02

    name: str
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    # ------------------------------------------------------------------ subclass hooks
    def _spawn(self) -> None:
        raise NotImplementedError

    def _startup(self) -> StartupSteps:
        raise NotImplementedError

    def _fail_context(self) -> str:
        """What to show next to the return code in a start-up failure (e.g. ``argv=...``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle
    def _launch(self, argv: Sequence[str], env: dict[str, str]) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        _LIVE.add(self)

    def _fail(self, why: str) -> None:
        rc = self.proc.poll() if self.proc else None
        self._stop_sync()
        raise self._error(
            f"{self.name} {why} (rc={rc}); {self._fail_context()}\n--- log ---\n{self.log_text()}"
        )

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._fail("exited during start-up")

    async def start(self) -> Self:
        self._spawn()
        steps = self._startup()
        try:
            step = _advance(steps, None)
            while step is not None:
                try:
                    if isinstance(step, WaitPort):
                        await wait_port(step.host, step.port, timeout=step.timeout)
                    else:
                        await asyncio.sleep(step.seconds)  # a poll interval of _startup
                except TimeoutError as exc:
                    step = _advance(steps, exc)
                else:
                    step = _advance(steps, None)
        except BaseException:
            await self.stop()
            raise
        finally:
            steps.close()
        return self

    def start_sync(self) -> Self:
        self._spawn()
        steps = self._startup()
        try:
            step = _advance(steps, None)
            while step is not None:
                try:
                    if isinstance(step, WaitPort):
                        wait_port_sync(step.host, step.port, timeout=step.timeout)
                    else:
                        time.sleep(step.seconds)  # a poll interval of _startup
                except TimeoutError as exc:
                    step = _advance(steps, exc)
                else:
                    step = _advance(steps, None)
        except BaseException:
            self._stop_sync()
            raise
        finally:
            steps.close()
        return self

    def _stop_sync(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        _LIVE.discard(self)

    async def stop(self) -> None:
        """SIGTERM, wait up to 5 s (without blocking the loop), then SIGKILL; reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            try:
                while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # exit poll interval
            finally:
                # Even if cancelled while waiting: never leave the child behind.
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                proc.wait()
        _LIVE.discard(self)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> Self:
        return self.start_sync()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_sync()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        """Everything the program has written so far (stdout + stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _match(self, rx: re.Pattern[str]) -> str | None:
        for line in self.log_text().splitlines():
            if rx.search(line):
                return line
        return None

    def _log_timeout(self, rx: re.Pattern[str], timeout: float) -> AssertionError:
        return AssertionError(
            f"{self.name}: log never matched {rx.pattern!r} in {timeout}s\n"
            f"--- log ---\n{self.log_text()}"
        )

    async def wait_log(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> str:
        """Wait until a log line matches ``pattern`` (regex); return that line."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (line := self._match(rx)) is None:
            if time.monotonic() >= deadline:
                raise self._log_timeout(rx, timeout)
            await asyncio.sleep(self._log_poll)  # log poll interval
        return line


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - safety net only
    for p in list(_LIVE):
        if p.proc is not None and p.proc.poll() is None:
            with contextlib.suppress(Exception):
                p.proc.kill()
                p.proc.wait(5)
