#!/usr/bin/env python3
"""The "emulated link" table: anytls against sing-box over a slow, lossy link.

    python benchmarks/bench_link.py [--link 40ms,150ms] [--loss 0.5] [--rate 50mbit]
                                    [--runs 3] [--out benchmarks/results.md] [--quick]

Needs root (network namespaces + TUN; see ``benchmarks/linkemu.py``). One emulated link
joins a client namespace and a server namespace. For every run, link profile (an RTT) and
pair (ours:ours, ours-client:sing-box-server, sing-box-client:ours-server,
sing-box:sing-box, alternating), the proxy server starts in the server namespace, the
proxy client in the client namespace (connecting to the server across the link), and
``benchmarks/linkload.py`` in the client namespace drives the client's SOCKS5 port on
the client's loopback while hosting its targets in the server namespace. So the AnyTLS
connection is what crosses the emulated link; the SOCKS hop and the server's hop to the
destination stay local. The table shows medians over runs and ratios to
sing-box:sing-box; it is printed and written into a section of ``--out`` (the rest of
that file, bench.py's loopback table, is kept).

Process handling (start, readiness, logs, kill on exit) is bench.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
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
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the benchmark directory is not a package)
import linkemu  # noqa: E402
from linkemu import LinkConfig, LinkEmulator, in_netns  # noqa: E402

LINKLOAD = HERE / "linkload.py"
PAIRS = [p for p in bench.PAIRS if p[1] != "ours-workers" and p[2] != "ours-workers"]
REFERENCE = bench.REFERENCE
SECTION_START, SECTION_END = bench.LINK_SECTION_START, bench.LINK_SECTION_END
LINK_TABLE_PREFIX = bench.LINK_TABLE_PREFIX


@dataclass
class Sizes:
    new_dests: int = 3
    seq: int = 30
    udp_pings: int = 20
    parallel: int = 20
    par_kib: int = 256
    bulk_seconds: float = 4.0

    def args(self) -> list[str]:
        return [
            "--new-dests",
            str(self.new_dests),
            "--seq",
            str(self.seq),
            "--udp-pings",
            str(self.udp_pings),
            "--parallel",
            str(self.parallel),
            "--par-kib",
            str(self.par_kib),
            "--bulk-seconds",
            str(self.bulk_seconds),
        ]


FULL = Sizes()
QUICK = Sizes(new_dests=1, seq=5, udp_pings=5, parallel=4, par_kib=64, bulk_seconds=1.0)

METRICS = [
    bench.Metric("cold_ms", "first byte, cold (first request after client start), ms", "lower"),
    bench.Metric("warm_new_ms", "first byte, new destination on a warm session, ms", "lower"),
    bench.Metric("seq_p50_ms", "{seq} sequential streams, open + first byte p50 ms", "lower"),
    bench.Metric("seq_p95_ms", "{seq} sequential streams, open + first byte p95 ms", "lower"),
    bench.Metric("par_s", "{parallel}×{par_kib} KiB parallel downloads, wall s", "lower"),
    bench.Metric("udp_p50_ms", "UDP echo p50 ms", "lower"),
    bench.Metric("bulk_MBps", "bulk download MB/s ({bulk_seconds:g} s)", "higher"),
]


def ns_wait_ready(proc: subprocess.Popen[bytes], ns: str, port: int, log: Path, what: str) -> None:
    """Wait until 127.0.0.1:port in namespace ``ns`` accepts TCP while ``proc`` lives."""
    deadline = time.monotonic() + bench.START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited during start-up (rc={proc.returncode}); log {log}:\n"
                + bench.log_tail(log)
            )
        with in_netns(ns):
            sock = socket.socket()
        try:
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not listen on port {port} in {ns} within"
                    f" {bench.START_TIMEOUT:.0f} s; log {log}:\n" + bench.log_tail(log)
                ) from None
            time.sleep(0.05)
            continue
        finally:
            sock.close()
        return


def server_flags() -> list[str]:
    """Flags our server needs here: one process; private destinations allowed (the
    targets are on the server namespace's loopback) when the server can refuse them."""
    try:
        out = subprocess.run(
            [*bench.ours("server"), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=bench.child_env(),
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    flags = []
    if "--workers" in out:
        flags += ["--workers", "1"]
    if "--allow-private" in out:
        flags += ["--allow-private"]
    return flags


@dataclass
class LinkPair:
    name: str
    client_impl: str
    server_impl: str
    link: LinkEmulator
    workdir: Path
    cert: Path
    key: Path
    flags: list[str]
    port: int
    client_flags: list[str] = field(default_factory=list)
    singbox_tfo: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = bench.spawn(self.link.exec_argv(ns, argv), log, self.workdir)
        self.procs.append(proc)
        return proc

    def _singbox(self, role: str, config: dict[str, Any]) -> tuple[list[str], Path]:
        path = self.workdir / f"sing-box-{role}.json"
        path.write_text(json.dumps(config, indent=2))
        argv = [bench.singbox_bin(), "run", "--disable-color", "-D", str(self.workdir)]
        return [*argv, "-c", str(path)], self.workdir / f"sing-box-{role}.log"

    def start(self) -> tuple[subprocess.Popen[bytes], int]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        server_port, mixed_port = self.port, self.port + 1
        if self.server_impl == "ours":
            argv = [*bench.ours("server"), "-l", f"0.0.0.0:{server_port}", "-p", bench.PASSWORD]
            argv += ["--cert", str(self.cert), "--key", str(self.key), "--log-level", "warning"]
            argv += self.flags
            log = self.workdir / "anytls-server.log"
        else:
            config = bench.singbox_server_config(server_port, self.cert, self.key)
            config["inbounds"][0]["listen"] = "0.0.0.0"
            if self.singbox_tfo:
                config["inbounds"][0]["tcp_fast_open"] = True
            argv, log = self._singbox("server", config)
        server = self._spawn(self.link.server_ns, argv, log)
        ns_wait_ready(server, self.link.server_ns, server_port, log, f"{self.name}: server")

        if self.client_impl == "ours":
            argv = [*bench.ours("client"), "-l", f"127.0.0.1:{mixed_port}"]
            argv += ["-s", f"{linkemu.SERVER_IP}:{server_port}", "-p", bench.PASSWORD]
            argv += ["--insecure", "--log-level", "warning", *self.client_flags]
            log = self.workdir / "anytls-client.log"
        else:
            config = bench.singbox_client_config(mixed_port, server_port)
            config["outbounds"][0]["server"] = linkemu.SERVER_IP
            argv, log = self._singbox("client", config)
        client = self._spawn(self.link.client_ns, argv, log)
        ns_wait_ready(client, self.link.client_ns, mixed_port, log, f"{self.name}: client")
        return client, mixed_port

    def stop(self) -> None:
        for proc in reversed(self.procs):
            bench._kill(proc)
        self.procs.clear()


def run_pair(pair: LinkPair, sizes: Sizes, run_id: int) -> dict[str, float]:
    try:
        client, mixed_port = pair.start()
        argv = [sys.executable, str(LINKLOAD), "--socks", f"127.0.0.1:{mixed_port}"]
        argv += ["--server-ns", pair.link.server_ns, "--base-port", str(pair.port + 2)]
        argv += ["--run-id", str(run_id), *sizes.args()]
        log_path = pair.workdir / "linkload.log"
        timeout = 180.0
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                pair.link.exec_argv(pair.link.client_ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=bench.child_env(),
                cwd=pair.workdir,
            )
            bench._LIVE.append(proc)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"{pair.name}: load generator timed out after {timeout:.0f} s;"
                    f" log {log_path}:\n{bench.log_tail(log_path)}"
                ) from None
            finally:
                bench._kill(proc)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{pair.name}: load generator failed (rc={proc.returncode});"
                f" log {log_path}:\n{bench.log_tail(log_path)}"
            )
        for p in pair.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{pair.name}: a proxy process died; see {pair.workdir}")
        result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
        del client
    finally:
        pair.stop()
    return result


# ----------------------------------------------------------------------------- report


@dataclass
class Profile:
    rtt: float
    config: LinkConfig
    check: dict[str, float] = field(default_factory=dict)  # measured before the runs
    relay: dict[str, float] = field(default_factory=dict)  # counters summed over runs

    @property
    def title(self) -> str:
        p = self.config.up
        rate = f"{p.rate / 1e6:g} Mbit/s" if p.rate else "no rate limit"
        return f"{self.rtt * 1000:g} ms RTT, {p.loss * 100:g}% loss each way, {rate}"


def table(
    profiles: list[Profile],
    medians: dict[str, dict[str, dict[str, float]]],
    sizes: Sizes,
    runs: int,
) -> str:
    names = [p[0] for p in PAIRS if any(p[0] in m for m in medians.values())]
    head = f"| metric (median of {runs} run{'' if runs == 1 else 's'}) | "
    lines = [head + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    subst = {k: v for k, v in sizes.__dict__.items()}
    for prof in profiles:
        key = prof.title
        lines.append(f"| **{key}** |" + " |" * len(names))
        ref = medians[key].get(REFERENCE, {})
        for m in METRICS:
            arrow = {"higher": " ↑", "lower": " ↓"}.get(m.better, "")
            cells = []
            for name in names:
                v = medians[key].get(name, {}).get(m.key)
                if v is None:
                    cells.append("n/a")
                    continue
                r = ref.get(m.key)
                cells.append(bench.fmt(v) + (f" ({v / r:.2f}×)" if r else ""))
            lines.append(f"| {m.label.format(**subst)}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = """\
Each cell: the median over runs, then its ratio to sing-box:sing-box. ↑ = higher is better,
↓ = lower is better. MB = 10^6 bytes. Loss is per direction and random (independent per
packet), so single-shot rows (cold, new destination) are noisy: a lost SYN or handshake
packet costs a retransmission timeout (1 s) in that run; the median of the runs hides one
such run, not two.

How it is measured (benchmarks/linkload.py, in the client namespace, targets in the server
namespace; fresh proxy processes for every pair, run and link profile), in this order:
- first byte, cold: the first SOCKS5 CONNECT after the client is up (its port accepts),
  write 1 byte to an echo target, time until the byte is back. The client has no session
  yet: TCP + TLS handshake to the server, the AnyTLS preface and the stream open all cross
  the link. Floor: 3 RTTs (TCP handshake, TLS 1.3 handshake, request/response), one more
  for a client that waits for the server's SYNACK before replying to SOCKS.
- first byte, new destination on a warm session: the same to an address not used before
  (127.0.R.N, all reaching the same echo server), 0.3 s after the previous stream closed so
  the session is back in the client's pool; median of 3 addresses per run. Floor: 1 RTT,
  2 for a client that waits for the SYNACK.
- sequential streams: open + 1-byte echo + close, to the cold request's destination
  (recently reached, so our client's optimistic open applies).
- parallel downloads: all started at once; wall time until the last byte of the last one.
  sing-box's client opens a session per download; ours sets up at most 16 at a time
  (`--max-handshakes`) and the rest share those.
- UDP echo p50: SOCKS5 UDP ASSOCIATE, sequential 512-byte pings (5 warm-up).
- bulk download: one stream, bytes received in a fixed time from the request on (time-
  bounded because loss makes a fixed size take anything from seconds to minutes). It is a
  single short transfer per run on a session the parallel phase left behind: with random
  loss it varies by 2-4× between runs (see every run below), so read differences under
  that as noise.
- the machine is shared (see "other processes" above): scheduling delays add to the link's
  own figures, mostly in the tails (p95) and the bulk row.
"""


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_section(
    profiles: list[Profile],
    medians: dict[str, dict[str, dict[str, float]]],
    raw: dict[str, dict[str, list[dict[str, float]]]],
    sizes: Sizes,
    args: argparse.Namespace,
    elapsed: float,
    load: str,
    others: float,
    calib: str,
) -> str:
    now = now_utc()
    cmd = "python benchmarks/bench_link.py" + (" --quick" if args.quick else "")
    cmd += f" --runs {args.runs} --link {args.link} --loss {args.loss:g} --rate {args.rate}"
    for opt in ("ours_client_args", "ours_server_args"):
        if getattr(args, opt):
            cmd += f" --{opt.replace('_', '-')} {shlex.quote(getattr(args, opt))}"
    cmd += " --singbox-tfo" * args.singbox_tfo + "".join(f" --sysctl {x}" for x in args.sysctl)
    checks = []
    for prof in profiles:
        c = prof.check
        r = prof.relay
        checks.append(
            f"  - {prof.title}: TCP connect p50 {c['connect_p50_ms']:.1f} ms, ping p50"
            f" {c['ping_p50_ms']:.1f} ms, a plain TCP download (no proxy) for"
            f" {sizes.bulk_seconds:g} s {c['raw_bulk_MBps']:.2f} MB/s (before the runs);"
            " relay over all runs:"
            f" {r.get('packets', 0):,.0f} packets, {r.get('loss_drops', 0):,.0f} lost at random,"
            f" {r.get('queue_drops', 0):,.0f} tail-dropped, peak queue"
            f" {r.get('max_queue', 0):,.0f}"
        )
    header = [
        f"- date: {now}; total time {elapsed:.0f} s; load average before start {load}; "
        f"other processes used {others:.1f} CPU-s during the run "
        f"({100 * others / max(elapsed * (os.cpu_count() or 1), 1e-9):.1f}% of the machine)",
        f"- command: `{cmd}`",
        f"- machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python"
        f" {platform.python_version()}, TCP congestion control"
        f" {linkemu.congestion_control()}; the relay: {calib}",
        "- the emulated links (measured from the client namespace to the server's address):",
        *checks,
    ]
    return "\n".join(
        [
            SECTION_START,
            "## Emulated link (benchmarks/bench_link.py)",
            "",
            *header,
            "",
            table(profiles, medians, sizes, args.runs),
            "",
            NOTES,
            "<details><summary>every run (emulated link)</summary>",
            "",
            "```json",
            json.dumps(raw, indent=1, sort_keys=True),
            "```",
            "",
            "</details>",
            SECTION_END,
            "",
        ]
    )


def json_tables(
    profiles: list[Profile],
    medians: dict[str, dict[str, dict[str, float]]],
    sizes: Sizes,
    date: str,
) -> list[dict[str, Any]]:
    """The tables for ``results.json`` (``benchmarks/plot.py`` draws them), one per
    profile, named ``link-<RTT>ms``."""
    subst = dict(sizes.__dict__)
    return [
        {
            "name": f"{LINK_TABLE_PREFIX}{prof.rtt * 1000:g}ms",
            "title": f"emulated link: {prof.title}",
            "date": date,
            "reference": REFERENCE,
            "pairs": [p[0] for p in PAIRS if p[0] in medians[prof.title]],
            "metrics": [
                {"key": m.key, "label": m.label.format(**subst), "better": m.better}
                for m in METRICS
            ],
            "medians": medians[prof.title],
        }
        for prof in profiles
    ]


def write_json_tables(path: Path, tables: list[dict[str, Any]]) -> None:
    """Put ``tables`` into the results JSON file, replacing earlier emulated-link tables and
    keeping bench.py's."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"title": "anytls benchmark results", "date": "", "tables": []}
    data["tables"] = [
        t for t in data.get("tables", []) if not t.get("name", "").startswith(LINK_TABLE_PREFIX)
    ] + tables
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_section(path: Path, section: str) -> None:
    """Replace this table's section of ``path`` (or append it), keeping everything else."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(SECTION_END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


# ----------------------------------------------------------------------------- main


def check_link(link: LinkEmulator, bulk_seconds: float) -> dict[str, float]:
    """Round trips across the link right now (TCP connect, ping) and a plain TCP
    download (no proxy) as long as the bulk phase, for reference."""
    with in_netns(link.server_ns):
        srv = socket.socket()
    with srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # again for each profile
        srv.bind(("0.0.0.0", 5999))
        srv.listen(64)
        syn = linkemu.tcp_connect_times(link.client_ns, linkemu.SERVER_IP, 5999, 5)
    icmp = linkemu.ping(link.client_ns, linkemu.SERVER_IP, 5)
    with linkemu.tcp_sink(link.server_ns, 5997):
        raw = linkemu.tcp_download_for(link.client_ns, linkemu.SERVER_IP, 5997, bulk_seconds)
    return {
        "connect_p50_ms": statistics.median(syn) * 1000,
        "ping_p50_ms": statistics.median(icmp) * 1000 if icmp else float("nan"),
        "raw_bulk_MBps": raw,
    }


def relay_ceiling(link: LinkEmulator, mib: int) -> str:
    """The link wide open: a short 64-byte UDP flood and a TCP download through it."""
    flood = linkemu.flood_pps(link, seconds=0.5)
    with linkemu.tcp_sink(link.server_ns, 5998):
        before = link.stats()
        secs = linkemu.tcp_download(link.client_ns, linkemu.SERVER_IP, 5998, mib << 20)
        cpu = link.stats()["cpu_s"] - before["cpu_s"]
    mbit = (mib << 20) * 8 / 1e6
    return (
        f"wide open it forwarded {flood['pps']:,.0f} 64-byte UDP packets/s"
        f" ({flood['pps_per_cpu_s']:,.0f} per relay CPU-second) and a {mib} MiB TCP download"
        f" at {mbit / secs:,.0f} Mbit/s (relay at {100 * cpu / secs:.0f}% of a CPU,"
        f" {mbit / max(cpu, 1e-9):,.0f} Mbit per relay CPU-second)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", default="40ms,150ms", help="comma-separated RTTs")
    parser.add_argument("--loss", type=float, default=0.5, help="percent, each direction")
    parser.add_argument("--rate", default="50mbit", help="bottleneck each direction")
    parser.add_argument("--runs", type=int, default=None, help="default 3 (--quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--pairs", default=None, help="comma-separated subset of pairs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown file whose emulated-link section is (re)written (default "
        "benchmarks/results.md; with --quick none unless given)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--ours-client-args", default="", help="extra flags for our client (one string)"
    )
    parser.add_argument(
        "--ours-server-args", default="", help="extra flags for our server (one string)"
    )
    parser.add_argument(
        "--singbox-tfo",
        action="store_true",
        help="tcp_fast_open on sing-box's anytls inbound (sing-box 1.14 refuses it on the"
        " anytls outbound)",
    )
    parser.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in both namespaces before the runs, e.g. net.ipv4.tcp_fastopen=3 (repeatable)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="log every packet crossing the link to packets.txt in each pair's log"
        " directory (implies --keep)",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.keep = args.keep or args.trace
    sizes = QUICK if args.quick else FULL
    out_path = args.out or (None if args.quick else HERE / "results.md")
    pairs = PAIRS
    if args.pairs:
        wanted = set(args.pairs.split(","))
        pairs = [p for p in PAIRS if p[0] in wanted]
        if not pairs:
            parser.error(f"--pairs: none of {sorted(wanted)} in {[p[0] for p in PAIRS]}")
    rate = linkemu.parse_rate(args.rate)
    profiles = [
        Profile(rtt, LinkConfig.symmetric(rtt=rtt, loss=args.loss / 100, rate=rate))
        for rtt in (linkemu.parse_duration(x) for x in args.link.split(","))
    ]
    signal.signal(signal.SIGTERM, bench._on_signal)
    work = Path(tempfile.mkdtemp(prefix="anytls-bench-link-"))
    ok = False
    t_start = time.monotonic()
    load = bench.load_average()
    busy0, own0 = bench.machine_busy_seconds(), bench.own_cpu_seconds()
    raw: dict[str, dict[str, list[dict[str, float]]]] = {
        p.title: {name: [] for name, _, _ in pairs} for p in profiles
    }
    flags = server_flags() + shlex.split(args.ours_server_args)
    client_flags = shlex.split(args.ours_client_args)
    port = 20000
    try:
        cert, key = bench.make_cert(work)
        with LinkEmulator(LinkConfig()) as link:
            calib = relay_ceiling(link, 4 if args.quick else 32)
            for setting in args.sysctl:
                link.sysctl(setting)
            for prof in profiles:
                link.set(prof.config.up, prof.config.down)
                prof.check = check_link(link, sizes.bulk_seconds)
            for run in range(args.runs):
                for prof in profiles:
                    link.set(prof.config.up, prof.config.down)
                    for name, client_impl, server_impl in pairs:
                        t0 = time.monotonic()
                        before = link.stats()
                        pair = LinkPair(
                            name,
                            client_impl,
                            server_impl,
                            link,
                            work / f"run{run + 1}-{prof.rtt * 1000:g}ms-{name.replace(':', '_')}",
                            cert,
                            key,
                            flags if server_impl == "ours" else [],
                            port,
                            client_flags if client_impl == "ours" else [],
                            args.singbox_tfo,
                        )
                        port += 10
                        if args.trace:
                            pair.workdir.mkdir(parents=True)
                            link.trace(pair.workdir / "packets.txt")
                        result = run_pair(pair, sizes, run * 16 + len(raw[prof.title][name]))
                        if args.trace:
                            link.trace(None)
                        after = link.stats()
                        for k in ("packets", "loss_drops", "queue_drops"):
                            prof.relay[k] = prof.relay.get(k, 0) + sum(
                                after[d][k] - before[d][k] for d in ("up", "down")
                            )
                        prof.relay["max_queue"] = max(
                            after["up"]["max_queue"],
                            after["down"]["max_queue"],
                            prof.relay.get("max_queue", 0),
                        )
                        raw[prof.title][name].append(result)
                        print(
                            f"run {run + 1}/{args.runs} {prof.rtt * 1000:g} ms {name}:"
                            f" {time.monotonic() - t0:.1f} s (cold {result['cold_ms']:.0f} ms,"
                            f" new dest {result['warm_new_ms']:.0f} ms,"
                            f" bulk {result['bulk_MBps']:.2f} MB/s)",
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
        bench._kill_all()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    medians = {
        title: {
            name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for name, runs in per_pair.items()
        }
        for title, per_pair in raw.items()
    }
    others = max(0.0, (bench.machine_busy_seconds() - busy0) - (bench.own_cpu_seconds() - own0))
    section = render_section(
        profiles, medians, raw, sizes, args, time.monotonic() - t_start, load, others, calib
    )
    print(section)
    if out_path is not None:
        write_section(out_path, section)
        write_json_tables(
            out_path.with_suffix(".json"), json_tables(profiles, medians, sizes, now_utc())
        )
        print(f"written to {out_path} and {out_path.with_suffix('.json')}", file=sys.stderr)
    if args.keep:
        print(f"logs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
