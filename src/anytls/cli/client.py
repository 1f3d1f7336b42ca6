"""``anytls-client``: flags compatible with anytls-go's client, plus a few extras.

Settings come from flags and/or a TOML file (``-c client.toml``, see
:mod:`anytls.cli.config_file`); flags win. ``--check [HOST:PORT]`` tests the server once and exits.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..aio.client import ClientConfig
from ..core.address import Address
from ..errors import ConfigError
from ..inbound.udp_forward import parse_forward
from ..log import set_worker, setup_logging
from ..uri import format_uri, parse_uri, strip_quotes
from . import _common, _run
from ._check import check_until_stopped
from ._client_process import Auth, ClientProcess, ClientStartup
from ._flags import Options, long_options, normalise, parse_bool
from ._run import run
from .config_file import MASK, Schema, schema_from_parser

log = logging.getLogger("anytls.client")

_SHORT = ("l", "s", "p", "m", "h", "c")
PROG = "anytls-client"
#: Target of ``--check`` when none is given.
CHECK_TARGET = "www.gstatic.com:80"

__all__ = ["build_parser", "config_from_args", "long_options", "main", "normalise"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="AnyTLS client with a local SOCKS5 + HTTP proxy port. Every option can "
        "also be set in a TOML file given with -c.",
        allow_abbrev=False,
    )
    # option(): the default (and type) of the ClientConfig field it sets, unless given;
    # "{default}" in its help shows the default.
    option = Options(parser, ClientConfig).add
    _common.add_config_arguments(parser)
    parser.add_argument(
        "--check",
        nargs="?",
        const=CHECK_TARGET,
        metavar="HOST:PORT",
        help="connect to the server, open one stream to HOST:PORT (default "
        f"{CHECK_TARGET}), print the timings and exit (status 1 on failure)",
    )
    option(
        "-l",
        "--listen",
        dest="l",
        metavar="HOST:PORT",
        default="127.0.0.1:1080",
        help="local SOCKS5/HTTP listen address (default {default})",
    )
    parser.add_argument(
        "-s", "--server", dest="s", metavar="SERVER", help="server host:port or an anytls:// URI"
    )
    parser.add_argument("--sni", metavar="NAME", help="TLS server name (an IP sends no SNI)")
    parser.add_argument(
        "-p", "--password", dest="p", metavar="PASSWORD", help="password (unless in the URI)"
    )
    parser.add_argument(
        "--fingerprint",
        metavar="NAME",
        help="TLS ClientHello to send: a browser profile (chrome, the default, is the "
        "newest Chrome curl-impersonate knows; firefox, safari, edge, chrome131 ...) or "
        "openssl for Python's own TLS; also fp=NAME in an anytls:// link",
    )
    parser.add_argument(
        "--insecure",
        nargs="?",
        const="true",
        default=None,
        metavar="BOOL",
        help="do not verify the server certificate (unsafe: a man in the middle gets the "
        "password hash, which is the credential; pin the certificate instead)",
    )
    parser.add_argument(
        "--pin-sha256",
        metavar="HEX",
        help="accept only the server certificate with this SHA-256 of its DER (the "
        "pinSHA256 of a share link), without CA or name checks",
    )
    parser.add_argument(
        "--ca",
        metavar="PEM",
        help="verify the server certificate against the CA certificates in this file "
        "(a private CA) instead of the system's",
    )
    option(
        "-m",
        "--min-idle-session",
        type=int,
        default=5,  # anytls-go's -m; the library's ClientConfig keeps none
        metavar="N",
        help="idle sessions kept open (default {default})",
    )
    option(
        "--idle-session-timeout",
        metavar="SECONDS",
        help="close idle sessions after this (default {default}; values <= 5 mean 30)",
    )
    option(
        "--idle-session-check-interval",
        metavar="SECONDS",
        help="how often idle sessions are checked (default {default})",
    )
    parser.add_argument(
        "--dr",
        "--disable-session-reuse",
        dest="dr",
        action="store_true",
        help="disable session reuse (one session per connection)",
    )
    option(
        "--max-streams-per-session",
        metavar="N",
        help="a pooled session takes a new connection while it carries fewer than N "
        "(default {default}: only idle ones, as the Go clients; more means fewer TLS "
        "handshakes)",
    )
    option(
        "--max-handshakes",
        metavar="N",
        help="sessions set up at a time; a connection that finds no idle session while N "
        "are being set up shares one of them, so a burst of connections is not a burst of "
        "TLS handshakes (default {default}; 0 = one new session per busy connection, as "
        "the Go clients)",
    )
    option(
        "--synack-timeout",
        metavar="SECONDS",
        help="close a reused v2 session whose new stream gets no SYNACK in "
        "time, and retry the stream on a fresh one (default {default}; 0 = off)",
    )
    option(
        "--tcp-fast-open",
        action="store_true",
        help="connect to the server with TCP Fast Open: a reconnect sends the TLS "
        "ClientHello in its SYN (needs the server's --tcp-fast-open)",
    )
    option(
        "--wait-for-synack",
        action="store_true",
        help="answer a SOCKS5/HTTP CONNECT only once the server has connected the "
        "destination, so failures get SOCKS/HTTP error codes (one round trip more); by "
        "default the answer is immediate and the first bytes go out with the SYN",
    )
    option(
        "--heartbeat-interval",
        metavar="SECONDS",
        help="send a heartbeat to a v2 server after this much silence (default {default} = off)",
    )
    option(
        "--heartbeat-timeout",
        metavar="SECONDS",
        help="close a session whose heartbeat is not answered in time (default {default})",
    )
    parser.add_argument(
        "--auth", metavar="USER:PASS", help="require this username/password from local clients"
    )
    parser.add_argument(
        "--udp-forward",
        action="append",
        default=[],
        metavar="LOCAL=TARGET",
        help="forward UDP arriving on LOCAL to TARGET through the server, "
        "e.g. 127.0.0.1:5353=8.8.8.8:53 (repeatable)",
    )
    option(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the local listening socket, each with its own "
        "session pool (default {default}; 0 = one per CPU core, or 1 with 2 cores or fewer)",
    )
    _common.add_logging_arguments(parser)
    return parser


# ---------------------------------------------------------------------- validation


def _is_link(text: str) -> bool:
    """A link of any scheme (``scheme://``): checked as a link, never as HOST:PORT."""
    return "://" in strip_quotes(text)


def _server(text: str) -> None:
    if _is_link(text):
        parse_uri(text)
    else:
        Address.parse(strip_quotes(text))


def _forwards(items: Sequence[str]) -> None:
    from ..inbound.udp_forward import parse_forward

    for item in items:
        parse_forward(item)


def parse_auth(text: str) -> tuple[str, str]:
    """``--auth USER:PASS`` → ``(user, password)`` (raises ConfigError)."""
    user, sep, password = text.partition(":")
    if not sep:
        raise ConfigError("expected USER:PASS")
    return user, password


def _pin(text: str) -> None:
    from ..aio.tls import normalise_pin

    normalise_pin(text)


def _ca(path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{path!r} is not a readable file of PEM CA certificates")


def _insecure(text: str) -> None:
    try:
        parse_bool(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _fingerprint(text: str) -> None:
    from ..aio.impersonate import check_fingerprint

    check_fingerprint(text)


VALIDATORS = {
    "fingerprint": _fingerprint,
    "l": _common.parse_listen,
    "s": _server,
    "udp_forward": _forwards,
    "auth": parse_auth,
    "insecure": _insecure,
    "pin_sha256": _pin,
    "log_level": _common.check_log_level,
}


def schema(parser: argparse.ArgumentParser | None = None) -> Schema:
    """The config-file keys of ``anytls-client``."""
    return schema_from_parser(
        parser or build_parser(),
        exclude=("config", "print_config", "check"),
        kinds={"insecure": "gobool", "ca": "path"},
        secrets=("p",),
        validators=VALIDATORS,
    )


def load_args(argv: Sequence[str]) -> argparse.Namespace:
    """Flags and config file → namespace (raises ConfigError for the file or a value)."""
    return _common.load_args(build_parser, schema, _SHORT, argv)


def fail(message: str) -> NoReturn:
    """Report a configuration problem in one line and exit with status 2."""
    _common.fail(PROG, message)


def config_from_args(args: argparse.Namespace) -> ClientConfig:
    """Build a :class:`~anytls.aio.client.ClientConfig` from parsed flags."""
    from ..aio.impersonate import DEFAULT_FINGERPRINT, check_fingerprint

    server = args.s
    if not server:
        raise ConfigError(
            "no server: give -s HOST:PORT or an anytls:// link (or `server` in the config file)"
        )
    sni = args.sni
    insecure = False
    pin = args.pin_sha256
    password = args.p
    fingerprint = DEFAULT_FINGERPRINT
    if _is_link(server):
        uri = parse_uri(server)
        host, port = uri.host, uri.port
        password = uri.password or password
        if uri.sni is not None:
            sni = uri.sni
        insecure = uri.insecure
        fingerprint = uri.fingerprint or fingerprint
        pin = uri.pin_sha256 or pin
    else:
        address = Address.parse(strip_quotes(server))
        host, port = address.host, address.port
    if args.insecure is not None:
        insecure = parse_bool(args.insecure)  # checked by the validator
    if not password:
        raise ConfigError("no password: give -p PASSWORD or put it in the anytls:// URI")
    if args.fingerprint:
        fingerprint = args.fingerprint
    check_fingerprint(fingerprint)
    if args.ca:
        _ca(args.ca)
    return ClientConfig(
        server_host=host,
        server_port=port,
        password=password,
        sni=sni,
        insecure=insecure,
        fingerprint=fingerprint,
        pin_sha256=pin,
        ca_file=args.ca,
        idle_session_timeout=args.idle_session_timeout,
        idle_session_check_interval=args.idle_session_check_interval,
        min_idle_session=max(0, args.min_idle_session),
        reuse_sessions=not args.dr,
        max_streams_per_session=max(1, args.max_streams_per_session),
        max_handshakes=max(0, args.max_handshakes),
        synack_timeout=max(0.0, args.synack_timeout),
        wait_for_synack=args.wait_for_synack,
        tcp_fast_open=args.tcp_fast_open,
        heartbeat_interval=max(0.0, args.heartbeat_interval),
        heartbeat_timeout=args.heartbeat_timeout,
    )


def read_settings(argv: Sequence[str]) -> tuple[argparse.Namespace, ClientConfig, Auth]:
    """Flags and config file → settings, client config and ``--auth`` (raises ConfigError)."""
    args = load_args(argv)
    return args, config_from_args(args), parse_auth(args.auth) if args.auth else None


# ---------------------------------------------------------------------- commands


def _mask_server(text: str | None) -> str | None:
    if text and text.lower().startswith("anytls://"):
        try:
            uri = parse_uri(text)
        except ConfigError:
            return text
        if uri.password:
            from dataclasses import replace

            bare = format_uri(replace(uri, password=""))
            return bare.replace("://", f"://{MASK}@", 1)
    return text


def _mask_auth(text: str | None) -> str | None:
    return f"{text.partition(':')[0]}:{MASK}" if text else text


def print_config(args: argparse.Namespace) -> None:
    """``--print-config``: the effective settings as TOML."""
    render = {
        "s": _mask_server,
        "auth": _mask_auth,
        "insecure": lambda v: None if v is None else parse_bool(v),
    }
    _common.print_config(PROG, args, schema(), render)


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``anytls-client``: settings, then the proxy in every worker process
    (or ``--check`` once)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = load_args(argv)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print_config(args)
        return
    try:
        config = config_from_args(args)
        listen = _common.parse_listen(args.l)
        auth = parse_auth(args.auth) if args.auth else None
        forwards = [parse_forward(text) for text in args.udp_forward]
        target = Address.parse(args.check) if args.check else None
    except ConfigError as exc:
        fail(str(exc))
    setup_logging(args.log_level or ("warning" if args.check else None), args.log_format)
    if args.p and _is_link(args.s) and parse_uri(args.s).password not in ("", args.p):
        log.warning("-p is ignored: the anytls:// link already carries a password")
    if target is not None:
        run(lambda stop: check_until_stopped(config, target, stop))
        return
    workers = _run.worker_count(args.workers, listen)
    _common.warn_fast_open(config.tcp_fast_open, server=False)
    try:
        # Bound once, here, and shared by the workers: a port someone holds fails now.
        sockets = _run.bind_tcp(listen.host, listen.port)
    except OSError as exc:
        log.error(
            "cannot listen on %s: %s; choose another local port with -l",
            listen,
            exc.strerror or exc,
        )
        raise SystemExit(1) from exc
    startup = ClientStartup(
        args=args,
        reread=functools.partial(read_settings, argv),
        config=config,
        listen=listen,
        auth=auth,
        forwards=forwards,
        sockets=sockets,
        workers=workers,
    )
    worker = _run.fork_workers(workers)
    if worker:  # the first process's lines stay as they are
        set_worker(worker)
    run(lambda stop: ClientProcess(startup, worker).run(stop))


if __name__ == "__main__":  # pragma: no cover
    main()
