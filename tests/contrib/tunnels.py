"""The AnyTLS servers the contrib tests tunnel through: ours (in-process) and sing-box.

    async with anytls_server("ours", tmp_path, cert_pair) as link:   # an anytls:// link
        ...

Server construction lives here only, so a change of server defaults is made once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from anytls import ServerConfig, serve
from tests.helpers.net import free_port
from tests.helpers.singbox import SingBox, anytls_server_config

PASSWORD = "contrib-pw"
KINDS = ["ours", "sing-box"]


@contextlib.asynccontextmanager
async def anytls_server(
    kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]
) -> AsyncIterator[str]:
    """Run an AnyTLS server of ``kind`` on loopback; yield a link to it (self-signed)."""
    if kind == "ours":
        server = await serve(
            ServerConfig(users={"u": PASSWORD}, allow_private=True), "127.0.0.1", 0
        )
        try:
            port = server.sockets[0].getsockname()[1]
            yield f"anytls://{PASSWORD}@127.0.0.1:{port}/?insecure=1"
        finally:
            await server.close()
    else:
        cert, key = cert_pair
        port = free_port()
        config = anytls_server_config(port, [("u", PASSWORD)], cert, key, log_level="warn")
        async with SingBox(config, tmp_path / "sing-box", name="server"):
            yield f"anytls://{PASSWORD}@127.0.0.1:{port}/?insecure=1"
