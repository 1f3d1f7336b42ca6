"""Configuration files (TOML) for ``anytls-server -c FILE`` and ``anytls-client -c FILE``.

Every command-line option is a key: its long flag name with ``_`` or ``-`` (``listen``,
``idle-session-timeout``, ``padding_scheme`` ...). The file's values become the argparse
defaults, so flags given on the command line override them (repeatable flags such as
``--user`` add to the file's list). Values are checked against the option's type and
validator as the file is read; a problem is reported as ``FILE: KEY: reason`` in one
:class:`ConfigError`. Relative paths (``cert``, ``key``, ``padding_scheme`` ...) are
relative to the file's directory.

:func:`to_toml` renders a parsed namespace back to TOML for ``--print-config``, with
passwords masked.

Only the standard library is used (``tomllib`` to read; the writer is the small subset
that these values need).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..users import parse_entry

#: What a masked secret looks like in ``--print-config``.
MASK = "********"

#: Option kinds: how a TOML value is checked and converted.
#:  str, int, float, bool - as named (an int is fine for a float)
#:  path     - a string; relative to the config file's directory
#:  strlist  - a list of strings (a single string is a one-item list)
#:  gobool   - a bool stored as "true"/"false" (flags with an optional BOOL value)
#:  users    - {name = "password"}, ["name:password"] or [{name = .., password = ..}];
#:             a user may be a table with limits (see anytls.users)
#:  padding  - a path, or the scheme inline as a list of lines
KINDS = ("str", "int", "float", "bool", "path", "strlist", "gobool", "users", "padding")

Validator = Callable[[Any], object]


@dataclass(frozen=True)
class Option:
    """One configurable option: a config key and the argparse destination it fills."""

    key: str
    dest: str
    kind: str
    flag: str
    aliases: tuple[str, ...] = ()
    secret: bool = False
    choices: tuple[Any, ...] | None = None


@dataclass
class Schema:
    """The options of one program, built from its argparse parser."""

    options: list[Option]
    validators: Mapping[str, Validator] = field(default_factory=dict)

    def by_key(self) -> dict[str, Option]:
        """Every accepted key (canonical and aliases) → option."""
        out: dict[str, Option] = {}
        for option in self.options:
            for key in (option.key, *option.aliases):
                out[key] = option
        return out


def normalise_key(key: str) -> str:
    """``idle-session-timeout`` → ``idle_session_timeout``."""
    return key.strip().lower().replace("-", "_")


def _action_kind(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "bool"
    if isinstance(action, argparse.BooleanOptionalAction):
        return "bool"
    if isinstance(action, argparse._AppendAction):
        return "strlist"
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    return "str"


def schema_from_parser(
    parser: argparse.ArgumentParser,
    *,
    exclude: Iterable[str] = (),
    keys: Mapping[str, str] | None = None,
    kinds: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    validators: Mapping[str, Validator] | None = None,
) -> Schema:
    """Derive the config keys from ``parser``'s options.

    ``keys`` names the canonical key of a destination (default: its longest long flag),
    ``kinds`` overrides the kind guessed from the action, ``exclude`` lists destinations
    that are commands rather than settings (``--help``, ``--print-config`` ...).
    """
    keys = keys or {}
    kinds = kinds or {}
    skip = {"help", "version", *exclude}
    secret_dests = set(secrets)
    options: list[Option] = []
    for action in parser._actions:
        if action.dest in skip or not action.option_strings:
            continue
        strings = list(action.option_strings)
        if isinstance(action, argparse.BooleanOptionalAction):
            strings = [o for o in strings if not o.startswith("--no-")]
        longs = [normalise_key(o.lstrip("-")) for o in strings if o.startswith("--")]
        longest = max(strings, key=len)
        key = keys.get(action.dest) or (max(longs, key=len) if longs else action.dest)
        aliases = tuple(dict.fromkeys(k for k in longs if k != key))
        options.append(
            Option(
                key=key,
                dest=action.dest,
                kind=kinds.get(action.dest) or _action_kind(action),
                flag="/".join(strings) if len(longest) > 2 else longest,
                aliases=aliases,
                secret=action.dest in secret_dests,
                choices=tuple(action.choices) if action.choices else None,
            )
        )
    return Schema(options, dict(validators or {}))


# ---------------------------------------------------------------------- reading


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value, ensure_ascii=False)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _convert(option: Option, value: Any, base: str) -> Any:
    """Check and convert one TOML value; raise ``ValueError`` with the reason."""
    kind = option.kind
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_type_name(value)}")
        if kind == "path" and value:
            return os.path.join(base, os.path.expanduser(value))
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_type_name(value)}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number of seconds, got {_type_name(value)}")
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_type_name(value)}")
        return value
    if kind == "gobool":
        if isinstance(value, bool):
            return "true" if value else "false"
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    if kind == "strlist":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected a list of strings, got {_type_name(value)}")
        return list(items)
    if kind == "users":
        return _users(value)
    if kind == "padding":
        if isinstance(value, str):
            return os.path.join(base, os.path.expanduser(value)) if value else value
        if isinstance(value, list) and all(isinstance(i, str) for i in value):
            return list(value)
        raise ValueError(f"expected a file name or a list of scheme lines, got {_type_name(value)}")
    raise AssertionError(f"unknown option kind {kind!r}")


def _users(value: Any) -> list[str]:
    """Users as ``name:password`` strings, from any of the accepted shapes."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            # A per-user table: password plus limits (checked by anytls.users).
            pairs.append(
                (name, parse_entry(str(name), item).password if isinstance(item, dict) else item)
            )
    elif isinstance(value, list):
        for index, item in enumerate(value, 1):
            if isinstance(item, str):
                name, sep, pw = item.partition(":")
                if not sep:
                    raise ValueError(f'item {index} {item!r}: expected "name:password"')
                pairs.append((name, pw))
            elif isinstance(item, dict):
                if "name" not in item or "password" not in item:
                    raise ValueError(f'item {index}: expected {{name = "...", password = "..."}}')
                pairs.append((item["name"], parse_entry(str(item["name"]), item).password))
            else:
                raise ValueError(f'item {index}: expected "name:password" or a table')
    else:
        raise ValueError(
            f'expected a table {{name = "password"}} or a list, got {_type_name(value)}'
        )
    out: list[str] = []
    for name, pw in pairs:
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"user name {name!r}: must be a non-empty string without ':'")
        if not isinstance(pw, str) or not pw:
            raise ValueError(f"user {name!r}: the password must be a non-empty string")
        out.append(f"{name}:{pw}")
    return out


