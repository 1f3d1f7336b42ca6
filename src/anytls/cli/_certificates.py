"""Where ``anytls-server``'s certificate comes from: ``--cert``/``--key``, the self-signed
one kept in the state directory, or an ACME CA (``--acme``)."""

from __future__ import annotations

import argparse
import logging
import os
import ssl

from ..aio.acme import AcmeSettings
from ..core.address import Address
from ..errors import ConfigError
from ._common import parse_listen, state_dir

log = logging.getLogger("anytls.server")


def http_port(value: str) -> Address:
    """``PORT`` (host empty: the -l host) or ``HOST:PORT``; ConfigError otherwise."""
    text = value.strip()
    if not text.isdigit():
        return parse_listen(text)
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"{value!r}: the port must be 1-65535")
    return Address("", port)


def acme_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--acme`` domains as a certificate names them (lower case, no final dot)."""
    return tuple(dict.fromkeys(d.strip().lower().rstrip(".") for d in args.acme))


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


def acme_settings(args: argparse.Namespace, listen: Address) -> AcmeSettings | None:
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
    from ..aio.acme import check_acme_installed, check_directory, check_domain

    check_acme_installed()
    http = None
    if args.acme_http:
        http = http_port(args.acme_http)
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
