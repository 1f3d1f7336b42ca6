"""README and examples agree with the code and with each other (issue 17 #14)."""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

from anytls.aio.tls import server_context
from tests.helpers.net import make_self_signed_cert

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.md").read_text()


def test_readme_names_the_python_version_and_how_to_install_the_client() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert f"Python {minimum} or newer" in README
    assert "pipx install" in README and "bin/anytls-client" in README
    assert "insecure=1` still works, but the client logs a WARNING" in README


def test_certificate_paths_agree_across_examples() -> None:
    toml = (EXAMPLES / "server.toml").read_text()
    unit = (EXAMPLES / "anytls-server.service").read_text()
    hook = (EXAMPLES / "certbot-deploy-hook.sh").read_text()
    paths = dict(re.findall(r'^# (cert|key) = "([^"]+)"', toml, re.MULTILINE))
    assert paths == {"cert": "/etc/anytls/fullchain.pem", "key": "/etc/anytls/privkey.pem"}
    user = re.search(r"^User=(\S+)", unit, re.MULTILINE)
    assert user is not None
    assert f"ANYTLS_GROUP:-{user.group(1)}" in hook
    for path in paths.values():
        directory, name = path.rsplit("/", 1)
        assert path in unit and name in hook and f"ANYTLS_CERT_DIR:-{directory}" in hook
    assert "certbot-deploy-hook.sh" in README and "renewal-hooks/deploy" in README


def test_certbot_deploy_hook_installs_readable_files_and_reloads(tmp_path: Path) -> None:
    live = tmp_path / "live"
    cert, key = make_self_signed_cert(live)
    (live / "fullchain.pem").write_bytes(cert.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    dest = tmp_path / "etc-anytls"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RENEWED_LINEAGE": str(live),
        "ANYTLS_CERT_DIR": str(dest),
        "ANYTLS_GROUP": grp.getgrgid(os.getgid()).gr_name,
    }
    subprocess.run([str(EXAMPLES / "certbot-deploy-hook.sh")], env=env, check=True, timeout=30)
    for name in ("fullchain.pem", "privkey.pem"):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o640
    assert calls.read_text().split() == ["reload", "anytls-server"]
    server_context(str(dest / "fullchain.pem"), str(dest / "privkey.pem"))


def test_readme_python_blocks_are_valid_python() -> None:
    # What a reader copies must at least compile (no top-level `async with`).
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")
