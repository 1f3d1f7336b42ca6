"""Go-flag compatibility for argparse.

The reference programs use Go's ``flag`` package, where ``-name`` and ``--name`` are the
same and ``-name=value`` works. :func:`normalise` rewrites such spellings into what
argparse expects before parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence


def normalise(argv: Sequence[str], short: Iterable[str], long: Iterable[str]) -> list[str]:
    """Rewrite ``--x``→``-x`` for one-letter flags and ``-name``→``--name`` for long ones."""
    shorts = set(short)
    longs = set(long)
    out: list[str] = []
    passthrough = False
    for arg in argv:
        if passthrough or not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        if arg == "--":
            passthrough = True
            out.append(arg)
            continue
        body = arg.lstrip("-")
        name, sep, value = body.partition("=")
        if name in shorts:
            out.append(f"-{name}{'=' + value if sep else ''}")
        elif name in longs:
            out.append(f"--{name}{'=' + value if sep else ''}")
        else:
            out.append(arg)
    return out


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--name`` the parser knows, without dashes (for :func:`normalise`)."""
    return [
        opt[2:]
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--")
    ]


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ValueError(f"not a boolean: {text!r}")
