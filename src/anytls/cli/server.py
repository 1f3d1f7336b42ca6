"""``anytls-server``: flags compatible with anytls-go's server, plus a few extras.

Settings come from flags and/or a TOML file (``-c server.toml``, see
:mod:`anytls.cli.config_file`); flags win. The running server reloads the file, its users and its
certificate on SIGHUP, and on SIGTERM stops accepting, lets open streams finish for
``--shutdown-grace`` seconds and exits.

This module holds the options and :func:`main`; the steps live beside it: the settings
(:mod:`._server_config`), the certificate (:mod:`._certificates`), links and ``--export``
(:mod:`._announce`), a managed node (:mod:`._node`), one process from start to stop
(:mod:`._server_process`) and SIGHUP (:mod:`._reload`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..aio.acme import LETS_ENCRYPT, AcmeManager
from ..aio.server import ServerConfig
from ..aio.tls import server_context
from ..core.address import Address
from ..errors import ConfigError
from ..log import set_worker, setup_logging
from . import _common, _node, _run
from ._announce import export
from ._certificates import acme_settings, certificate_files, http_port
from ._common import state_dir
from ._flags import Options
from ._run import fork_workers, run
from ._server_config import (
    GENERATED_PASSWORD_FILE,
    parse_users,
    server_config,
    stored_password,
    user_entries,
)
from ._server_process import ServerProcess, Startup, listen_error
from .config_file import Schema, schema_from_parser

__all__ = [
    "build_parser",
    "export",
    "load_args",
    "main",
    "parse_users",
    "schema",
    "server_config",
    "user_entries",
]

log = logging.getLogger("anytls.server")

_SHORT = ("l", "p", "h", "c")
PROG = "anytls-server"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="AnyTLS server. With no --cert it makes a self-signed certificate. "
        "Every option can also be set in a TOML file given with -c.",
        allow_abbrev=False,
    )
    # option(): the default (and type) of the ServerConfig field it sets, unless given;
    # "{default}" in its help shows the default.
    option = Options(parser, ServerConfig).add
    _common.add_config_arguments(parser)
    parser.add_argument(
        "--export",
        choices=("sing-box", "mihomo"),
        metavar="FORMAT",
        help="print a client config for this server (sing-box: a complete "
        "JSON config; mihomo: a YAML proxy entry) and exit",
    )
    parser.add_argument(
        "--export-user",
        metavar="NAME",
        help="user whose password goes into --export (default: the first)",
    )
    option(
        "-l",
        "--listen",
        dest="l",
        metavar="HOST:PORT",
        default="0.0.0.0:8443",
        help="listen address (default {default}, IPv4 only; [::]:PORT is IPv4 and IPv6)",
    )
    parser.add_argument(
        "-p",
        "--password",
        dest="p",
        metavar="PASSWORD",
        help="password of the user 'default' (without -p and users: a generated one)",
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="an extra user (repeatable)",
    )
    parser.add_argument(
        "--padding-scheme", metavar="FILE", help="padding scheme file pushed to clients"
    )
    parser.add_argument("--cert", metavar="PEM", help="certificate chain file")
    parser.add_argument("--key", metavar="PEM", help="private key file")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="directory for what survives a restart: the generated certificate, ACME "
        "files, unreported traffic (default ~/.local/state/anytls; /var/lib/anytls "
        "under systemd's StateDirectory=)",
    )
    parser.add_argument(
        "--acme",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="get and renew a certificate for DOMAIN from an ACME CA (Let's Encrypt); "
        "repeatable (one certificate names them all). The CA checks the domain by "
        "TLS-ALPN-01 on this server's port, which must be port 443 as seen from outside, "
        "or by HTTP-01 with --acme-http",
    )
    parser.add_argument(
        "--acme-email",
        metavar="EMAIL",
        help="contact address for the ACME account (optional)",
    )
    parser.add_argument(
        "--acme-directory",
        metavar="URL",
        default=LETS_ENCRYPT,
        help="ACME directory URL of the CA (default: Let's Encrypt production)",
    )
    parser.add_argument(
        "--acme-ca",
        metavar="PEM",
        help="verify the CA's HTTPS API with the roots in this file instead of the "
        "system's (a private or test CA)",
    )
    parser.add_argument(
        "--acme-http",
        metavar="[HOST:]PORT",
        help="answer HTTP-01 challenges on this port (the CA connects to port 80) "
        "instead of TLS-ALPN-01 on the server's port",
    )
    parser.add_argument(
        "--public-host",
        metavar="NAME",
        help="host name or IP clients use to reach this server, for the share "
        "links and --export (default: the listen address, else this "
        "machine's name)",
    )
    parser.add_argument(
        "--share-links",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log an anytls:// link per user at start (default on)",
    )
    parser.add_argument(
        "--qr", action="store_true", help="also print each link as a QR code on standard output"
    )
    option(
        "--connect-timeout",
        metavar="SECONDS",
        help="timeout for dialling destinations (default {default})",
    )
    option(
        "--idle-session-timeout",
        metavar="SECONDS",
        help="close sessions with no stream and no traffic after this (default {default}; "
        "0 = never)",
    )
    option(
        "--max-streams-per-session",
        metavar="N",
        help="refuse streams beyond N open in one session (default {default}; 0 = no limit)",
    )
    option(
        "--heartbeat-interval",
        metavar="SECONDS",
        help="probe v2 clients silent this long; close if they do not answer "
        "(default {default} = off)",
    )
    option(
        "--udp-idle-timeout",
        metavar="SECONDS",
        help="close a UDP-over-TCP stream after this long without a "
        "datagram either way (default {default})",
    )
    parser.add_argument(
        "--fallback",
        metavar="HOST:PORT",
        help="relay connections that fail authentication to this web server "
        "instead of closing them, so the port looks like that site",
    )
    option(
        "--allow-private",
        action="store_true",
        help="let users reach loopback, private (RFC 1918, ULA, CGNAT) and link-local "
        "destinations, i.e. this machine's own services and its networks (default: refused)",
    )
    option(
        "--deny-private",
        action="store_true",
        help="refuse private destinations (the default; kept for compatibility)",
    )
    option(
        "--max-connections",
        metavar="N",
        help="simultaneous TLS connections (default {default}; 0 = no limit)",
    )
    option(
        "--auth-fail-limit",
        metavar="N",
        help="failed authentications per minute from one source (IPv4 address, IPv6 /64) "
        "after which its attempts fail without a password check, answered as a wrong "
        "password (default {default}; 0 = no limit)",
    )
    option(
        "--heartbeat-timeout",
        metavar="SECONDS",
        help="close a session whose heartbeat is not answered in time (default {default})",
    )
    option(
        "--stream-buffer",
        metavar="BYTES",
        help="bytes buffered towards one destination before the session pauses (default {default})",
    )
    option(
        "--session-buffer",
        metavar="BYTES",
        help="bytes buffered towards one client before its sources pause (default {default})",
    )
    option(
        "--preface-timeout",
        metavar="SECONDS",
        help="time for a client to authenticate after TLS (default {default})",
    )
    option(
        "--tcp-fast-open",
        action="store_true",
        help="accept TCP Fast Open (clients' ClientHello in the SYN; needs "
        "sysctl net.ipv4.tcp_fastopen=3)",
    )
    option(
        "--accept-proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header from a load balancer "
        "(HAProxy send-proxy) before TLS",
    )
    option(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes sharing the listening socket (default {default} = one per CPU core, "
        "or 1 on machines with 2 cores or fewer)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics "
        "(e.g. 127.0.0.1:9090; default off)",
    )
    option(
        "--speed-limit",
        metavar="MBPS",
        help="speed limit of every user in Mbit/s, each direction, over all of the "
        "user's sessions (default {default} = none; a user's own speed_limit wins)",
    )
    parser.add_argument(
        "--api",
        metavar="[HOST:]PORT",
        help="traffic stats API (Hysteria 2's: GET /traffic, GET /online, POST /kick) "
        "at http://HOST:PORT (a port alone: on 127.0.0.1; default off)",
    )
    parser.add_argument(
        "--api-secret",
        metavar="SECRET",
        help="secret the stats API requires in the Authorization header "
        "(required unless --api is on a loopback address)",
    )
    parser.add_argument(
        "--panel",
        metavar="URL",
        help="run as a node of this Xboard panel (e.g. https://panel.example.com): "
        "port, padding scheme and users come from it, traffic goes back to it",
    )
    parser.add_argument(
        "--panel-token", metavar="TOKEN", help="the panel's server token (server_token)"
    )
    parser.add_argument(
        "--node-id", type=int, metavar="N", help="this node's id in the panel (an anytls node)"
    )
    option(
        "--stats-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="log a traffic summary line this often (default {default}; 0 = never)",
    )
    option(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, let open streams finish for this long before closing them "
        "(default {default})",
    )
    _common.add_logging_arguments(parser)
    return parser


# ---------------------------------------------------------------------- validation


_listen = _common.parse_listen


def _positive(value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{value:g} is not a positive number of seconds")


def _not_negative(value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{value:g} is negative")


def _host(value: str) -> None:
    if not value or any(c.isspace() or c in "/@[]" for c in value.strip("[]")):
        raise ConfigError(f"{value!r} is not a host name or IP address")


def _users(items: Sequence[str]) -> None:
    for item in items:
        name, sep, pw = item.partition(":")
        if not sep or not name or not pw:
            raise ConfigError(f"{item!r}: expected NAME:PASSWORD")


def _acme_domains(items: Sequence[str]) -> None:
    from ..aio.acme import check_domain

    for item in items:
        check_domain(item)


def _acme_directory(value: str) -> None:
    from ..aio.acme import check_directory

    check_directory(value)


VALIDATORS: dict[str, Callable[[Any], object]] = {
    "l": _listen,
    "fallback": Address.parse,
    "metrics": _listen,
    "api": _node.parse_api,
    "speed_limit": _not_negative,
    "user": _users,
    "connect_timeout": _positive,
    "preface_timeout": _positive,
    "udp_idle_timeout": _positive,
    "idle_session_timeout": _not_negative,
    "heartbeat_interval": _not_negative,
    "stats_interval": _not_negative,
    "shutdown_grace": _not_negative,
    "log_level": _common.check_log_level,
    "public_host": _host,
    "acme": _acme_domains,
    "acme_directory": _acme_directory,
    "acme_http": http_port,
}


def schema(parser: argparse.ArgumentParser | None = None) -> Schema:
    """The config-file keys of ``anytls-server``."""
    return schema_from_parser(
        parser or build_parser(),
        exclude=("config", "print_config", "export"),
        keys={"user": "users"},
        kinds={
            "user": "users",
            "padding_scheme": "padding",
            "cert": "path",
            "key": "path",
            "state_dir": "path",
            "acme_ca": "path",
        },
        secrets=("p", "user", "api_secret", "panel_token"),
        validators=VALIDATORS,
    )


def load_args(argv: Sequence[str]) -> argparse.Namespace:
    """Flags and config file → namespace (raises ConfigError for the file or a value)."""
    return _common.load_args(build_parser, schema, _SHORT, argv)


def fail(message: str) -> NoReturn:
    """Report a configuration problem in one line and exit with status 2."""
    _common.fail(PROG, message)


def print_config(args: argparse.Namespace) -> None:
    """``--print-config``: the effective settings as TOML."""
    render = {
        "state_dir": lambda _: str(_common.state_dir(args)),
        # the compatibility flag is shown only when given (allow_private decides)
        "deny_private": lambda v: v or None,
    }
    _common.print_config(PROG, args, schema(), render)


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``anytls-server``: settings, then the server in every worker process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = load_args(argv)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print_config(args)
        return
    try:
        startup = prepare(argv, args)
    except ConfigError as exc:
        fail(str(exc))
    if startup is None:  # --export printed a client config
        return
    if startup.acme is not None and startup.workers > 1:
        # A worker that gets the "new certificate" signal before its handler is set
        # must not die of it (SIGUSR1's default); it checks the state directory at start.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    worker = fork_workers(startup.workers)
    if worker:  # the first process's lines stay as they are
        set_worker(worker)
    run(lambda stop: ServerProcess(startup, worker).run(stop))


def prepare(argv: Sequence[str], args: argparse.Namespace) -> Startup | None:
    """Everything before the workers fork: the password, the settings, the panel's, the
    certificate and the bound port (None after ``--export``; raises ConfigError, or
    SystemExit when the port cannot be bound)."""
    generated = None
    generated_before = False
    if not args.p and not args.user and not getattr(args, "panel", None):
        # Before --export too: the exported config carries the password the server uses.
        generated_before = (state_dir(args) / GENERATED_PASSWORD_FILE).exists()
        args.p, kept_in = stored_password(state_dir(args))
        generated = kept_in or "memory only: the state directory is not writable"
    if args.export:
        export(args)
        return None
    listen = _listen(args.l)
    _node.check_args(args)
    config = server_config(args)
    acme = acme_settings(args, listen)
    entries = user_entries(args)
    setup_logging(args.log_level, args.log_format)
    prepared = _node.prepare(args, listen, config, entries)
    listen, config = prepared.listen, prepared.config
    manager = None
    cert: tuple[str, str | None] | None = None
    if acme is not None:
        manager = AcmeManager(acme)
        ctx = manager.initial_context()
    else:
        cert = certificate_files(args, listen)
        ctx = server_context(*cert)
    workers = _run.worker_count(args.workers, listen)
    _common.warn_fast_open(config.tcp_fast_open, server=True)
    try:
        # Bound once, here, and shared by the workers: a port someone holds fails now.
        sockets = _run.bind_tcp(listen.host, listen.port)
    except OSError as exc:
        log.error("%s", listen_error(listen, exc))
        raise SystemExit(1) from exc
    return Startup(
        args=args,
        reread=functools.partial(load_args, argv),
        listen=listen,
        config=config,
        prepared=prepared,
        ssl_context=ctx,
        cert=cert,
        acme=manager,
        sockets=sockets,
        workers=workers,
        generated=generated,
        generated_before=generated_before,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
