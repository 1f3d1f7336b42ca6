"""Config files: every flag as a TOML key, flags override the file, errors name file and key."""

from __future__ import annotations

import argparse
import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from anytls.cli import client as client_cli
from anytls.cli import server as server_cli
from anytls.cli._common import state_dir
from anytls.cli.config_file import MASK, toml_value
from anytls.errors import ConfigError
from tests.cli._util import run_cli
from tests.helpers.aio import async_test
from tests.helpers.echo import tcp_echo_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_socks5

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# One valid value for every key; the tests below fail when a flag is added without one.
SERVER_SAMPLES: dict[str, Any] = {
    "export_user": "alice",
    "listen": "127.0.0.1:9443",
    "password": "pw",
    "users": {"alice": "a-pw", "bob": "b:pw"},
    "padding_scheme": ["stop=2", "0=30-30", "1=100-200"],
    "cert": "tls/cert.pem",
    "key": "tls/key.pem",
    "state_dir": "state",
    "acme": ["proxy.example.com", "www.example.com"],
    "acme_email": "ops@example.com",
    "acme_directory": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "acme_ca": "ca.pem",
    "acme_http": "80",
    "public_host": "proxy.example.com",
    "share_links": False,
    "qr": True,
    "connect_timeout": 7,
    "idle_session_timeout": 120.5,
    "max_streams_per_session": 9,
    "heartbeat_interval": 15,
    "heartbeat_timeout": 4,
    "udp_idle_timeout": 30,
    "fallback": "127.0.0.1:80",
    "allow_private": False,
    "deny_private": True,
    "max_connections": 100,
    "auth_fail_limit": 5,
    "stream_buffer": 65536,
    "session_buffer": 524288,
    "preface_timeout": 4,
    "accept_proxy_protocol": True,
    "tcp_fast_open": True,
    "workers": 3,
    "metrics": "127.0.0.1:9090",
    "stats_interval": 5,
    "shutdown_grace": 2.5,
    "log_level": "debug",
    "log_format": "json",
    "speed_limit": 25.5,
    "api": "127.0.0.1:9999",
    "api_secret": "api-pw",
    "panel": "https://panel.example.com",
    "panel_token": "panel-pw",
    "node_id": 4,
}
CLIENT_SAMPLES: dict[str, Any] = {
    "listen": "127.0.0.1:1081",
    "server": "anytls://pw@proxy.example.com:8443/?insecure=1",
    "sni": "real.example.com",
    "password": "pw",
    "insecure": True,
    "fingerprint": "firefox",
    "pin_sha256": "ab" * 32,
    "ca": "ca.pem",
    "min_idle_session": 2,
    "idle_session_timeout": 60,
    "idle_session_check_interval": 10,
    "disable_session_reuse": True,
    "max_streams_per_session": 4,
    "max_handshakes": 3,
    "synack_timeout": 1.5,
    "wait_for_synack": True,
    "tcp_fast_open": True,
    "heartbeat_interval": 20,
    "heartbeat_timeout": 5,
    "auth": "user:pass",
    "udp_forward": ["127.0.0.1:5353=1.1.1.1:53"],
    "workers": 2,
    "log_level": "warning",
    "log_format": "json",
}


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_server_flag_is_a_config_key(tmp_path: Path) -> None:
    spec = server_cli.schema()
    assert {o.key for o in spec.options} == set(SERVER_SAMPLES)
    path = write_toml(tmp_path / "server.toml", SERVER_SAMPLES)
    args = server_cli.load_args(["-c", str(path)])
    for option in spec.options:
        value = getattr(args, option.dest)
        expected = SERVER_SAMPLES[option.key]
        if option.key in ("cert", "key", "state_dir", "acme_ca"):
            assert value == str(tmp_path / expected)  # relative to the file
        elif option.key == "users":
            assert value == ["alice:a-pw", "bob:b:pw"]
        else:
            assert value == expected, option.key
    assert args.panel == "https://panel.example.com"  # a panel node takes users from it:
    args.panel = None  # the file's users are what this test checks
    config = server_cli.server_config(args)
    assert config.users == {"default": "pw", "alice": "a-pw", "bob": "b:pw"}
    assert config.speed_limit == 25.5
    assert config.padding.stop == 2
    assert config.connect_timeout == 7.0
    # Every flag is a key, and every key a flag: the parser and the schema agree.
    parser = server_cli.build_parser()
    dests = {a.dest for a in parser._actions if a.option_strings}
    commands = {"help", "version", "config", "print_config", "export"}
    assert dests - commands == {o.dest for o in spec.options}


