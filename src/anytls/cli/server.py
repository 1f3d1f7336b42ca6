"""``anytls-server``: flags compatible with anytls-go's server, plus a few extras.

Settings come from flags and/or a TOML file (``-c server.toml``, see
:mod:`anytls.cli.config_file`); flags win. The running server reloads the file, its users and its
certificate on SIGHUP, and on SIGTERM stops accepting, lets open streams finish for
``--shutdown-grace`` seconds and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from .. import __version__
from ..aio.acme import LETS_ENCRYPT
from ..core.address import Address
from ..core.padding import PaddingScheme
from ..errors import ConfigError, PaddingSchemeError
from ..log import level_number, set_worker, setup_logging
from . import _common, _node, _run
from ._flags import Options
from ._run import fork_workers, run
from .config_file import Schema, schema_from_parser

log = logging.getLogger("anytls.server")

_SHORT = ("l", "p", "h", "c")
PROG = "anytls-server"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from ..aio.server import ServerConfig

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
        help="refuse streams beyond N open in one session (default {default} = no limit)",
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


def _http_port(value: str) -> Address:
    """``PORT`` (host empty: the -l host) or ``HOST:PORT``; ConfigError otherwise."""
    text = value.strip()
    if not text.isdigit():
        return _common.parse_listen(text)
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"{value!r}: the port must be 1-65535")
    return Address("", port)


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
    "acme_http": _http_port,
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


# ---------------------------------------------------------------------- settings


def parse_users(password: str | None, extra: Sequence[str]) -> dict[str, str]:
    """Users from ``-p`` and ``--user NAME:PASSWORD`` flags (later ones win)."""
    users: dict[str, str] = {}
    if password:
        users["default"] = password
    for item in extra:
        name, sep, pw = item.partition(":")
        if not sep or not name or not pw:
            raise ConfigError(f"--user {item!r}: expected NAME:PASSWORD")
        users[name] = pw
    if not users:
        raise ConfigError(
            "no password: give -p PASSWORD or --user NAME:PASSWORD (or users in the config file)"
        )
    return users


#: Passwords shorter than this get a warning at start.
MIN_PASSWORD_LENGTH = 12


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits) for a server started without one."""
    import secrets

    return secrets.token_urlsafe(18)


#: File in the state directory holding the password generated for a server without one.
GENERATED_PASSWORD_FILE = "generated-password"


