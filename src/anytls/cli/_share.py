"""What a server tells its users: ``anytls://`` links, QR codes and client configs.

:func:`public_endpoint` works out how clients should reach the server — the host
(``--public-host``, else the listen address, else this machine's name), the TLS server
name when the certificate does not cover that host, and whether clients must pin the
certificate. The link and the exported sing-box / mihomo configs are built from it.

Pinning rule: a certificate that a client verifying with the system's CA store accepts
for the link's server name (e.g. from Let's Encrypt) gets no pin, so renewals do not
break links; any other (generated, self-signed, from a private CA) is pinned:
``pinSHA256`` in links, ``fingerprint`` for mihomo (both the hex SHA-256 of the
certificate's DER) and ``certificate_public_key_sha256`` for sing-box (the base64
SHA-256 of its public key). No export or link says ``insecure``.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from ..core.address import Address, is_ip_literal
from ..errors import ConfigError
from ..uri import ServerURI, format_uri

#: Address of the local proxy port in exported client configs.
EXPORT_LISTEN = "127.0.0.1"
EXPORT_PORT = 1080


@dataclass(frozen=True)
class Endpoint:
    """How a client reaches this server."""

    host: str
    port: int
    sni: str | None
    #: Hex SHA-256 of the certificate's DER when clients must pin it, else None.
    pin_sha256: str | None = None
    #: Base64 SHA-256 of its SubjectPublicKeyInfo (sing-box's pin) when pinned.
    spki_sha256: str | None = None
    #: True when the host is a guess (listening on all interfaces, no --public-host).
    guessed: bool = False

    @property
    def server_name(self) -> str | None:
        """The TLS server name a client should use (None: no SNI / not needed)."""
        if self.sni is not None:
            return self.sni
        return None if is_ip_literal(self.host) else self.host


@dataclass(frozen=True)
class CertInfo:
    """The facts of a certificate file that matter to clients."""

    self_signed: bool
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    #: Hex SHA-256 of the DER (``pinSHA256``).
    sha256: str = ""
    #: Base64 SHA-256 of the SubjectPublicKeyInfo (sing-box's pin).
    spki_sha256: str = ""

    def covers(self, host: str) -> bool:
        """Would a verifying client accept this certificate for ``host``?"""
        if is_ip_literal(host):
            return str(ipaddress.ip_address(host)) in self.ip_addresses
        host = host.lower().rstrip(".")
        for name in self.dns_names:
            name = name.lower().rstrip(".")
            if name == host:
                return True
            wildcard = name.startswith("*.") and host.count(".") >= 2
            if wildcard and host.partition(".")[2] == name[2:]:
                return True
        return False


def cert_info(path: str) -> CertInfo:
    """Read the first certificate of a PEM chain file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from ..aio.tls import certificate_sha256
    from ..certs import spki_sha256_base64

    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"certificate {path!r} is not a PEM certificate: {exc}") from exc
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        dns = list(san.get_values_for_type(x509.DNSName))
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return CertInfo(
        cert.issuer == cert.subject,
        tuple(dns),
        tuple(ips),
        certificate_sha256(cert.public_bytes(Encoding.DER)),
        spki_sha256_base64(cert),
    )


def machine_name() -> str:
    """This machine's host name (no network lookup)."""
    return socket.gethostname() or "localhost"


def acme_endpoint(listen: Address, public_host: str | None, domains: Sequence[str]) -> Endpoint:
    """How clients reach a server whose certificate an ACME CA issues for ``domains``.

    Clients verify it like any CA-issued certificate, so there is no pin (renewals change
    it); the host is ``public_host``, else the first domain.
    """
    host = public_host or domains[0]
    sni = None if host.lower().rstrip(".") in domains else domains[0]
    return Endpoint(host, listen.port, sni)


def link_host(listen: Address, public_host: str | None) -> tuple[str, bool]:
    """The host clients use (``--public-host``, the listen address or this machine's name)
    and whether it is a guess."""
    if public_host:
        return public_host, False
    if listen.host in ("", "0.0.0.0", "::"):
        return machine_name(), True
    return listen.host, False


