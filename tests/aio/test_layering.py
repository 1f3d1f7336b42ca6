"""The asyncio layer's modules form no import cycle (type-only imports included), and no
module outside ``stream.py`` calls a private method of :class:`~anytls.aio.stream.Stream`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import anytls

PACKAGE = Path(anytls.__file__).parent
AIO = PACKAGE / "aio"


def _aio_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in AIO.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
        graph[path.stem] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            mod = todo.pop()
            if mod not in seen:
                seen.add(mod)
                todo.extend(graph.get(mod, ()))
        return seen

    return sorted(mod for mod in graph if mod in reachable(mod))


def test_no_import_cycle_in_the_asyncio_layer() -> None:
    graph = _aio_imports()
    assert {"client", "server", "stream", "connection", "udp", "uot_server"} <= set(graph)
    assert _cycles(graph) == []


def test_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a", "b"]


_PRIVATE_STREAM_CALL = re.compile(r"\bstream\._(?!_)[a-z]\w*\(")


def test_no_private_stream_method_called_from_outside() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "stream.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _PRIVATE_STREAM_CALL.search(line)
    ]
    assert offenders == []