def test_every_client_flag_is_a_config_key(tmp_path: Path) -> None:
    spec = client_cli.schema()
    assert {o.key for o in spec.options} == set(CLIENT_SAMPLES)
    path = write_toml(tmp_path / "client.toml", CLIENT_SAMPLES)
    (tmp_path / "ca.pem").write_text("")
    args = client_cli.load_args(["-c", str(path)])
    for option in spec.options:
        expected = CLIENT_SAMPLES[option.key]
        if option.key == "insecure":
            expected = "true"
        elif option.key == "ca":
            expected = str(tmp_path / expected)  # relative to the file
        assert getattr(args, option.dest) == expected, option.key
    config = client_cli.config_from_args(args)
    assert (config.server_host, config.server_port, config.password) == (
        "proxy.example.com",
        8443,
        "pw",
    )
    assert config.sni == "real.example.com" and config.insecure and not config.reuse_sessions
    assert config.fingerprint == "firefox"
    assert (config.pin_sha256, config.ca_file) == ("ab" * 32, str(tmp_path / "ca.pem"))
    parser = client_cli.build_parser()
    dests = {a.dest for a in parser._actions if a.option_strings}
    commands = {"help", "version", "config", "print_config", "check"}
    assert dests - commands == {o.dest for o in spec.options}


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "s.toml",
        {
            "listen": "127.0.0.1:1000",
            "connect-timeout": 7,  # dashes work too
            "users": ["alice:one", "bob:two"],
            "deny_private": True,
        },
    )
    args = server_cli.load_args(
        ["-c", str(path), "-l", "127.0.0.1:2000", "--user", "bob:three", "-connect-timeout=9"]
    )
    assert args.l == "127.0.0.1:2000"
    assert args.connect_timeout == 9.0
    assert args.deny_private is True  # from the file
    # Users on the command line add to the file's, and win for the same name.
    assert server_cli.parse_users(args.p, args.user) == {"alice": "one", "bob": "three"}
    # Go-style -c and --config=FILE spellings.
    assert server_cli.load_args([f"-config={path}"]).l == "127.0.0.1:1000"
    client = write_toml(tmp_path / "c.toml", {"server": "h:1", "password": "x", "dr": True})
    args = client_cli.load_args(["--c", str(client), "-s", "other:2"])
    assert (args.s, args.p, args.dr) == ("other:2", "x", True)


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        ({"a": "1", "b": "2"}, {"a": "1", "b": "2"}),
        (["a:1", "b:2:3"], {"a": "1", "b": "2:3"}),
        ([{"name": "a", "password": "1"}], {"a": "1"}),
    ],
)
def test_user_shapes(tmp_path: Path, users: Any, expected: dict[str, str]) -> None:
    path = write_toml(tmp_path / "s.toml", {"users": users})
    args = server_cli.load_args(["-c", str(path)])
    assert server_cli.parse_users(args.p, args.user) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lisen": "1.2.3.4:1"}, "unknown key 'lisen' (did you mean 'listen'?)"),
        ({"listen": 8443}, "listen: expected a string, got a number (8443)"),
        ({"listen": "nonsense"}, "listen: 'nonsense': expected host:port"),
        ({"connect_timeout": "5"}, "connect_timeout: expected a number of seconds, got a string"),
        ({"workers": 1.5}, "workers: expected a whole number"),
        ({"deny_private": 1}, "deny_private: expected true or false"),
        ({"log_format": "xml"}, "log_format: 'xml' is not one of text, json"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of debug"),
        ({"udp_idle_timeout": 0}, "udp_idle_timeout: 0 is not a positive number"),
        ({"users": {"alice": ""}}, "users: user 'alice': the password must be a non-empty"),
        ({"users": ["alice"]}, "users: item 1 'alice': expected \"name:password\""),
        ({"users": 5}, "users: expected a table"),
        ({"fallback": "x"}, "fallback: 'x': expected host:port"),
        ({"padding_scheme": 3}, "padding_scheme: expected a file name or a list"),
        ({"idle-session-timeout": 1, "idle_session_timeout": 2}, "set the same option"),
        ({"config": "other.toml"}, "unknown key 'config'"),
    ],
)
def test_bad_server_files(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    path = write_toml(tmp_path / "server.toml", values)
    with pytest.raises(ConfigError) as info:
        server_cli.load_args(["-c", str(path)])
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server": "anytls://pw@host:0"}, "server: bad anytls URI"),
        ({"insecure": "yes"}, "insecure: expected true or false"),
        ({"udp_forward": ["nonsense"]}, "expected LOCAL=TARGET"),
        ({"auth": "nocolon"}, "auth: expected USER:PASS"),
        ({"min_idle_session": "5"}, "min_idle_session: expected a whole number"),
        ({"fingerprint": "netscape"}, "unknown fingerprint 'netscape'; valid: openssl, chrome"),
    ],
)
def test_bad_client_files(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    path = write_toml(tmp_path / "client.toml", values)
    with pytest.raises(ConfigError, match="^" + str(path)) as info:
        client_cli.load_args(["-c", str(path)])
    assert message in str(info.value)


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "server.toml", {"listen": "127.0.0.1:1", "max_conections": 5})
    result = run_cli("server", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"anytls-server: error: {bad}: unknown key 'max_conections' "
        "(did you mean 'max_connections'?)"
    ]
    syntax = tmp_path / "broken.toml"
    syntax.write_text('listen = "127.0.0.1:1\n')
    result = run_cli("client", "-c", str(syntax))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"anytls-client: error: {syntax}: not valid TOML: ")
    result = run_cli("server", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr
    assert "No such file or directory" in result.stderr
    # Command-line values are checked the same way.
    result = run_cli("server", "-p", "x", "--metrics", "nowhere")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "anytls-server: error: --metrics: 'nowhere': expected host:port, e.g. 127.0.0.1:8443"
    ]


