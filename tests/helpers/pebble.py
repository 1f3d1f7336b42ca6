"""Let's Encrypt's test CA on loopback: Debian's ``pebble`` with ``pebble-challtestsrv`` as DNS.

    async with PebbleCA(tmp_path, tls_port=server_port, http_port=http_port) as ca:
        ... anytls-server --acme proxy.test --acme-directory ca.directory --acme-ca ca.api_ca
        root = ca.root_pem()        # the root that signs the issued certificates

Validation is real (``PEBBLE_VA_ALWAYS_VALID`` is removed from the environment): pebble
resolves the domain with ``pebble-challtestsrv`` (every name → 127.0.0.1 unless
:meth:`PebbleCA.set_address` says otherwise, no AAAA) and connects to ``tls_port``
(TLS-ALPN-01) or ``http_port`` (HTTP-01) there. ``PEBBLE_VA_NOSLEEP=1`` removes its
artificial delays, ``PEBBLE_AUTHZREUSE=0`` makes every order validate again (a renewal
too) and ``PEBBLE_WFE_NONCEREJECT=0`` stops it rejecting good nonces at random.
``validity`` (seconds) shortens the issued certificates' lifetime for renewal tests.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from .net import free_port, free_port_tcp_udp, make_self_signed_cert
from .process import ManagedProcess, StartupSteps, WaitPort

__all__ = ["PebbleCA", "pebble_available"]

START_TIMEOUT = 20.0


def pebble_available() -> bool:
    """Are Debian's ``pebble`` and ``pebble-challtestsrv`` installed?"""
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


class ChallTestSrv(ManagedProcess):
    """``pebble-challtestsrv`` as a mock DNS server only."""

    def __init__(self, workdir: Path) -> None:
        self.name = "pebble-challtestsrv"
        self.workdir = workdir
        self.log_path = workdir / "challtestsrv.log"
        self.proc = None
        self.dns_port = free_port_tcp_udp()
        self.management_port = free_port()
        self.argv = [
            "pebble-challtestsrv",
            *("-dns01", f"127.0.0.1:{self.dns_port}"),
            *("-http01", "", "-https01", "", "-tlsalpn01", ""),
            *("-management", f"127.0.0.1:{self.management_port}"),
            *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
        ]

    def _spawn(self) -> None:
        self._launch(self.argv, dict(os.environ))

    def _startup(self) -> StartupSteps:
        yield WaitPort("127.0.0.1", self.management_port, START_TIMEOUT)
        yield WaitPort("127.0.0.1", self.dns_port, START_TIMEOUT)

    def _fail_context(self) -> str:
        return f"argv={self.argv}"

    def set_address(self, host: str, address: str) -> None:
        """Answer A queries for ``host`` with ``address`` from now on."""
        body = json.dumps({"host": host, "addresses": [address]}).encode()
        url = f"http://127.0.0.1:{self.management_port}/add-a"
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=5) as resp:
            assert resp.status == 200, resp.status


class Pebble(ManagedProcess):
    """``pebble`` itself, its API served over HTTPS with a certificate of our own."""

    def __init__(
        self, workdir: Path, dns_port: int, tls_port: int, http_port: int, validity: int | None
    ) -> None:
        self.name = "pebble"
        self.workdir = workdir
        self.log_path = workdir / "pebble.log"
        self.proc = None
        self.port = free_port()
        self.management_port = free_port()
        cert, key = make_self_signed_cert(workdir / "pebble-api")
        #: The CA file that verifies pebble's HTTPS API (``--acme-ca``).
        self.api_ca = cert
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            config["certificateValidityPeriod"] = validity
        self.config_path = workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2))
        self.argv = [
            "pebble",
            *("-config", str(self.config_path)),
            *("-dnsserver", f"127.0.0.1:{dns_port}"),
        ]

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_AUTHZREUSE="0", PEBBLE_WFE_NONCEREJECT="0")
        self._launch(self.argv, env)

    def _startup(self) -> StartupSteps:
        yield WaitPort("127.0.0.1", self.management_port, START_TIMEOUT)
        yield WaitPort("127.0.0.1", self.port, START_TIMEOUT)

    def _fail_context(self) -> str:
        return f"argv={self.argv}"


class PebbleCA:
    """pebble + its DNS server, started and stopped together (async context manager)."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls_port: int,
        http_port: int | None = None,
        validity: int | None = None,
    ) -> None:
        if not pebble_available():
            raise AssertionError(
                "pebble and pebble-challtestsrv are missing: apt-get install pebble "
                "(scripts/test installs it)"
            )
        self.workdir = Path(workdir) / "pebble"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dns = ChallTestSrv(self.workdir)
        self.pebble = Pebble(
            self.workdir, self.dns.dns_port, tls_port, http_port or free_port(), validity
        )

    @property
    def directory(self) -> str:
        """The ACME directory URL (``--acme-directory``)."""
        return f"https://127.0.0.1:{self.pebble.port}/dir"

    @property
    def api_ca(self) -> Path:
        """The CA file for pebble's HTTPS API (``--acme-ca``)."""
        return self.pebble.api_ca

    def set_address(self, host: str, address: str) -> None:
        """Make ``host`` resolve to ``address`` for pebble's validations."""
        self.dns.set_address(host, address)

    def root_pem(self) -> bytes:
        """The root certificate that issued this run's certificates (new at every start)."""
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        url = f"https://127.0.0.1:{self.pebble.management_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            data: bytes = resp.read()
        return data

    def log_text(self) -> str:
        return self.pebble.log_text()

    async def __aenter__(self) -> Self:
        await self.dns.start()
        try:
            await self.pebble.start()
        except BaseException:
            await self.dns.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.pebble.stop()
        finally:
            await self.dns.stop()
