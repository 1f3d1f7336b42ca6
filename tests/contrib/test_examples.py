"""The runnable examples the documentation shows (examples/*.py, included in docs/ as is):
DNS with dnspython's async API over ``anytls.open_udp`` (via our server and sing-box),
and the sans-IO ``Session`` driven by a blocking socket."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest

from tests.contrib.tunnels import KINDS, PASSWORD, anytls_server
from tests.helpers.aio import async_test
from tests.helpers.dnsd import dns_server, expected_a, expected_aaaa, expected_txt
from tests.helpers.echo import refused_port
from tests.helpers.httpd import HELLO, http_server

ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_docs_include_the_examples() -> None:
    library = (ROOT / "docs" / "library.md").read_text()
    for example in ("examples/dns_over_anytls.py", "examples/sans_io.py"):
        assert f'--8<-- "{example}"' in library, example


@pytest.mark.parametrize("kind", KINDS)
@async_test
async def test_dns_example(kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    example = load_example("dns_over_anytls")
    async with dns_server() as dnsd, anytls_server(kind, tmp_path, cert_pair) as link:
        for name, rdtype in [("a.example.test.", "A"), ("b.example.test.", "AAAA")]:
            response = await example.resolve(link, "127.0.0.1", name, rdtype, port=dnsd.port)
            (rrset,) = response.answer
            want = expected_a(name) if rdtype == "A" else expected_aaaa(name)
            assert [r.address for r in rrset] == [want]
        # a 2.4 KB answer arrives whole through UDP over TCP
        response = await example.resolve(link, "127.0.0.1", "t.test.", "TXT", port=dnsd.port)
        (rrset,) = response.answer
        assert list(next(iter(rrset)).strings) == expected_txt("t.test.")
        assert dnsd.stats.datagrams == 3


@async_test
async def test_sans_io_example(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    example = load_example("sans_io")
    async with anytls_server("ours", tmp_path, cert_pair) as link:
        server = urlsplit(link)
        assert server.hostname is not None and server.port is not None
        with http_server() as web:
            request = f"GET /hello HTTP/1.0\r\nHost: localhost:{web.port}\r\n\r\n".encode()
            answer = await asyncio.to_thread(
                example.fetch, server.hostname, server.port, PASSWORD, "localhost", web.port,
                request,
            )  # fmt: skip
            assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(HELLO)
            with pytest.raises(example.StreamOpenError, match="refused"):
                await asyncio.to_thread(
                    example.fetch, server.hostname, server.port, PASSWORD, "127.0.0.1",
                    refused_port(), request,
                )  # fmt: skip
