"""The core package must stay sans-IO: no event loop, sockets, TLS or clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import anytls.core

FORBIDDEN = {"asyncio", "socket", "ssl", "time", "selectors"}
CORE = Path(anytls.core.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_core_modules_found() -> None:
    names = {p.name for p in MODULES}
    assert {"address.py", "uot.py", "socks5.py", "http_proxy.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = _imported_roots(tree) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}; anytls.core must stay sans-IO"


def test_checker_catches_forbidden_imports() -> None:
    for source in (
        "import asyncio",
        "import time as t",
        "from socket import socket",
        "from ssl import SSLContext",
        "import os, selectors",
        "importlib.import_module('time')",
    ):
        assert _imported_roots(ast.parse(source)) & FORBIDDEN, source
    assert not _imported_roots(ast.parse("from .time_utils import x")) & FORBIDDEN
