"""``anytls-client``: flags compatible with anytls-go's client, plus a few extras."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..core.address import Address
from ..errors import ConfigError
from ..log import setup_logging
from ..uri import parse_uri
from ._flags import long_options, normalise, parse_bool
from ._run import run

log = logging.getLogger("anytls.client")

_SHORT = ("l", "s", "p", "m", "h")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="anytls-client",
        description="AnyTLS client with a local SOCKS5 + HTTP proxy port.",
        allow_abbrev=False,
    )
    parser.add_argument("-l", metavar="HOST:PORT", default="127.0.0.1:1080",
                        help="local SOCKS5/HTTP listen address (default 127.0.0.1:1080)")
    parser.add_argument("-s", metavar="SERVER", required=True,
                        help="server host:port or an anytls:// URI")
    parser.add_argument("--sni", metavar="NAME", help="TLS server name (an IP sends no SNI)")
    parser.add_argument("-p", metavar="PASSWORD", help="password (unless in the URI)")
    parser.add_argument("--insecure", nargs="?", const="true", default=None, metavar="BOOL",
                        help="do not verify the server certificate")
    parser.add_argument("-m", "--min-idle-session", type=int, default=5, metavar="N",
                        help="idle sessions kept open (default 5)")
    parser.add_argument("--idle-session-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--idle-session-check-interval", type=float, default=30.0,
                        metavar="SECONDS")
    parser.add_argument("--dr", action="store_true", help="disable session reuse")
    parser.add_argument("--max-streams-per-session", type=int, default=1, metavar="N",
                        help="concurrent streams one session may carry (default 1, as the "
                        "Go clients; more means fewer TLS handshakes)")
    parser.add_argument("--synack-timeout", type=float, default=3.0, metavar="SECONDS",
                        help="close a reused v2 session whose new stream gets no SYNACK in "
                        "time, and retry the stream on a fresh one (default 3; 0 = off)")
    parser.add_argument("--heartbeat-interval", type=float, default=0.0, metavar="SECONDS",
                        help="send a heartbeat to a v2 server after this much silence "
                        "(default 0 = off)")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a session whose heartbeat is not answered in time "
                        "(default 10)")
    parser.add_argument("--auth", metavar="USER:PASS",
                        help="require this username/password from local clients")
    parser.add_argument("--udp-forward", action="append", default=[], metavar="LOCAL=TARGET",
                        help="forward UDP arriving on LOCAL to TARGET through the server, "
                        "e.g. 127.0.0.1:5353=8.8.8.8:53 (repeatable)")
    parser.add_argument("--log-level", metavar="LEVEL",
                        help="debug, info, warning, error (default: LOG_LEVEL env or info)")
    parser.add_argument("--version", action="version", version=f"anytls {__version__}")
    return parser


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build a :class:`~anytls.aio.client.ClientConfig` from parsed flags."""
    from ..aio.client import ClientConfig

    server = args.s
    sni = args.sni
    insecure = False
    password = args.p
    if server.startswith("anytls://"):
        uri = parse_uri(server)
        host, port = uri.host, uri.port
        password = uri.password or password
        if uri.sni is not None:
            sni = uri.sni
        insecure = uri.insecure
    else:
        address = Address.parse(server)
        host, port = address.host, address.port
    if args.insecure is not None:
        try:
            insecure = parse_bool(args.insecure)
        except ValueError as exc:
            raise ConfigError(f"--insecure: {exc}") from exc
    if not password:
        raise ConfigError("no password: give -p PASSWORD or put it in the anytls:// URI")
    return ClientConfig(
        server_host=host,
        server_port=port,
        password=password,
        sni=sni,
        insecure=insecure,
        idle_session_timeout=args.idle_session_timeout,
        idle_session_check_interval=args.idle_session_check_interval,
        min_idle_session=max(0, args.min_idle_session),
        reuse_sessions=not args.dr,
        max_streams_per_session=max(1, args.max_streams_per_session),
        synack_timeout=max(0.0, args.synack_timeout),
        heartbeat_interval=max(0.0, args.heartbeat_interval),
        heartbeat_timeout=args.heartbeat_timeout,
    )


def _listen_text(text: str) -> str:
    # Go accepts ":PORT" for all interfaces.
    return "0.0.0.0" + text if text.startswith(":") else text


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``anytls-client``."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(normalise(argv, _SHORT, long_options(parser)))
    setup_logging(args.log_level)
    from ..aio.client import Client
    from ..inbound.mixed import MixedInbound
    from ..inbound.socks5_udp import udp_handler
    from ..inbound.udp_forward import parse_forward, start_forwarders

    try:
        config = config_from_args(args)
        listen = Address.parse(_listen_text(args.l))
        auth = None
        if args.auth:
            user, sep, pw = args.auth.partition(":")
            if not sep:
                raise ConfigError("--auth: expected USER:PASS")
            auth = (user, pw)
        forwards = [parse_forward(text) for text in args.udp_forward]
    except ConfigError as exc:
        parser.error(str(exc))

    async def amain(stop: asyncio.Event) -> None:
        client = Client(config)
        inbound = MixedInbound(client, auth=auth, udp_handler=udp_handler(client))
        try:
            await inbound.start(listen.host, listen.port)
        except OSError as exc:
            log.error("cannot listen on %s: %s", listen, exc.strerror or exc)
            raise SystemExit(1) from exc
        try:
            forwarders = await start_forwarders(client, forwards)
        except OSError as exc:
            log.error("--udp-forward: cannot bind: %s", exc.strerror or exc)
            raise SystemExit(1) from exc
        log.info("anytls-client %s: SOCKS5/HTTP proxy on %s, server %s:%d%s", __version__,
                 listen, config.server_host, config.server_port,
                 " (certificate not verified)" if config.insecure else "")
        await stop.wait()
        log.info("shutting down")
        for forwarder in forwarders:
            await forwarder.close()
        await inbound.close()
        await client.close()

    run(amain)


if __name__ == "__main__":  # pragma: no cover
    main()
