"""Run our own ``anytls-server`` / ``anytls-client`` programs as real subprocesses.

    with AnyTLSProcess.server(port, ["-p", "pw", "--cert", c, "--key", k], tmp_path) as srv:
        ...
        srv.wait_log_sync(r"rejected .*wrong password")

    async with AnyTLSProcess.client(mixed_port, ["-s", f"127.0.0.1:{port}", ...], tmp) as cli:
        await cli.wait_log(r"server pushed a new padding scheme")

The program is the console script next to ``sys.executable`` (``.venv/bin/anytls-client``)
when it exists, else ``python -m anytls client``. stderr+stdout go to ``<name>.log`` in the
work directory; the log level is ``debug`` unless the arguments say otherwise. Start-up
waits until the port accepts TCP *and* the program logged its "listening" line (so a port
taken by someone else is caught). On exit: SIGTERM, then SIGKILL after 5 s, then reap; an
``atexit`` hook kills anything never exited.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .net import wait_port, wait_port_sync

__all__ = ["AnyTLSProcess", "program"]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_LIVE: weakref.WeakSet[AnyTLSProcess] = weakref.WeakSet()

#: The line each program logs once it listens.
_READY = {
    "server": re.compile(r"anytls-server \S+ listening on"),
    "client": re.compile(r"anytls-client \S+: SOCKS5/HTTP proxy on"),
}


def program(kind: str) -> list[str]:
    """argv prefix that runs ``anytls-<kind>`` from the running interpreter's environment."""
    script = Path(sys.executable).parent / f"anytls-{kind}"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "anytls", kind]


class AnyTLSProcess:
    """One running ``anytls-server`` or ``anytls-client`` (sync or async context manager)."""

    def __init__(
        self,
        kind: str,
        listen_port: int,
        args: Sequence[str],
        workdir: Path | str,
        *,
        name: str | None = None,
        listen_host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        if kind not in _READY:
            raise ValueError(f"kind must be 'server' or 'client', not {kind!r}")
        self.kind = kind
        self.host = listen_host
        self.port = listen_port
        self.workdir = Path(workdir)
        self.name = name or f"anytls-{kind}"
        self.log_path = self.workdir / f"{self.name}.log"
        argv = [*program(kind), "-l", f"{listen_host}:{listen_port}", *args]
        if "--log-level" not in args:
            argv += ["--log-level", "debug"]
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def server(
        cls, port: int, args: Sequence[str], workdir: Path | str, **kw: object
    ) -> AnyTLSProcess:
        return cls("server", port, args, workdir, **kw)  # type: ignore[arg-type]

    @classmethod
    def client(
        cls, port: int, args: Sequence[str], workdir: Path | str, **kw: object
    ) -> AnyTLSProcess:
        return cls("client", port, args, workdir, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.pop("LOG_LEVEL", None)
        env["PYTHONUNBUFFERED"] = "1"
        if self.env:
            env.update(self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        _LIVE.add(self)

    def _ready(self) -> bool:
        return _READY[self.kind].search(self.log_text()) is not None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._fail("exited during start-up")

    def _fail(self, why: str) -> None:
        rc = self.proc.poll() if self.proc else None
        self.stop_sync()
        raise AssertionError(
            f"{self.name} {why} (rc={rc}); argv={self.argv}\n--- log ---\n{self.log_text()}"
        )

    def start_sync(self) -> AnyTLSProcess:
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._fail(f"did not listen on {self.host}:{self.port} in time")
                try:
                    wait_port_sync(self.host, self.port, timeout=min(0.5, remaining))
                except TimeoutError:
                    continue
                if self._ready():
                    break
                time.sleep(0.02)
        except BaseException:
            self.stop_sync()
            raise
        return self

    async def start(self) -> AnyTLSProcess:
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._fail(f"did not listen on {self.host}:{self.port} in time")
                try:
                    await wait_port(self.host, self.port, timeout=min(0.5, remaining))
                except TimeoutError:
                    continue
                if self._ready():
                    break
                await asyncio.sleep(0.02)
        except BaseException:
            await self.stop()
            raise
        return self

    def stop_sync(self) -> None:
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
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            try:
                while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                proc.wait()
        _LIVE.discard(self)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> AnyTLSProcess:
        return self.start_sync()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    async def __aenter__(self) -> AnyTLSProcess:
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
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern: str | re.Pattern[str] | None = None) -> list[str]:
        """Log lines, optionally only those matching ``pattern`` (regex search)."""
        lines = self.log_text().splitlines()
        if pattern is None:
            return lines
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        return [ln for ln in lines if rx.search(ln)]

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
            await asyncio.sleep(0.02)
        return line

    def wait_log_sync(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> str:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (line := self._match(rx)) is None:
            if time.monotonic() >= deadline:
                raise self._log_timeout(rx, timeout)
            time.sleep(0.02)
        return line

    def __repr__(self) -> str:
        pid = None if self.proc is None else self.proc.pid
        return f"<AnyTLSProcess {self.name} pid={pid} port={self.port} rc={self.returncode}>"


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - safety net only
    for p in list(_LIVE):
        if p.proc is not None and p.proc.poll() is None:
            with contextlib.suppress(Exception):
                p.proc.kill()
                p.proc.wait(5)
