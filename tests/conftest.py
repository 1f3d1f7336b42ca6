"""Shared pytest configuration. Keep this minimal: helpers live in ``tests/helpers``.

Async tests: decorate ``async def`` tests with ``tests.helpers.aio.async_test`` (plain
``asyncio.run`` + 60 s timeout); no asyncio pytest plugin mode is configured here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.net import make_self_signed_cert


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem): self-signed EC P-256 for localhost / 127.0.0.1 / ::1."""
    return make_self_signed_cert(tmp_path / "tls")