def test_print_config_round_trip(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "server.toml",
        {"listen": "127.0.0.1:1000", "users": {"alice": "secret-a"}, "cert": "c.pem"},
    )
    result = run_cli(
        "server", "-c", str(path), "-p", "secret-p", "--workers", "2", "--print-config"
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "secret-" not in text
    printed = tomllib.loads(text)
    assert printed["password"] == MASK
    assert printed["users"] == {"alice": MASK}
    assert printed["workers"] == 2 and printed["listen"] == "127.0.0.1:1000"
    assert printed["cert"] == str(tmp_path / "c.pem")
    assert "# key = (not set)" in text
    # the effective state directory (the default here), not "(not set)"; the
    # compatibility flag deny_private only when given
    assert printed["state_dir"] == str(state_dir(server_cli.load_args(["-p", "x"])))
    assert "deny_private" not in printed and printed["allow_private"] is False
    # The printed file, passwords filled in again, is the same configuration.
    printed["password"], printed["users"] = "secret-p", {"alice": "secret-a"}
    again = write_toml(tmp_path / "again.toml", printed)
    original = server_cli.load_args(["-c", str(path), "-p", "secret-p", "--workers", "2"])
    reloaded = server_cli.load_args(["-c", str(again)])
    assert state_dir(reloaded) == state_dir(original)
    for option in server_cli.schema().options:
        if option.dest == "state_dir":
            continue  # given now, the same directory (above)
        assert getattr(reloaded, option.dest) == getattr(original, option.dest), option.key

    result = run_cli(
        "client", "-s", "anytls://hidden@h:1/?insecure=1", "--auth", "me:hidden2", "--print-config"
    )
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert "hidden" not in result.stdout
    assert printed["server"] == f"anytls://{MASK}@h:1/?insecure=1"
    assert printed["auth"] == f"me:{MASK}"


def test_examples_parse() -> None:
    server = server_cli.load_args(["-c", str(EXAMPLES / "server.toml")])
    assert server_cli.parse_users(server.p, server.user) == {
        "alice": "change-me-alice",
        "bob": "change-me-bob",
    }
    client = client_cli.load_args(["-c", str(EXAMPLES / "client.toml")])
    assert client_cli.config_from_args(client).server_host == "proxy.example.com"
    assert isinstance(client, argparse.Namespace)


@async_test
async def test_example_configs_carry_traffic(tmp_path: Path) -> None:
    """The shipped examples run as they are (only the addresses overridden)."""
    port, mixed = free_port(), free_port()
    server_args = ["-c", str(EXAMPLES / "server.toml"), "--workers", "1"]
    client_args = [
        "-c",
        str(EXAMPLES / "client.toml"),
        "-s",
        f"anytls://change-me-bob@127.0.0.1:{port}/?insecure=1",
    ]
    async with (
        tcp_echo_server() as echo,
        AnyTLSProcess.server(port, server_args, tmp_path / "srv") as server,
        AnyTLSProcess.client(mixed, client_args, tmp_path / "cli"),
    ):
        reader, writer = await open_socks5("127.0.0.1", mixed, *echo)
        writer.write(b"hello example")
        assert await reader.readexactly(13) == b"hello example"
        writer.close()
        await server.wait_log(r"session from 127\.0\.0\.1:\d+: user bob")
        await asyncio.sleep(0)


def test_default_state_dir_follows_systemd_then_xdg(tmp_path: Path) -> None:
    from anytls.state import default_state_dir, ensure_state_dir

    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/anytls", "HOME": "/h"}) == Path(
        "/var/lib/anytls"
    )
    assert default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/h"}) == Path("/x/anytls")
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/anytls")
    made = ensure_state_dir(tmp_path / "a" / "b")
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700


