"""An AnyTLS server inside your own asyncio program: ``anytls.serve``.

    python server_in_program.py fullchain.pem privkey.pem 8443 alice:password bob:password

Listens on every address until SIGINT or SIGTERM, then stops accepting and gives open
streams up to 10 s to finish. Loopback and private destinations are refused, as in
``anytls-server`` (``ServerConfig(allow_private=True)`` lets them through).
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

import anytls


async def start(
    cert: str, key: str, users: dict[str, str], host: str = "0.0.0.0", port: int = 8443
) -> anytls.AnyTLSServer:
    """Listen on ``host:port`` with this certificate for ``users`` (name → password)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return await anytls.serve(anytls.ServerConfig(users=users), host, port, context)


async def main(cert: str, key: str, port: int, users: dict[str, str]) -> None:
    server = await start(cert, key, users, port=port)
    print(f"serving {len(users)} user(s) on port {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    cut_off = await server.shutdown(grace=10)  # open streams may finish first
    print(f"stopped ({cut_off} stream(s) cut off)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)  # the usage, on stderr
    cert, key, port, *accounts = sys.argv[1:]
    users = dict(account.split(":", 1) for account in accounts)
    asyncio.run(main(cert, key, int(port), users))
