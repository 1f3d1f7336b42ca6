"""``python -m anytls server|client ...``."""

from __future__ import annotations

import sys


def main() -> None:
    """Dispatch to the server or client program."""
    if len(sys.argv) < 2 or sys.argv[1] not in ("server", "client"):
        print("usage: python -m anytls {server|client} [flags...]", file=sys.stderr)
        raise SystemExit(2)
    which = sys.argv.pop(1)
    if which == "server":
        from .cli.server import main as run
    else:
        from .cli.client import main as run
    run()


if __name__ == "__main__":
    main()