def read_toml(path: str) -> dict[str, Any]:
    """The parsed file; :class:`ConfigError` says why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8") from exc


def load_file(path: str, schema: Schema) -> dict[str, Any]:
    """Read ``path`` and return argparse destination → value for ``set_defaults``."""
    data = read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    known = schema.by_key()
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, value in data.items():
        key = normalise_key(raw_key)
        option = known.get(key)
        if option is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {raw_key!r}{hint}")
        if option.dest in seen:
            raise ConfigError(f"{path}: {raw_key!r} and {seen[option.dest]!r} set the same option")
        seen[option.dest] = raw_key
        if option.kind == "users" and isinstance(value, dict):
            _check_user_names(path, raw_key, value, known)
        try:
            converted = _convert(option, value, base)
            if option.choices is not None and converted not in option.choices:
                choices = ", ".join(str(c) for c in option.choices)
                raise ValueError(f"{converted!r} is not one of {choices}")
            validator = schema.validators.get(option.dest)
            if validator is not None and converted is not None:
                validator(converted)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{path}: {raw_key}: {exc}") from exc
        values[option.dest] = converted
    return values


def _check_user_names(
    path: str, table: str, users: Mapping[str, Any], known: Mapping[str, Option]
) -> None:
    """Refuse a "user" that is really a setting written after the ``[users]`` table."""
    for name in users:
        if normalise_key(name) not in known:
            continue
        line = _line_of(path, table, name)
        where = f"{path}:{line}" if line else path
        raise ConfigError(
            f"{where}: {name!r} under [{table}] is read as a user called {name!r}, but it is "
            f"a setting: move it above [{table}] (in TOML, every key after a [table] line "
            "belongs to that table)"
        )


def _line_of(path: str, table: str, key: str) -> int | None:
    """The line number of ``key = ...`` after the ``[table]`` header, if it can be found."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    inside = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped.strip("[] \t").strip("\"'") == table
            continue
        name = stripped.partition("=")[0].strip().strip("\"'")
        if inside and stripped and name == key:
            return number
    return None