def public_endpoint(
    listen: Address, public_host: str | None, cert: str, key: str | None = None
) -> Endpoint:
    """How clients reach a server listening on ``listen`` with certificate file ``cert``.

    ``key`` (None: in the ``cert`` file) is needed to tell whether the certificate is
    publicly trusted (see the module's pinning rule). Worked out in a forked child, which
    reads the certificate with ``cryptography`` (see :mod:`anytls.forked`).
    """
    from ..forked import run_forked

    return run_forked(_public_endpoint, listen, public_host, cert, key)


def _public_endpoint(
    listen: Address, public_host: str | None, cert: str, key: str | None
) -> Endpoint:
    from ..certs import publicly_trusted

    host, guessed = link_host(listen, public_host)
    info = cert_info(cert)
    sni = None
    if not info.covers(host) and info.dns_names:
        sni = next((n for n in info.dns_names if not n.startswith("*.")), info.dns_names[0])
        if sni.startswith("*."):
            sni = "www." + sni[2:]
    endpoint = Endpoint(host, listen.port, sni, guessed=guessed)
    if info.self_signed or not publicly_trusted(cert, key, endpoint.server_name):
        endpoint = replace(endpoint, pin_sha256=info.sha256, spki_sha256=info.spki_sha256)
    return endpoint


def share_link(endpoint: Endpoint, user: str, password: str) -> str:
    """The ``anytls://`` link for ``user`` (the user name as the ``#`` label)."""
    uri = ServerURI(
        endpoint.host, endpoint.port, password, endpoint.sni, False, endpoint.pin_sha256
    )
    return f"{format_uri(uri)}#{quote(user, safe='')}"


def qr_code(text: str) -> str:
    """``text`` as a QR code drawn with Unicode half blocks (dark modules on light)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(text)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue().replace("\xa0", " ")  # qrcode draws light modules as NBSP


def singbox_config(
    endpoint: Endpoint, password: str, listen: str = EXPORT_LISTEN, port: int = EXPORT_PORT
) -> dict[str, Any]:
    """A complete sing-box client config: a mixed (SOCKS5 + HTTP) inbound → this server."""
    tls: dict[str, Any] = {"enabled": True}
    if endpoint.server_name:
        tls["server_name"] = endpoint.server_name
    if endpoint.spki_sha256:
        tls["certificate_public_key_sha256"] = [endpoint.spki_sha256]
    return {
        "log": {"level": "info"},
        "inbounds": [{"type": "mixed", "tag": "mixed-in", "listen": listen, "listen_port": port}],
        "outbounds": [
            {
                "type": "anytls",
                "tag": "anytls-out",
                "server": endpoint.host,
                "server_port": endpoint.port,
                "password": password,
                "tls": tls,
            },
            {"type": "direct", "tag": "direct"},
        ],
        "route": {"final": "anytls-out"},
    }


def singbox_json(endpoint: Endpoint, password: str) -> str:
    """:func:`singbox_config` as indented JSON."""
    return json.dumps(singbox_config(endpoint, password), indent=2) + "\n"


def _yaml_str(text: str) -> str:
    # A double-quoted YAML scalar accepts JSON string escapes.
    return json.dumps(text, ensure_ascii=False)


def mihomo_yaml(endpoint: Endpoint, password: str, name: str) -> str:
    """A mihomo (Clash.Meta) ``proxies:`` entry for this server, as YAML."""
    lines = [
        f"# mihomo proxy for the anytls server at {endpoint.host}:{endpoint.port}",
        "proxies:",
        f"  - name: {_yaml_str(name)}",
        "    type: anytls",
        f"    server: {_yaml_str(endpoint.host)}",
        f"    port: {endpoint.port}",
        f"    password: {_yaml_str(password)}",
        "    udp: true",
        "    idle-session-check-interval: 30",
        "    idle-session-timeout: 30",
        "    min-idle-session: 0",
    ]
    if endpoint.server_name:
        lines.append(f"    sni: {_yaml_str(endpoint.server_name)}")
    if endpoint.pin_sha256:
        lines.append(f"    fingerprint: {_yaml_str(endpoint.pin_sha256)}")
    return "\n".join(lines) + "\n"
