"""MkDocs hook: the configuration reference, generated at build time from the programs' own
argparse parsers (``build_parser()`` of ``anytls.cli.server`` and ``anytls.cli.client``) and
their config-file schemas, so it says exactly what ``--help`` says.

A page writes ``<!-- options: anytls-server -->`` (or ``anytls-client``) where the table
goes. The hook also turns the reST roles of the docstrings (``:class:`~anytls.Client```)
into plain code in the API reference.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import Any

PROGRAMS = ("anytls-server", "anytls-client")
MARKER = re.compile(r"<!--\s*options:\s*([\w-]+)\s*-->")
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")


def _module(program: str) -> Any:
    if program == "anytls-server":
        from anytls.cli import server

        return server
    if program == "anytls-client":
        from anytls.cli import client

        return client
    raise ValueError(f"unknown program {program!r} (expected one of {PROGRAMS})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _flags(action: argparse.Action) -> str:
    strings = list(action.option_strings)
    if isinstance(action, argparse.BooleanOptionalAction):
        return " / ".join(f"`{s}`" for s in strings)
    metavar = action.metavar
    if metavar is None and action.nargs != 0:
        choices = action.choices
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.nargs == "?":
        metavar = f"[{metavar}]"
    shown = []
    for s in strings:
        shown.append(f"`{s} {metavar}`" if metavar and s == strings[-1] else f"`{s}`")
    return ", ".join(shown)


def _default(action: argparse.Action) -> str:
    value = action.default
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if value else "off"
    if value is None or value == [] or value is argparse.SUPPRESS:
        return "—"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": ""}
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    return text


def options_table(program: str) -> str:
    """The Markdown table of every option of ``program`` (``anytls-server``/``-client``)."""
    module = _module(program)
    parser: argparse.ArgumentParser = module.build_parser()
    keys = {option.dest: option for option in module.schema(parser).options}
    rows = [
        "| option | config key | default | meaning |",
        "|---|---|---|---|",
    ]
    for action in parser._actions:
        if not action.option_strings:
            continue
        option = keys.get(action.dest)
        if option is not None:
            key = f"`{option.key}` ({option.kind})"
            if option.aliases:
                key += " or " + ", ".join(f"`{a}`" for a in option.aliases)
        else:
            key = "— (command-line only)"
        rows.append(f"| {_flags(action)} | {key} | {_default(action)} | {_cell(_help(action))} |")
    usage = parser.format_usage().strip()
    return f"```text\n{usage}\n```\n\n" + "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every ``<!-- options: PROGRAM -->`` with that program's option table."""
    return MARKER.sub(lambda m: options_table(m.group(1)), markdown)


def on_page_content(html: str, **kwargs: Any) -> str:
    """``:class:<code>~a.b.C</code>`` (a reST role in a docstring) → ``<code>C</code>``."""
    return ROLE.sub(
        lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
        html,
    )
