"""``anytls-server``: flags compatible with anytls-go's server, plus a few extras."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..core.address import Address
from ..core.padding import PaddingScheme
from ..errors import ConfigError
from ..log import setup_logging
from ._flags import long_options, normalise
from ._run import fork_workers, run

log = logging.getLogger("anytls.server")

_SHORT = ("l", "p", "h")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="anytls-server",
        description="AnyTLS server. With no --cert it makes a self-signed certificate.",
        allow_abbrev=False,
    )
    parser.add_argument("-l", metavar="HOST:PORT", default="0.0.0.0:8443",
                        help="listen address (default 0.0.0.0:8443)")
    parser.add_argument("-p", metavar="PASSWORD", help="password of the default user")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                        help="an extra user (repeatable)")
    parser.add_argument("--padding-scheme", metavar="FILE",
                        help="padding scheme file pushed to clients")
    parser.add_argument("--cert", metavar="PEM", help="certificate chain file")
    parser.add_argument("--key", metavar="PEM", help="private key file")
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="timeout for dialling destinations (default 5)")
    parser.add_argument("--idle-session-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="close sessions with no stream and no traffic after this "
                        "(default 600; 0 = never)")
    parser.add_argument("--max-streams-per-session", type=int, default=0, metavar="N",
                        help="refuse streams beyond N open in one session (default 0 = no limit)")
    parser.add_argument("--heartbeat-interval", type=float, default=0.0, metavar="SECONDS",
                        help="probe v2 clients silent this long; close if they do not answer "
                        "(default 0 = off)")
    parser.add_argument("--udp-idle-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="close a UDP-over-TCP stream after this long without a "
                        "datagram either way (default 60)")
    parser.add_argument("--fallback", metavar="HOST:PORT",
                        help="relay connections that fail authentication to this web server "
                        "instead of closing them, so the port looks like that site")
    parser.add_argument("--deny-private", action="store_true",
                        help="refuse loopback, private and link-local destinations")
    parser.add_argument("--max-connections", type=int, default=4096, metavar="N",
                        help="simultaneous TLS connections (default 4096; 0 = no limit)")
    parser.add_argument("--preface-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="time for a client to authenticate after TLS (default 10)")
    parser.add_argument("--accept-proxy-protocol", action="store_true",
                        help="expect a PROXY protocol v1/v2 header from a load balancer "
                        "(HAProxy send-proxy) before TLS")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes sharing the port with SO_REUSEPORT "
                        "(default 0 = one per CPU core)")
    parser.add_argument("--log-level", metavar="LEVEL",
                        help="debug, info, warning, error (default: LOG_LEVEL env or info)")
    parser.add_argument("--version", action="version", version=f"anytls {__version__}")
    return parser


def parse_users(password: str | None, extra: Sequence[str]) -> dict[str, str]:
    """Users from ``-p`` and ``--user NAME:PASSWORD`` flags."""
    users: dict[str, str] = {}
    if password:
        users["default"] = password
    for item in extra:
        name, sep, pw = item.partition(":")
        if not sep or not name or not pw:
            raise ConfigError(f"--user {item!r}: expected NAME:PASSWORD")
        users[name] = pw
    if not users:
        raise ConfigError("no password: give -p PASSWORD or --user NAME:PASSWORD")
    return users


def load_padding(path: str | None) -> PaddingScheme:
    """The scheme in ``path`` (bytes as they are), or the default."""
    if not path:
        return PaddingScheme.default()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read padding scheme {path!r}: {exc.strerror}") from exc
    try:
        return PaddingScheme.parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"padding scheme {path!r}: {exc}") from exc


def _listen_text(text: str) -> str:
    # Go accepts ":PORT" for all interfaces.
    return "0.0.0.0" + text if text.startswith(":") else text


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``anytls-server``."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(normalise(argv, _SHORT, long_options(parser)))
    setup_logging(args.log_level)
    from ..aio.server import AnyTLSServer, ServerConfig
    from ..aio.tls import server_context

    try:
        listen = Address.parse(_listen_text(args.l))
        users = parse_users(args.p, args.user)
        padding = load_padding(args.padding_scheme)
        fallback = Address.parse(args.fallback) if args.fallback else None
        hosts = ["localhost"] + ([listen.host] if listen.host not in ("0.0.0.0", "::") else [])
        ctx = server_context(args.cert, args.key, hosts=hosts)
        if not args.udp_idle_timeout > 0:
            raise ConfigError("--udp-idle-timeout must be a positive number of seconds")
    except ConfigError as exc:
        parser.error(str(exc))
    config = ServerConfig(
        users=users,
        padding=padding,
        connect_timeout=args.connect_timeout,
        idle_session_timeout=args.idle_session_timeout,
        max_streams_per_session=args.max_streams_per_session,
        heartbeat_interval=args.heartbeat_interval,
        udp_idle_timeout=args.udp_idle_timeout,
        deny_private=args.deny_private,
        fallback=fallback,
        max_connections=max(0, args.max_connections),
        preface_timeout=args.preface_timeout,
        accept_proxy_protocol=args.accept_proxy_protocol,
    )
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)

    async def amain(stop: asyncio.Event) -> None:
        host = None if listen.host in ("", "0.0.0.0", "::") else listen.host
        try:
            server = AnyTLSServer(config, ctx)
            await server.start(host, listen.port, reuse_port=workers > 1)
        except OSError as exc:
            log.error("cannot listen on %s: %s", listen, exc.strerror or exc)
            raise SystemExit(1) from exc
        if worker_index == 0:
            log.info("anytls-server %s listening on %s (%d user%s, %d worker%s, padding md5 %s)",
                     __version__, listen, len(users), "" if len(users) == 1 else "s",
                     workers, "" if workers == 1 else "s", padding.md5)
        await stop.wait()
        log.info("shutting down")
        await server.close()

    worker_index = fork_workers(workers)
    run(amain)


if __name__ == "__main__":  # pragma: no cover
    main()
