"""Run our own ``anytls-server`` / ``anytls-client`` programs as real subprocesses.

    with AnyTLSProcess.server(port, ["-p", "pw", "--cert", c, "--key", k], tmp_path) as srv:
        ...
        srv.wait_log_sync(r"rejected .*wrong password")

    async with AnyTLSProcess.client(mixed_port, ["-s", f"127.0.0.1:{port}", ...], tmp) as cli:
        await cli.wait_log(r"server pushed a new padding scheme")

The program is the console script next to ``sys.executable`` (``.venv/bin/anytls-client``)
when it exists, else ``python -m anytls client``. stderr+stdout go to ``<name>.log`` in the
work directory; the log level is ``debug`` unless the arguments say otherwise. A server gets
``--allow-private`` (tests proxy to loopback targets) unless ``allow_private=False`` or the
arguments say ``--deny-private``. Start-up
waits until the port accepts TCP *and* the program logged its "listening" line (so a port
taken by someone else is caught). On exit: SIGTERM, then SIGKILL after 5 s, then reap; an
``atexit`` hook kills anything never exited.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .process import ManagedProcess, Sleep, StartupSteps, WaitPort

__all__ = ["AnyTLSProcess", "program"]

START_TIMEOUT = 15.0

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


class AnyTLSProcess(ManagedProcess):
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
        allow_private: bool = True,
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
        if kind == "server" and allow_private and "--deny-private" not in args:
            # Tests proxy to loopback echo servers, which a default server refuses.
            argv.append("--allow-private")
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
        self._launch(self.argv, env)

    def _ready(self) -> bool:
        return _READY[self.kind].search(self.log_text()) is not None

    def _fail_context(self) -> str:
        return f"argv={self.argv}"

    def _startup(self) -> StartupSteps:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"did not listen on {self.host}:{self.port} in time")
            try:
                yield WaitPort(self.connect_host, self.port, min(0.5, remaining))
            except TimeoutError:
                continue
            if self._ready():
                break
            yield Sleep(0.02)

    @property
    def connect_host(self) -> str:
        """Where to connect to reach the listener (a wildcard means loopback)."""
        host = self.host.strip("[]")
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    def stop_sync(self) -> None:
        self._stop_sync()

    # ------------------------------------------------------------------ logs
    def log_lines(self, pattern: str | re.Pattern[str] | None = None) -> list[str]:
        """Log lines, optionally only those matching ``pattern`` (regex search)."""
        lines = self.log_text().splitlines()
        if pattern is None:
            return lines
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        return [ln for ln in lines if rx.search(ln)]

    def wait_log_sync(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> str:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (line := self._match(rx)) is None:
            if time.monotonic() >= deadline:
                raise self._log_timeout(rx, timeout)
            time.sleep(0.02)  # log poll interval
        return line

    def __repr__(self) -> str:
        pid = None if self.proc is None else self.proc.pid
        return f"<AnyTLSProcess {self.name} pid={pid} port={self.port} rc={self.returncode}>"
