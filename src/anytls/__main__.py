"""``python -m anytls server|client ...``."""

from __future__ import annotations

import sys

USAGE = """usage: python -m anytls {server|client} [flags...]

programs:
  server  the AnyTLS server (same as anytls-server; see python -m anytls server --help)
  client  a local SOCKS5 + HTTP proxy that tunnels through an AnyTLS server
          (same as anytls-client; see python -m anytls client --help)
"""


def main() -> None:
    """Dispatch to the server or client program."""
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if len(sys.argv) < 2 or sys.argv[1] not in ("server", "client"):
        print(USAGE, end="", file=sys.stderr)
        raise SystemExit(2)
    which = sys.argv.pop(1)
    if which == "server":
        from .cli.server import main as run
    else:
        from .cli.client import main as run
    run()


if __name__ == "__main__":
    main()