def preparse_config(argv: Sequence[str]) -> str | None:
    """The ``-c``/``--config`` file named in ``argv`` (already Go-normalised), if any."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(list(argv))
    return known.config  # type: ignore[no-any-return]


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str], schema: Schema
) -> argparse.Namespace:
    """Parse ``argv`` with the ``-c`` file's values as defaults (flags win).

    Raises :class:`ConfigError` for a bad file; argparse exits for bad flags.
    """
    path = preparse_config(argv)
    if path:
        parser.set_defaults(**load_file(path, schema))
    args, extra = parser.parse_known_args(list(argv))
    if extra:
        parser.error(unrecognized(parser, extra))
    return args


def unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """argparse's complaint about ``extra``, with the closest flag for a mistyped one."""
    import difflib

    flags = [flag for action in parser._actions for flag in action.option_strings]
    message = f"unrecognized arguments: {' '.join(extra)}"
    for word in extra:
        if word.startswith("-"):
            near = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.7)
            if near:
                message += f" (did you mean {near[0]}?)"
                break
    return message


def check_values(args: argparse.Namespace, schema: Schema) -> None:
    """Run the validators on every set value; :class:`ConfigError` names the flag."""
    for option in schema.options:
        validator = schema.validators.get(option.dest)
        value = getattr(args, option.dest, None)
        if validator is None or value is None:
            continue
        try:
            validator(value)
        except (ValueError, ConfigError) as exc:
            text = str(exc)
            if any(text.startswith(flag) for flag in option.flag.split("/")):
                raise ConfigError(text) from exc
            raise ConfigError(f"{option.flag}: {text}") from exc


# ---------------------------------------------------------------------- writing

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def toml_key(key: str) -> str:
    """``key`` bare when it can be, else quoted."""
    return key if key and set(key) <= _BARE else toml_value(key)


def toml_value(value: Any) -> str:
    """One TOML value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def mask_secret(option: Option, value: Any) -> Any:
    """``value`` with the password parts replaced by :data:`MASK`."""
    if option.kind == "users":
        return {item.partition(":")[0]: MASK for item in value}
    if isinstance(value, str) and value:
        return MASK
    return value


def to_toml(
    args: argparse.Namespace,
    schema: Schema,
    *,
    header: str = "",
    render: Mapping[str, Callable[[Any], Any]] | None = None,
) -> str:
    """The effective settings as a TOML document (unset options as comments).

    ``render`` maps a destination to a function giving the value to write (after masking
    for secret options it replaces the default masking).
    """
    render = render or {}
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for option in schema.options:
        value = getattr(args, option.dest, None)
        if option.dest in render:
            value = render[option.dest](value)
        elif option.secret:
            value = mask_secret(option, value)
        elif option.kind == "users" and value is not None:
            value = {n: p for n, _, p in (item.partition(":") for item in value)}
        if value is None or value == [] or value == {}:
            lines.append(f"# {option.key} = (not set)")
            continue
        lines.append(f"{toml_key(option.key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
