"""Options backed by the settings dataclasses: one default, shown in the help, used as is."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from anytls.aio.client import ClientConfig
from anytls.aio.server import ServerConfig
from anytls.cli import client as client_cli
from anytls.cli import server as server_cli
from anytls.cli._flags import Options, field_default, show_default
from tests.cli._util import run_cli

#: Client settings whose command-line default is deliberately not the library's.
CLIENT_CLI_DEFAULTS = {"min_idle_session": 5}  # anytls-go's -m


@dataclass
class Sample:
    name: str
    seconds: float = 2.0
    count: int = 3
    ratio: float = 0.25
    switch: bool = False
    on: bool = True
    words: list[str] = field(default_factory=lambda: ["a"])


def test_options_take_default_type_and_help_from_the_field() -> None:
    parser = argparse.ArgumentParser()
    option = Options(parser, Sample).add
    seconds = option("--seconds", help="wait (default {default}; 0 = never)")
    count = option("-n", "--count", dest="count", help="N (default {default} = three)")
    ratio = option("--share", field="ratio", help="part ({default})")
    switch = option("--switch", action="store_true", help="turn on")
    listen = option("--listen", default="0.0.0.0:1", help="where (default {default})")
    assert (seconds.default, seconds.type, seconds.help) == (
        2.0,
        float,
        "wait (default 2; 0 = never)",
    )
    assert (count.default, count.type, count.help) == (3, int, "N (default 3 = three)")
    assert (ratio.dest, ratio.default, ratio.help) == ("share", 0.25, "part (0.25)")
    assert switch.default is False
    assert (listen.default, listen.type, listen.help) == (
        "0.0.0.0:1",
        None,
        "where (default 0.0.0.0:1)",
    )
    args = parser.parse_args(["--seconds", "1.5", "--count", "7", "--switch"])
    assert (args.seconds, args.count, args.share, args.switch) == (1.5, 7, 0.25, True)


def test_options_refuse_what_cannot_work() -> None:
    option = Options(argparse.ArgumentParser(), Sample).add
    with pytest.raises(ValueError, match="cannot turn off on=True"):
        option("--on", action="store_true", help="x")
    with pytest.raises(LookupError, match="no field 'missing'"):
        option("--missing", help="x")
    with pytest.raises(LookupError, match=r"Sample\.name has no default"):
        option("--name", help="x")


def test_field_default_and_its_display() -> None:
    assert field_default(Sample, "words") == ["a"]
    assert field_default(ServerConfig, "idle_session_timeout") == 600.0
    assert [show_default(v) for v in (600.0, 0.5, 262144, "text")] == [
        "600",
        "0.5",
        "262144",
        "text",
    ]


def _differences(config: object, cls: type, skip: set[str]) -> dict[str, tuple[object, object]]:
    """Fields of ``config`` not at ``cls``'s declared default: name → (value, default)."""
    out = {}
    for item in dataclasses.fields(cls):
        if item.name in skip or item.default is item.default_factory is dataclasses.MISSING:
            continue
        value, default = getattr(config, item.name), field_default(cls, item.name)
        if value != default:
            out[item.name] = (value, default)
    return out


def test_server_without_flags_uses_the_library_defaults() -> None:
    config = server_cli.server_config(server_cli.load_args(["-p", "a-long-password"]))
    assert _differences(config, ServerConfig, {"padding"}) == {}
    assert config.padding.md5 == field_default(ServerConfig, "padding").md5
    help_text = " ".join(server_cli.build_parser().format_help().split())
    assert "(default 600; 0 = never)" in help_text


def test_client_without_flags_uses_the_library_defaults() -> None:
    config = client_cli.config_from_args(client_cli.load_args(["-s", "h:1", "-p", "pw"]))
    assert _differences(config, ClientConfig, set()) == {
        name: (value, field_default(ClientConfig, name))
        for name, value in CLIENT_CLI_DEFAULTS.items()
    }


@pytest.mark.parametrize(
    ("kind", "argv", "said"),
    [
        ("client", ["-s", "x", "--lisen", "127.0.0.1:1090"], "(did you mean --listen?)"),
        ("server", ["--pasword", "x"], "(did you mean --password?)"),
        ("client", ["-s", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_a_mistyped_flag_is_named_with_the_closest_one(
    kind: str, argv: list[str], said: str
) -> None:
    done = run_cli(kind, *argv)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"anytls-{kind}: error: unrecognized arguments: ") and said in last
    if "frobnicate" in said:
        assert "did you mean" not in last  # nothing close enough: no guess
