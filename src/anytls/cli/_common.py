"""Plumbing shared by ``anytls-client`` and ``anytls-server`` (and the server's modules).

Argument definitions both programs declare identically, the flags + config file →
namespace step, the one-line error exit, and the server's state directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..core.address import Address
from ..errors import ConfigError
from ..log import FORMATS, LEVELS
from ._flags import long_options, normalise
from .config_file import Schema, check_values, parse_args, to_toml


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config`` and ``--print-config``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML config file; its keys are the long option names (flags given here override it)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML (passwords masked) and exit",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level``, ``--log-format`` and ``--version``."""
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.lower,
        help="debug, info, warning, error (default: LOG_LEVEL env or info)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json (one object per line, for log shippers)",
    )
    parser.add_argument("--version", action="version", version=f"anytls {__version__}")


def parse_listen(text: str) -> Address:
    """A listen address; Go's ``:PORT`` means all interfaces (raises ConfigError)."""
    return Address.parse("0.0.0.0" + text if text.startswith(":") else text)


def state_dir(args: argparse.Namespace) -> Path:
    """``anytls-server --state-dir``, else the default (see :mod:`anytls.state`)."""
    from ..state import default_state_dir

    return Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()


def print_config(
    prog: str,
    args: argparse.Namespace,
    schema: Schema,
    render: dict[str, Callable[[Any], Any]] | None = None,
) -> None:
    """``--print-config``: the effective settings as TOML (passwords masked)."""
    header = f"{prog} {__version__}: effective configuration (passwords masked)"
    if args.config:
        header += f"\nfrom {args.config} and the command line"
    print(to_toml(args, schema, header=header, render=render), end="")


def check_log_level(value: str) -> None:
    """Config validator for ``log_level``."""
    if value.lower() not in LEVELS:
        raise ConfigError(f"{value!r} is not one of debug, info, warning, error")


def load_args(
    parser_factory: Callable[[], argparse.ArgumentParser],
    schema_factory: Callable[[argparse.ArgumentParser], Schema],
    short: Iterable[str],
    argv: Sequence[str],
) -> argparse.Namespace:
    """Flags and config file → namespace (raises ConfigError for the file or a value)."""
    parser = parser_factory()
    spec = schema_factory(parser)
    args = parse_args(parser, normalise(argv, short, long_options(parser)), spec)
    check_values(args, spec)
    return args


def fail(prog: str, message: str) -> NoReturn:
    """Report a configuration problem in one line and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def warn_fast_open(enabled: bool, *, server: bool) -> None:
    """Log once at start why ``--tcp-fast-open`` will not take effect on this host."""
    if not enabled:
        return
    import logging

    from ..aio.tfo import sysctl_problem

    problem = sysctl_problem(server)
    if problem:
        logging.getLogger("anytls").warning("%s", problem)
