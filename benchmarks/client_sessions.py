"""New client sessions as users configure them: ours against sing-box's client.

``bench.py`` runs the clients with ``--insecure`` against ``127.0.0.1``, so a session's
setup there never verifies a certificate or looks a name up. Users address their server
by name and either pin its certificate (share links) or verify it against the system's
trust store (a CA-issued certificate). This script measures that setup for both
clients against the same server (ours): the server is ``localhost`` (a name), the
certificate is verified against a copy of the system's hashed CA directory with the
benchmark's certificate added (``SSL_CERT_DIR``, honoured by both clients), or pinned.

Through each client's SOCKS5 port it opens ``--sessions`` connections one after another
and keeps them open, so each needs a new session; per connection: SOCKS CONNECT to an
echo target and one byte echoed. Printed: the p50 of that time and the client's CPU per
session, medians over ``--runs`` alternating runs.

    python benchmarks/client_sessions.py [--sessions 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import loadgen

SYSTEM_CA_DIR = Path("/etc/ssl/certs")


def trust_dir(cert: Path, directory: Path) -> Path:
    """A copy of the system's hashed CA directory (links) plus ``cert`` under its hash."""
    directory.mkdir()
    for entry in SYSTEM_CA_DIR.glob("*.[0-9]"):
        (directory / entry.name).symlink_to(entry.resolve())
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for n in range(10):
        link = directory / f"{subject_hash}.{n}"
        if not link.exists():
            link.symlink_to(cert)
            break
    return directory


def pin_of(cert: Path) -> str:
    """Our share link's pinSHA256: SHA-256 of the certificate's DER."""
    import ssl

    from anytls.aio.tls import certificate_sha256

    return certificate_sha256(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def client_argv(impl: str, mode: str, mixed: int, server: int, cert: Path, work: Path) -> list[str]:
    if impl == "ours":
        argv = [*bench.ours("client"), "-l", f"127.0.0.1:{mixed}"]
        link = f"anytls://{bench.PASSWORD}@localhost:{server}/"
        if mode == "pinned":
            link += f"?pinSHA256={pin_of(cert)}"
        return [*argv, "-s", link, "--log-level", "warning"]
    tls: dict[str, Any] = {"enabled": True, "server_name": "localhost"}
    if mode == "pinned":
        tls["certificate_public_key_sha256"] = [public_key_pin(cert)]
    config = bench.singbox_client_config(mixed, server)
    config["outbounds"][0].update(server="localhost", tls=tls)
    path = work / f"sing-box-client-{mode}.json"
    path.write_text(json.dumps(config, indent=2))
    return [bench.singbox_bin(), "run", "--disable-color", "-D", str(work), "-c", str(path)]


def public_key_pin(cert: Path) -> str:
    """sing-box's pin: base64 of SHA-256 of the certificate's SubjectPublicKeyInfo."""
    from cryptography import x509

    from anytls.certs import spki_sha256_base64

    return spki_sha256_base64(x509.load_pem_x509_certificate(cert.read_bytes()))


async def sessions(mixed: int, echo: int, count: int, client_pid: int) -> tuple[float, float]:
    """Open ``count`` connections one by one, all kept open: p50 ms and client CPU ms."""
    proxy = ("127.0.0.1", mixed)
    socks = []
    times: list[float] = []
    loop = asyncio.get_running_loop()
    cpu0 = loadgen.cpu_seconds(client_pid)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            sock = await loadgen.socks_connect(proxy, echo)
            socks.append(sock)
            await loop.sock_sendall(sock, b"!")
            await loadgen.recv_exact(sock, 1)
            times.append((time.perf_counter() - t0) * 1000)
        cpu = loadgen.cpu_seconds(client_pid) - cpu0
    finally:
        for sock in socks:
            sock.close()
    return statistics.median(times), cpu / count * 1000


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="anytls-client-sessions-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = bench.make_cert(work)
        env_dir = trust_dir(cert, work / "ca")
        os.environ["SSL_CERT_DIR"] = str(env_dir)  # both clients' trust store
        os.environ.pop("SSL_CERT_FILE", None)
        targets = loadgen.Targets()
        await targets.start()
        port = bench.free_port()
        argv = [
            *bench.ours("server"),
            *("-l", f"127.0.0.1:{port}", "-p", bench.PASSWORD),
            *("--cert", str(cert), "--key", str(key), "--allow-private"),
            *("--log-level", "warning", "--workers", "1"),
        ]
        server = bench.spawn(argv, work / "server.log", work)
        procs.append(server)
        bench.wait_ready(server, port, work / "server.log", "our server")
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.runs):
            for mode in ("verified", "pinned"):
                for impl in ("ours", "sing-box"):
                    mixed = bench.free_port_tcp_udp()
                    log = work / f"{impl}-{mode}.log"
                    client = bench.spawn(
                        client_argv(impl, mode, mixed, port, cert, work), log, work
                    )
                    procs.append(client)
                    try:
                        bench.wait_ready(client, mixed, log, f"{impl} client")
                        row = await sessions(mixed, targets.echo, args.sessions, client.pid)
                    finally:
                        client.terminate()
                        client.wait(10)
                    results.setdefault((impl, mode), []).append(row)
        print(f"{args.sessions} new sessions per run, medians of {args.runs} runs, server: ours")
        print("| client, certificate | session + first byte p50 ms | client CPU ms/session |")
        print("|---|---:|---:|")
        for (impl, mode), rows in results.items():
            p50 = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            print(f"| {impl}, {mode} | {p50:.2f} | {cpu:.2f} |")
        await targets.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
