"""The documentation site: ``mkdocs build --strict`` passes, every public name of ``anytls``
is in the API reference, the configuration reference has every option of both programs
(generated from their parsers), and the pages include the tested examples and the charts."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import anytls
from anytls.cli import client, server

ROOT = Path(__file__).resolve().parents[2]


def hook() -> ModuleType:
    path = ROOT / "docs" / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_public_name_in_the_api_reference(site: Path) -> None:
    ids = set(re.findall(r'id="([^"]+)"', page(site, "api")))
    missing = [name for name in anytls.__all__ if f"anytls.{name}" not in ids]
    assert not missing, f"not in the API reference: {missing}"
    for name in (
        "anytls.contrib.httpx.AnyTLSTransport",
        "anytls.contrib.aiohttp.AnyTLSConnector",
        "anytls.core.session.Session",
    ):
        assert name in ids
    # docstring roles (:class:`~anytls.Client`) come out as code, not as reST markup
    assert ":class:<code>" not in page(site, "api")


@pytest.mark.parametrize("module", [server, client], ids=["server", "client"])
def test_configuration_reference_has_every_option(site: Path, module: ModuleType) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", page(site, "configuration")))
    parser = module.build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text, flag
        if action.help:
            assert action.help.split("(")[0].strip()[:40] in text, action.help
    for option in module.schema(parser).options:
        assert f"{option.key} ({option.kind})" in text, option.key


def test_option_table_follows_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = hook()
    original = server.build_parser

    def with_new_option() -> object:
        parser = original()
        parser.add_argument("--brand-new", type=int, default=7, metavar="N", help="a new knob")
        return parser

    monkeypatch.setattr(server, "build_parser", with_new_option)
    table = reference.options_table("anytls-server")
    assert "| `--brand-new N` | `brand_new` (int) | `7` | a new knob |" in table
    assert "usage: anytls-server" in table
    page_text = reference.on_page_markdown("x\n<!-- options: anytls-client -->\ny")
    assert "`--udp-forward LOCAL=TARGET`" in page_text and "<!--" not in page_text


def test_pages_show_examples_and_charts(site: Path) -> None:
    library = html.unescape(re.sub(r"<[^>]+>", "", page(site, "library")))
    assert "TunnelledDatagramSocket" in library  # examples/dns_over_anytls.py, included
    assert "session.receive_data" in library  # examples/sans_io.py, included
    benchmarks = page(site, "benchmarks")
    for src in re.findall(r'<img[^>]+src="([^"]+)"', benchmarks):
        assert (site / "benchmarks" / src).resolve().is_file(), src
    assert "bench-loopback.png" in benchmarks
