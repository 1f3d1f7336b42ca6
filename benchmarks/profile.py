"""Profile one benchmark phase of our client or server with py-spy (native frames too).

    pip install -e '.[bench]'                      # py-spy
    python benchmarks/profile.py                   # concurrent phase, client side, 3 runs
    python benchmarks/profile.py --side server --phase latency --out benchmarks/PROFILE.md

Each run starts a fresh ours:ours pair (as ``bench.py`` does), warms one pooled session with
30 stream opens, then records the chosen process with ``py-spy record --native`` while the
load generator runs the phase. Samples where the process sat in ``epoll_pwait`` (idle) are
dropped; the rest are summed over the runs and printed as the frames with the most samples
of their own and the most samples below them (inclusive). py-spy slows the recorded process
down, so read the shares, not the phase's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import loadgen  # noqa: E402

PHASES = ("concurrent", "latency", "download", "new-sessions")


def py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(path).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return path


def start_py_spy(pid: int, rate: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--native",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--pid",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def run_phase(
    phase: str,
    port: int,
    server: tuple[str, int],
    targets: loadgen.Targets,
    pids: tuple[int, int],
) -> None:
    proxy = ("127.0.0.1", port)
    if phase == "concurrent":
        await loadgen.phase_concurrent(proxy, targets.echo, 200, 256 << 10)
    elif phase == "latency":
        await loadgen.phase_latency(proxy, targets.echo, 1000)
    elif phase == "new-sessions":
        # straight to the server (the client process idles): TLS, preface, one stream
        await loadgen.phase_new_sessions(server, bench.PASSWORD, targets.echo, 600, pids[1])
    else:
        await loadgen._bulk(proxy, targets.bulk, 256 << 20, True, *pids)


async def record(args: argparse.Namespace, work: Path) -> list[Path]:
    targets = loadgen.Targets()
    await targets.start()
    cert, key = bench.make_cert(work)
    outputs = []
    try:
        for run in range(args.runs):
            pair = bench.Pair(
                "ours:ours",
                "ours",
                "ours",
                work / f"run{run}",
                cert,
                key,
                bench.ours_server_has_workers(),
            )
            try:
                client, server, port = pair.start()
                for _ in range(30):
                    sock = await loadgen.socks_connect(("127.0.0.1", port), targets.echo)
                    sock.close()
                pid = client.pid if args.side == "client" else server.pid
                out = work / f"run{run}.txt"
                spy = start_py_spy(pid, args.rate, out)
                await asyncio.sleep(1.0)  # py-spy attaches
                await run_phase(
                    args.phase,
                    port,
                    ("127.0.0.1", pair.server_port),
                    targets,
                    (client.pid, server.pid),
                )
                await asyncio.sleep(0.1)
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                outputs.append(out)
            finally:
                pair.stop()
    finally:
        await targets.close()
    return outputs


def summarise(
    paths: list[Path], top: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f.split(" (")[0] for f in stack.split(";")]
            if not frames or "epoll_pwait" in frames[-1]:
                continue  # idle, waiting for events
            n = int(count)
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                incl[name] += n
    # Frames under (nearly) every sample are the event loop's own; addresses are frames of
    # stripped libraries (libcrypto): leave both out of the inclusive list.
    telling = [
        (name, n)
        for name, n in incl.most_common()
        if n < 0.95 * total and not name.startswith("0x")
    ]
    return total, own.most_common(top), telling[: top * 2]


def render(
    args: argparse.Namespace, total: int, own: list[tuple[str, int]], incl: list[tuple[str, int]]
) -> str:
    lines = [
        f"## py-spy: our {args.side}, {args.phase} phase ({args.runs} runs, {total} busy samples)",
        "",
        f"`python benchmarks/profile.py --side {args.side} --phase {args.phase} "
        f"--runs {args.runs}`",
        "",
        "| own samples | frame |",
        "|---:|---|",
        *(f"| {n / total:.1%} | `{name}` |" for name, n in own),
        "",
        "| inclusive (loop frames left out) | frame |",
        "|---:|---|",
        *(f"| {n / total:.1%} | `{name}` |" for name, n in incl),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("client", "server"), default="client")
    parser.add_argument("--phase", choices=PHASES, default="concurrent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", help="append the markdown result to this file")
    args = parser.parse_args()
    py_spy()
    work = Path(tempfile.mkdtemp(prefix="anytls-profile-"))
    try:
        paths = asyncio.run(record(args, work))
        total, own, incl = summarise(paths, args.top)
    finally:
        bench._kill_all()
        shutil.rmtree(work, ignore_errors=True)
    if not total:
        print("no samples recorded", file=sys.stderr)
        return 1
    text = render(args, total, own, incl)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
