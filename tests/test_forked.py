"""anytls.forked: certificate work in a child, so the server never maps cryptography."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anytls.errors import ConfigError
from anytls.forked import run_forked


def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def _fails(message: str) -> None:
    raise ConfigError(message)


def test_result_and_exception_come_from_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anytls.forked.HEAVY", ("a-module-nobody-loads",))
    pid, doubled = run_forked(_pid_and, 21)
    assert doubled == 42
    assert pid != os.getpid()
    with pytest.raises(ConfigError, match="names the file"):
        run_forked(_fails, "names the file")


def test_in_process_when_the_module_is_loaded_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anytls.forked.HEAVY", ("os",))
    assert run_forked(_pid_and, 1)[0] == os.getpid()


CHECK = """
import sys
from pathlib import Path
from anytls.certs import stored_certificate
from anytls.cli._share import public_endpoint
from anytls.core.address import Address
stored = stored_certificate(Path(sys.argv[1]), ["localhost", "127.0.0.1"])
endpoint = public_endpoint(Address("127.0.0.1", 8443), None, str(stored.cert_path),
                           str(stored.key_path))
assert endpoint.pin_sha256 == stored.sha256 and len(stored.sha256) == 64, endpoint
print("cryptography" in sys.modules)
"""


def test_certificate_work_leaves_cryptography_unloaded(tmp_path: Path) -> None:
    """Making the stored certificate and the share-link facts does not load cryptography
    (about 8 MiB resident for the server's whole life) in the calling process."""
    for _ in range(2):  # made, then read back
        out = subprocess.run(
            [sys.executable, "-c", CHECK, str(tmp_path / "state")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "False", out.stderr
