"""What ``anytls-server`` tells people about connecting to it: a share link (and QR code)
per user at start, warnings about passwords, and ``--export``'s client config."""

from __future__ import annotations

import argparse
import logging
import sys

from ..core.address import Address
from ..errors import ConfigError
from ._certificates import acme_names, certificate_files
from ._common import parse_listen
from ._server_config import parse_users

log = logging.getLogger("anytls.server")

#: Passwords shorter than this get a warning at start.
MIN_PASSWORD_LENGTH = 12


def warn_weak_passwords(users: dict[str, str]) -> None:
    """Log a warning for each password shorter than :data:`MIN_PASSWORD_LENGTH`."""
    for name, password in users.items():
        if len(password) < MIN_PASSWORD_LENGTH:
            # -p names the user "default"; other users come from --user or the file
            hint = ", or start without -p to get a generated one" if name == "default" else ""
            log.warning(
                "user %s: the password has only %d characters and can be guessed; use %d "
                "or more random ones (e.g. `openssl rand -base64 18`)%s",
                name,
                len(password),
                MIN_PASSWORD_LENGTH,
                hint,
            )


def export(args: argparse.Namespace) -> None:
    """``--export sing-box|mihomo``: a client config for this server."""
    from ._share import acme_endpoint, mihomo_yaml, public_endpoint, singbox_json

    users = parse_users(args.p, args.user)
    name = args.export_user or next(iter(users))
    if name not in users:
        raise ConfigError(
            f"--export-user {name!r}: no such user (users: {', '.join(sorted(users))})"
        )
    listen = parse_listen(args.l)
    if args.acme:
        endpoint = acme_endpoint(listen, args.public_host, acme_names(args))
    else:
        endpoint = public_endpoint(listen, args.public_host, *certificate_files(args, listen))
    if endpoint.guessed:
        print(
            f"anytls-server: note: the server address {endpoint.host!r} is this machine's name; "
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
            endpoint = acme_endpoint(listen, args.public_host, acme_names(args))
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
