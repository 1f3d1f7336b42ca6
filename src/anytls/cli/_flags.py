"""argparse helpers: options backed by a settings dataclass, and Go-flag compatibility.

:class:`Options` adds an option whose default (and type) is the default of the
:class:`~anytls.aio.server.ServerConfig` / :class:`~anytls.aio.client.ClientConfig` field it
sets, and writes that default into the help text, so a default is stated once.

The reference programs use Go's ``flag`` package, where ``-name`` and ``--name`` are the
same and ``-name=value`` works. :func:`normalise` rewrites such spellings into what
argparse expects before parsing.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

#: Field annotations (strings under ``from __future__ import annotations``) → argparse type.
_TYPES: dict[str, type] = {"int": int, "float": float}


def field_default(config: type, name: str) -> Any:
    """The default of the field ``name`` of the dataclass ``config`` (a factory's value)."""
    for item in dataclasses.fields(config):
        if item.name != name:
            continue
        if item.default is not dataclasses.MISSING:
            return item.default
        if item.default_factory is not dataclasses.MISSING:
            return item.default_factory()
        raise LookupError(f"{config.__name__}.{name} has no default")
    raise LookupError(f"{config.__name__} has no field {name!r}")


def show_default(value: object) -> str:
    """A default as help text writes it: ``600.0`` → ``600``, ``0.5`` → ``0.5``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Options:
    """Adds options to ``parser`` whose defaults are the fields of the dataclass ``config``.

    :meth:`add` is ``parser.add_argument`` where a missing ``default`` is the default of the
    field named like the option's destination (``--connect-timeout`` → ``connect_timeout``,
    or ``field=``), ``type`` follows the field's annotation (``int``, ``float``), and
    ``{default}`` in ``help`` becomes the default as :func:`show_default` writes it.
    """

    def __init__(self, parser: argparse.ArgumentParser, config: type) -> None:
        self.parser = parser
        self.config = config
        self._fields = {item.name: item for item in dataclasses.fields(config)}

    def add(
        self, *flags: str, help: str, field: str | None = None, **kwargs: Any
    ) -> argparse.Action:
        """Add one option (see the class); an explicit ``default=`` is not a field's."""
        if "default" not in kwargs:
            name = field or kwargs.get("dest") or _dest(flags)
            default = field_default(self.config, name)
            if kwargs.get("action") == "store_true" and default is not False:
                raise ValueError(f"{flags[-1]}: a switch cannot turn off {name}={default!r}")
            kwargs["default"] = default
            annotation = self._fields[name].type
            kind = _TYPES.get(annotation if isinstance(annotation, str) else annotation.__name__)
            if kind is not None and "action" not in kwargs:
                kwargs.setdefault("type", kind)
        return self.parser.add_argument(
            *flags, help=help.replace("{default}", show_default(kwargs["default"])), **kwargs
        )


def _dest(flags: Sequence[str]) -> str:
    """argparse's destination for ``flags``: the first long one, ``-`` → ``_``."""
    longs = [flag for flag in flags if flag.startswith("--")]
    return (longs[0] if longs else flags[0]).lstrip("-").replace("-", "_")


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
