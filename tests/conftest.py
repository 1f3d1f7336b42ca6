"""Shared pytest configuration. Keep this minimal: helpers live in ``tests/helpers``.

Async tests: decorate ``async def`` tests with ``tests.helpers.aio.async_test`` (plain
``asyncio.run`` + 60 s timeout); no asyncio pytest plugin mode is configured here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from tests.helpers.net import make_self_signed_cert

# Import hypothesis at start-up: CPython 3.11.7 can raise "AST constructor recursion depth
# mismatch" when pytest's assertion rewriter first imports it from deep inside the
# terminal-summary hook. A bounded profile keeps property tests quick in CI.
hypothesis.settings.register_profile("ci", max_examples=100, deadline=None)
hypothesis.settings.load_profile("ci")


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem): self-signed EC P-256 for localhost / 127.0.0.1 / ::1."""
    return make_self_signed_cert(tmp_path / "tls")


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers started without --cert keep their certificate in the state directory: give
    the whole run (and the programs it starts) its own instead of ~/.local/state."""
    import os

    os.environ.pop("STATE_DIRECTORY", None)
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


@pytest.fixture(autouse=True, scope="session")
def _our_server_may_reach_loopback() -> Iterator[None]:
    """In tests, ``ServerConfig()`` allows private destinations unless told otherwise.

    A real server refuses loopback and private destinations by default, but nearly every
    test proxies to an echo server on 127.0.0.1. Tests of the refusal pass
    ``allow_private=False`` (library) or run the real CLI without ``--allow-private``
    (``AnyTLSProcess.server(..., allow_private=False)``).
    """
    from anytls.aio.server import ServerConfig

    init = ServerConfig.__init__
    defaults = init.__defaults__ or ()
    params = list(inspect.signature(init).parameters)
    index = params[len(params) - len(defaults) :].index("allow_private")
    init.__defaults__ = (*defaults[:index], True, *defaults[index + 1 :])
    try:
        yield
    finally:
        init.__defaults__ = defaults