def test_fingerprint_from_link_flag_and_file(tmp_path: Path) -> None:
    def config(*argv: str) -> Any:
        return client_cli.config_from_args(client_cli.load_args(list(argv)))

    assert config("-s", "h:1", "-p", "pw").fingerprint == "chrome"  # the default
    link = "anytls://pw@h:1/?fp=firefox"
    assert config("-s", link).fingerprint == "firefox"
    assert config("-s", link, "--fingerprint", "openssl").fingerprint == "openssl"
    path = write_toml(tmp_path / "client.toml", {"server": link, "fingerprint": "safari"})
    assert config("-c", str(path)).fingerprint == "safari"
    with pytest.raises(ConfigError, match="unknown fingerprint 'netscape'"):
        config("-s", "anytls://pw@h:1/?fp=netscape")


@pytest.mark.parametrize("setting", ["listen", "log-level", '"allow_private"'])
def test_a_setting_after_the_users_table_is_refused(tmp_path: Path, setting: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        f'workers = 1\n\n[users]\nalice = "a-long-password"\n{setting} = "127.0.0.1:28450"\n'
    )
    result = run_cli("server", "-c", str(path), "--print-config")
    assert result.returncode == 2
    name = setting.strip('"')
    assert f"{path}:5: {name!r} under [users]" in result.stderr, result.stderr
    assert "move it above [users]" in result.stderr