def stored_password(directory: Path) -> tuple[str, str | None]:
    """The generated password kept in ``directory`` (made and saved, mode 0600, if none).

    Returns ``(password, where)``: ``where`` is the file, or None when it could not be
    written (the password then lasts until the server stops).
    """
    from ..state import ensure_state_dir

    path = directory / GENERATED_PASSWORD_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the generated password in {str(path)!r}: {exc}") from exc
    if kept:
        return kept, str(path)
    password = generate_password()
    try:
        ensure_state_dir(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
    except OSError:
        return password, None
    return password, str(path)


def warn_weak_passwords(users: dict[str, str]) -> None:
    """Log a warning for each password shorter than :data:`MIN_PASSWORD_LENGTH`."""
    for name, password in users.items():
        if len(password) < MIN_PASSWORD_LENGTH:
            log.warning(
                "user %s: the password has only %d characters and can be guessed; use %d "
                "or more random ones (e.g. `openssl rand -base64 18`), or start without -p "
                "to get a generated one",
                name,
                len(password),
                MIN_PASSWORD_LENGTH,
            )


def load_padding(source: str | Sequence[str] | None) -> PaddingScheme:
    """The scheme in the file ``source`` (bytes as they are), inline lines, or the default."""
    if not source:
        return PaddingScheme.default()
    if not isinstance(source, str):
        try:
            return PaddingScheme.parse("\n".join(source).encode())
        except PaddingSchemeError as exc:
            raise ConfigError(f"padding_scheme: {exc}") from exc
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read padding scheme {source!r}: {exc.strerror}") from exc
    try:
        return PaddingScheme.parse(raw)
    except PaddingSchemeError as exc:
        raise ConfigError(f"padding scheme {source!r}: {exc}") from exc


def user_entries(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's per-user tables (limits, quota, expiry): name → UserEntry."""
    from ..users import entries_from_toml
    from .config_file import normalise_key, read_toml

    if not args.config:
        return {}
    data = read_toml(args.config)
    for key, value in data.items():
        if normalise_key(key) == "users":
            try:
                return entries_from_toml(value)
            except ValueError as exc:
                raise ConfigError(f"{args.config}: users: {exc}") from exc
    return {}


def server_config(args: argparse.Namespace) -> Any:
    """The :class:`~anytls.aio.server.ServerConfig` the flags describe."""
    from ..aio.limits import UserPolicy
    from ..aio.server import ServerConfig

    if args.allow_private and args.deny_private:
        raise ConfigError("--allow-private and --deny-private contradict each other; drop one")
    panel = bool(getattr(args, "panel", None))
    entries = user_entries(args)
    return ServerConfig(
        users={} if panel else parse_users(args.p, args.user),
        speed_limit=args.speed_limit,
        limits={
            name: UserPolicy(entry.speed_limit, entry.device_limit)
            for name, entry in entries.items()
            if entry.speed_limit or entry.device_limit
        },
        padding=load_padding(args.padding_scheme),
        connect_timeout=args.connect_timeout,
        idle_session_timeout=args.idle_session_timeout,
        max_streams_per_session=args.max_streams_per_session,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        allow_private=args.allow_private,
        deny_private=args.deny_private,
        fallback=Address.parse(args.fallback) if args.fallback else None,
        max_connections=max(0, args.max_connections),
        auth_fail_limit=max(0, args.auth_fail_limit),
        stream_buffer=max(16 * 1024, args.stream_buffer),
        session_buffer=max(16 * 1024, args.session_buffer),
        preface_timeout=args.preface_timeout,
        accept_proxy_protocol=args.accept_proxy_protocol,
        tcp_fast_open=args.tcp_fast_open,
    )


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the default (see :mod:`anytls.state`)."""
    from ..state import default_state_dir

    return Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()


def certificate_hosts(args: argparse.Namespace, listen: Address) -> list[str]:
    """The names a generated certificate carries: the link's host, the listen address
    (unless a wildcard) and localhost."""
    from ._share import link_host

    hosts = [link_host(listen, args.public_host)[0]]
    if listen.host not in ("", "0.0.0.0", "::"):
        hosts.append(listen.host)
    return list(dict.fromkeys([*hosts, "localhost"]))


def certificate_files(args: argparse.Namespace, listen: Address) -> tuple[str, str | None]:
    """``(cert, key)``: ``--cert``/``--key``, else the self-signed pair kept in the state
    directory (made, or remade when it does not fit, and logged)."""
    from ..certs import stored_certificate

    if args.cert:
        return args.cert, args.key
    if args.key:
        raise ConfigError("--key was given without --cert")
    directory = state_dir(args)
    stored = stored_certificate(directory, certificate_hosts(args, listen))
    where = stored.cert_path
    if not stored.made:
        log.debug("self-signed certificate %s (pinSHA256 %s)", where, stored.sha256)
    elif stored.made == "none was stored yet":
        log.info(
            "made a self-signed certificate for %s, kept in %s (pinSHA256 %s)",
            ", ".join(certificate_hosts(args, listen)),
            directory,
            stored.sha256,
        )
    else:
        log.warning(
            "made a new self-signed certificate (%s): clients need the new share link or "
            "exported config (pinSHA256 %s)",
            stored.made,
            stored.sha256,
            extra={"event": "certificate_renewed", "pin_sha256": stored.sha256},
        )
    return str(where), str(stored.key_path)


def acme_settings(args: argparse.Namespace, listen: Address) -> Any:
    """The :class:`~anytls.aio.acme.AcmeSettings` of ``--acme`` (None without it)."""
    if not args.acme:
        for dest, flag in (("acme_email", "--acme-email"), ("acme_http", "--acme-http")):
            if getattr(args, dest):
                raise ConfigError(f"{flag} needs --acme DOMAIN")
        return None
    if args.cert or args.key:
        raise ConfigError(
            "--acme gets the certificate from the CA: leave out --cert/--key (or --acme)"
        )
    from ..aio.acme import AcmeSettings, check_acme_installed, check_directory, check_domain

    check_acme_installed()
    http = None
    if args.acme_http:
        http = _http_port(args.acme_http)
        if not http.host:
            http = Address(listen.host, http.port)
    if args.acme_ca and not os.path.isfile(args.acme_ca):
        raise ConfigError(f"--acme-ca {args.acme_ca!r}: no such file")
    return AcmeSettings(
        domains=tuple(dict.fromkeys(check_domain(d) for d in args.acme)),
        state_dir=state_dir(args),
        email=args.acme_email or None,
        directory=check_directory(args.acme_directory),
        ca_file=args.acme_ca or None,
        http=http,
    )


def tls_context(args: argparse.Namespace, listen: Address) -> ssl.SSLContext:
    """The server's TLS context (``--cert``, else the stored self-signed certificate)."""
    from ..aio.tls import server_context

    return server_context(*certificate_files(args, listen))


def _listen_error(listen: Address, exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        hint = (
            "another program (or another anytls-server) already listens there; stop it "
            "or choose another port with -l"
        )
    elif exc.errno == errno.EACCES:
        hint = (
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (see "
            "examples/anytls-server.service), or choose a port above 1024 with -l"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = "this machine has no such address; listen on 0.0.0.0 or one of its own addresses"
    else:
        hint = "check the -l address"
    return f"cannot listen on {listen}: {text}; {hint}"


# ---------------------------------------------------------------------- commands


def _acme_names(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(dict.fromkeys(d.strip().lower().rstrip(".") for d in args.acme))


def print_config(args: argparse.Namespace) -> None:
    """``--print-config``: the effective settings as TOML."""
    _common.print_config(PROG, args, schema())


def export(args: argparse.Namespace) -> None:
    """``--export sing-box|mihomo``: a client config for this server."""
    from ._share import acme_endpoint, mihomo_yaml, public_endpoint, singbox_json

    users = parse_users(args.p, args.user)
    name = args.export_user or next(iter(users))
    if name not in users:
        raise ConfigError(
            f"--export-user {name!r}: no such user (users: {', '.join(sorted(users))})"
        )
    listen = _listen(args.l)
    if args.acme:
        endpoint = acme_endpoint(listen, args.public_host, _acme_names(args))
    else:
        endpoint = public_endpoint(listen, args.public_host, *certificate_files(args, listen))
    if endpoint.guessed:
        print(
            f"{PROG}: note: the server address {endpoint.host!r} is this machine's name; "
            "give --public-host with the name or IP clients reach it at",
            file=sys.stderr,
        )
    if args.export == "sing-box":
        sys.stdout.write(singbox_json(endpoint, users[name]))
    else:
        sys.stdout.write(mihomo_yaml(endpoint, users[name], f"anytls-{endpoint.host}-{name}"))


def announce_links(
    args: argparse.Namespace,
    listen: Address,
    users: dict[str, str],
    cert: tuple[str, str | None] | None,
) -> None:
    """Log each user's share link (and print QR codes with --qr); ``cert`` is the
    ``(cert, key)`` files the server uses (None: the certificate comes from ACME)."""
    from ._share import acme_endpoint, public_endpoint, qr_code, share_link

    if not args.share_links and not args.qr:
        return
    try:
        if cert is None:
            endpoint = acme_endpoint(listen, args.public_host, _acme_names(args))
        else:
            endpoint = public_endpoint(listen, args.public_host, *cert)
    except ConfigError as exc:
        log.warning("no share links: %s", exc)
        return
    if endpoint.guessed:
        log.info(
            "share links use this machine's name %r; set --public-host to the name or IP "
            "clients reach this server at",
            endpoint.host,
        )
    for name, password in users.items():
        link = share_link(endpoint, name, password)
        if args.share_links:
            log.info(
                "share link for user %s: %s",
                name,
                link,
                extra={"event": "share_link", "user": name, "link": link},
            )
        if args.qr:
            sys.stdout.write(f"user {name}: {link}\n{qr_code(link)}\n")
            sys.stdout.flush()


# ---------------------------------------------------------------------- running


class Reloader:
    """SIGHUP: re-read the config file, users and certificate; apply to new sessions."""

    #: Settings that need a restart; a reload keeps the running value.
    RESTART: ClassVar[dict[str, str]] = {
        "l": "listen",
        "workers": "workers",
        "metrics": "metrics",
        "accept_proxy_protocol": "accept_proxy_protocol",
        "log_format": "log_format",
        "acme": "acme",
        "acme_email": "acme_email",
        "acme_directory": "acme_directory",
        "acme_ca": "acme_ca",
        "acme_http": "acme_http",
        "state_dir": "state_dir",
    }

    def __init__(
        self,
        argv: Sequence[str],
        args: argparse.Namespace,
        server: Any,
        listen: Address,
        level: int = logging.INFO,
    ) -> None:
        self.argv = argv
        self.args = args
        self.server = server
        self.listen = listen
        #: Level of the "reloaded" line (workers other than the first log at DEBUG).
        self.level = level
        #: The password generated at start (kept while the config names no user).
        self.generated: str | None = None
        #: Filters the file's users on reload (quotas, expiry); None = serve them all.
        self.keep_users: Callable[[Any], dict[str, str]] | None = None
        #: Called with the new settings before they are applied (may raise ConfigError).
        self.on_reload: Callable[[argparse.Namespace], None] | None = None

    def reload(self) -> None:
        try:
            new = load_args(self.argv)
            if self.generated and not new.p and not new.user:
                new.p = self.generated
            for dest, key in self.RESTART.items():
                if getattr(new, dest) != getattr(self.args, dest):
                    log.log(
                        logging.WARNING if self.level >= logging.INFO else logging.DEBUG,
                        "reload: %s changed; restart the server to apply it",
                        key,
                    )
                    setattr(new, dest, getattr(self.args, dest))
            config = server_config(new)
            if self.on_reload is not None:
                self.on_reload(new)
            if self.args.panel or self.keep_users is not None:
                # Users come from the panel (or the quota keeper): keep the running ones.
                running = self.server.config
                keep = self.keep_users(config.users) if self.keep_users else running.users
                config = dataclasses.replace(
                    config,
                    users=keep,
                    limits=config.limits if not self.args.panel else running.limits,
                    padding=config.padding if not self.args.panel else running.padding,
                )
            ctx = tls_context(new, self.listen) if (new.cert or self.args.cert) else None
        except (ConfigError, SystemExit) as exc:
            # Every worker reloads; the first one says it at ERROR, the others at DEBUG.
            log.log(
                logging.ERROR if self.level >= logging.INFO else logging.DEBUG,
                "reload failed, keeping the running settings: %s",
                exc,
            )
            return
        old_users = self.server.config.users
        added = sorted(set(config.users) - set(old_users))
        removed = sorted(set(old_users) - set(config.users))
        changed = sorted(
            n for n in config.users if n in old_users and old_users[n] != config.users[n]
        )
        self.server.update(config, ctx)
        logging.getLogger().setLevel(level_number(new.log_level))
        self.args = new
        parts = [f"{len(config.users)} user{'s' * (len(config.users) != 1)}"]
        for label, names in (("added", added), ("removed", removed), ("new password", changed)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if ctx is not None:
            parts.append(f"certificate reloaded from {new.cert or 'a new self-signed one'}")
        log.log(
            self.level,
            "reloaded (%s); open sessions keep going",
            "; ".join(parts),
            extra={"event": "reload", "users": len(config.users)},
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``anytls-server``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = load_args(argv)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print_config(args)
        return
    generated = None
    try:
        if not args.p and not args.user and not getattr(args, "panel", None):
            # Before --export too: the exported config carries the password the server uses.
            args.p, kept_in = stored_password(state_dir(args))
            generated = kept_in or "memory only: the state directory is not writable"
        if args.export:
            export(args)
            return
        listen = _listen(args.l)
        _node.check_args(args)
        config = server_config(args)
        acme = acme_settings(args, listen)
        entries = user_entries(args)
    except ConfigError as exc:
        fail(str(exc))
    setup_logging(args.log_level, args.log_format)
    from ..aio.tls import server_context

    manager = None
    cert: tuple[str, str | None] | None = None
    try:
        prepared = _node.prepare(args, listen, config, entries)
        listen, config = prepared.listen, prepared.config
        if acme is not None:
            from ..aio.acme import AcmeManager

            manager = AcmeManager(acme)
            ctx = manager.initial_context()
        else:
            cert = certificate_files(args, listen)
            ctx = server_context(*cert)
    except ConfigError as exc:
        fail(str(exc))
    workers = _run.worker_count(args.workers, listen)
    _common.warn_fast_open(config.tcp_fast_open, server=True)
    try:
        # Bound once, here, and shared by the workers: a port someone holds fails now.
        sockets = _run.bind_tcp(listen.host, listen.port)
    except OSError as exc:
        log.error("%s", _listen_error(listen, exc))
        raise SystemExit(1) from exc

    async def amain(stop: asyncio.Event) -> None:
        from ..aio.control import handle_command, without_blocked
        from ..aio.server import AnyTLSServer
        from ..aio.stats import (
            MetricsServer,
            SnapshotChannel,
            gather_snapshots,
            log_summaries,
            serve_snapshot_requests,
        )

        loop = asyncio.get_running_loop()
        server = AnyTLSServer(config, ctx)
        await server.start(None, listen.port, sockets=sockets)
        background: list[asyncio.Task[None]] = []
        if manager is not None:
            manager.attach(server)
        if _run.PARENT_CHANNEL is not None:
            background.append(
                loop.create_task(
                    serve_snapshot_requests(
                        _run.PARENT_CHANNEL,
                        server.stats.snapshot,
                        functools.partial(handle_command, server),
                    )
                )
            )
        channels = [SnapshotChannel(sock) for sock in _run.WORKER_CHANNELS]

        async def snapshot() -> dict[str, Any]:
            return await gather_snapshots(server.stats.snapshot, channels)

        metrics = None
        if worker_index == 0 and manager is not None:
            acme_manager = manager

            def install(new_ctx: ssl.SSLContext) -> None:
                server.update(ssl_context=new_ctx)
                _run.signal_workers(signal.SIGUSR1)  # they load it from the state directory

            try:
                acme_manager.port_hint(listen.port)
                await acme_manager.start_http()
            except OSError as exc:
                where = acme_manager.settings.http
                log.error("--acme-http: %s", _listen_error(where, exc) if where else exc)
                raise SystemExit(1) from exc
            background.append(loop.create_task(acme_manager.run(install)))
        elif manager is not None:
            worker_manager = manager

            def on_usr1() -> None:
                new_ctx = worker_manager.reload()
                if new_ctx is not None:
                    server.update(ssl_context=new_ctx)
                    log.debug("ACME: loaded the new certificate from the state directory")

            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, on_usr1)
            on_usr1()  # one issued before this handler existed
        runtime = _node.NodeRuntime(args, prepared)
        if worker_index == 0:
            await runtime.start(server, channels)
            if args.metrics:
                where = _listen(args.metrics)
                metrics = MetricsServer(snapshot)
                try:
                    await metrics.start(where.host, where.port)
                except OSError as exc:
                    log.error("--metrics: %s", _listen_error(where, exc))
                    raise SystemExit(1) from exc
                log.info("Prometheus metrics at http://%s/metrics", where)
            if generated is not None:
                log.warning(
                    "no password given: user 'default' has a generated one%s, kept in %s; "
                    "set -p or users in the config file to choose your own",
                    " (in the share link below)" if args.share_links else f" ({args.p})",
                    generated,
                )
            warn_weak_passwords(dict(config.users))
            announce_links(args, listen, dict(config.users), cert)
            if args.stats_interval > 0:
                background.append(loop.create_task(log_summaries(snapshot, args.stats_interval)))
            log.info(
                "anytls-server %s listening on %s (%d user%s, %d worker%s, padding md5 %s)",
                __version__,
                _run.describe_listen(sockets),
                len(config.users),
                "" if len(config.users) == 1 else "s",
                workers,
                "" if workers == 1 else "s",
                config.padding.md5,
            )
        if worker_index:
            log.debug("worker %d accepting connections", worker_index)
        # Worker processes other than the first say the same things at DEBUG.
        level = logging.INFO if worker_index == 0 else logging.DEBUG
        reloader = Reloader(argv, args, server, listen, level)
        reloader.generated = args.p if generated is not None else None
        if runtime.keeper is not None:  # the parent decides who is over quota
            reloader.keep_users = runtime.keeper.allowed
            reloader.on_reload = lambda new: runtime.reloaded(user_entries(new))
        elif runtime.quotas:  # a worker leaves out whom the parent said
            reloader.keep_users = without_blocked

        def on_hup() -> None:
            _run.signal_workers(signal.SIGHUP)
            reloader.reload()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()

        # Graceful stop: no new connections; open streams get the grace period.
        _run.signal_workers(signal.SIGTERM)
        grace = reloader.args.shutdown_grace
        streams = server.open_streams
        log.log(
            logging.INFO if streams else level,
            "shutting down: no new connections; %s",
            f"waiting up to {grace:g} s for {streams} open stream{'s' * (streams != 1)}"
            if streams
            else "no open streams",
        )
        force = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, force.set)  # a second Ctrl-C: now
        drain = loop.create_task(server.shutdown(grace))
        forced = loop.create_task(force.wait())
        await asyncio.wait([drain, forced], return_when=asyncio.FIRST_COMPLETED)
        if drain.done():
            cut = drain.result()
        else:
            cut = server.open_streams
            drain.cancel()
            await server.close()
        forced.cancel()
        for task in background:
            task.cancel()
        await runtime.stop()
        if metrics is not None:
            await metrics.close()
        if manager is not None:
            await manager.close()
        await _run.wait_for_workers(grace + 5)
        plural = "s" * (cut != 1)
        note = f" ({cut} stream{plural} cut off after the grace period)" if cut else ""
        log.log(logging.INFO if cut else level, "stopped%s", note)

    if manager is not None and workers > 1:
        # A worker that gets the "new certificate" signal before its handler is set
        # must not die of it (SIGUSR1's default); it checks the state directory at start.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    worker_index = fork_workers(workers)
    if worker_index:  # the first process's lines stay as they are
        set_worker(worker_index)
    run(amain)


if __name__ == "__main__":  # pragma: no cover
    main()
