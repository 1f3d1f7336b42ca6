"""Safe defaults of the real ``anytls-server`` (issue 17 #11, #12, #13)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess


def _check(port: int, password: str, target: str) -> tuple[int, str]:
    result = run_cli(
        "client", "-s", f"127.0.0.1:{port}", "-p", password, "--insecure", "--check", target
    )
    return result.returncode, result.stdout + result.stderr


@async_test
async def test_default_server_refuses_loopback_and_allow_private_opts_out(
    tmp_path: Path,
) -> None:
    default_port, open_port = free_port(), free_port()
    args = ["-p", "a-long-password", "--workers", "1"]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(
            default_port, args, tmp_path / "default", allow_private=False
        ) as default,
        AnyTLSProcess.server(open_port, [*args, "--allow-private"], tmp_path / "open"),
    ):
        targets = [f"127.0.0.1:{echo.port}", f"localhost:{echo.port}", f"[::1]:{echo.port}"]
        refused = await asyncio.gather(
            *(asyncio.to_thread(_check, default_port, "a-long-password", t) for t in targets)
        )
        for target, (code, output) in zip(targets, refused, strict=True):
            assert code == 1, (target, output)
            assert "is not allowed (private or local address)" in output, output
            assert "unless it runs with --allow-private" in output, output  # the way out
        await default.wait_log(r"stream \d+: destination .* is not allowed")
        assert echo.stats.connections == 0
        code, output = await asyncio.to_thread(
            _check, open_port, "a-long-password", f"127.0.0.1:{echo.port}"
        )
        assert code == 0, output


def test_server_without_password_generates_a_strong_one_in_the_share_link(
    tmp_path: Path,
) -> None:
    port = free_port()
    state = tmp_path / "state"
    args = ["--workers", "1", "--log-level", "info", "--state-dir", str(state)]
    passwords = []
    for run in ("first", "second"):  # the password is kept: links survive a restart
        with AnyTLSProcess.server(port, args, tmp_path / run) as server:
            (warning,) = server.log_lines(r"no password given: user 'default' has a generated")
            # a WARNING when it is made; the same password at the next start, at INFO
            level = "WARNING" if run == "first" else "INFO"
            assert level in warning and "in the share link" in warning
            assert str(state / "generated-password") in warning
            (line,) = server.log_lines(r"share link for user default: ")
            link = line.split("share link for user default: ", 1)[1].strip()
            passwords.append(link.split("://", 1)[1].split("@", 1)[0])
            result = run_cli("client", "-s", link, "--check", f"127.0.0.1:{port}")
            assert result.returncode == 0, result.stdout + result.stderr
            assert not server.log_lines(r"characters and can be guessed")
    assert passwords[0] == passwords[1] and len(passwords[0]) >= 20
    assert oct((state / "generated-password").stat().st_mode & 0o777) == "0o600"
    # The quick start's next step, --export, hands out that same password.
    exported = run_cli("server", "--state-dir", str(state), "--export", "sing-box")
    assert exported.returncode == 0, exported.stderr
    (outbound,) = [o for o in json.loads(exported.stdout)["outbounds"] if o["type"] == "anytls"]
    assert outbound["password"] == passwords[0]


def test_short_password_is_warned_about(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", "change-me", "--user", "dave:short", "--workers", "1", "--log-level", "info"]
    with AnyTLSProcess.server(port, args, tmp_path) as server:
        (line,) = server.log_lines(r"user default: the password has only 9 characters")
        assert "WARNING" in line and "can be guessed" in line and "without -p" in line
        # a --user's password: -p is not where it came from
        (line,) = server.log_lines(r"user dave: the password has only 5 characters")
        assert "can be guessed" in line and "-p" not in line
