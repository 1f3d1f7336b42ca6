"""aiohttp over AnyTLS, with no local proxy port (``pip install 'anytls[aiohttp]'``)::

    import aiohttp
    from anytls.contrib.aiohttp import AnyTLSConnector

    connector = AnyTLSConnector("anytls://password@server:443/")
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get("https://example.com/") as response:
            print(await response.text())

Every connection is one AnyTLS stream of one pooled :class:`anytls.Client`; aiohttp keeps
its own keep-alive pool of them as usual. TLS to the destination runs inside the stream,
with aiohttp's ``ssl=`` semantics (``True`` verifies, ``False`` does not, an
:class:`ssl.SSLContext` or :class:`aiohttp.Fingerprint`). ``ClientTimeout.sock_connect``
bounds opening the stream plus the TLS handshake; ``sock_read`` and ``total`` work as
usual. aiohttp speaks HTTP/1.1 only. Closing the session closes the connector and —
unless an existing :class:`Client` was passed in — the AnyTLS sessions.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ..core.address import Address
from ..errors import AnyTLSError
from ._common import ServerSpec, client_from, start_tls

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = ["AnyTLSConnector"]

SSLSetting = ssl.SSLContext | bool | aiohttp.Fingerprint
_Context = ssl.SSLContext


def _default_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


class AnyTLSConnector(aiohttp.BaseConnector):
    """An aiohttp connector whose connections go through an AnyTLS server.

    ``server`` is an ``anytls://`` link, a :class:`~anytls.ClientConfig`, or a
    :class:`~anytls.Client` to share (then it stays open when the connector closes).
    ``ssl`` is the default for requests that do not pass their own (aiohttp's meaning;
    it is about the destination's certificate). The remaining keyword arguments are
    :class:`aiohttp.BaseConnector`'s (``limit``, ``limit_per_host``, ``keepalive_timeout``,
    ``force_close`` ...).
    """

    def __init__(self, server: ServerSpec, *, ssl: SSLSetting = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client, self._owns_client = client_from(server)
        self._ssl = ssl
        self._contexts: dict[bool, _Context] = {}

    def _context(self, setting: SSLSetting) -> ssl.SSLContext:
        if isinstance(setting, ssl.SSLContext):
            return setting
        verify = setting is True
        context = self._contexts.get(verify)
        if context is None:
            context = self._contexts[verify] = _default_context(verify)
        return context

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> ResponseHandler:
        if req.proxy is not None:
            raise aiohttp.ClientConnectionError(
                "AnyTLSConnector already tunnels every request; an HTTP proxy cannot be added"
            )
        host = req.url.raw_host or ""
        port = req.port or (443 if req.is_ssl() else 80)
        destination = Address(host.strip("[]"), port)
        key = req.connection_key
        setting: SSLSetting = self._ssl if req.ssl is True else req.ssl
        protocol = self._factory()
        try:
            async with asyncio.timeout(timeout.sock_connect):
                stream = await self.client.open_stream_acknowledged(destination)
                if not req.is_ssl():
                    protocol.connection_made(stream)
                    stream.set_protocol(protocol)
                    return protocol
                transport = await start_tls(
                    stream,
                    protocol,
                    self._context(setting),
                    req.server_hostname or destination.host,
                )
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"opening {destination} through AnyTLS timed out after {timeout.sock_connect} s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise aiohttp.ClientConnectorCertificateError(key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(key, exc) from exc
        except AnyTLSError as exc:
            raise aiohttp.ClientConnectorError(
                key, ConnectionError(None, f"cannot open {destination} through AnyTLS: {exc}")
            ) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(key, exc) from exc
        if isinstance(setting, aiohttp.Fingerprint):
            try:
                setting.check(transport)
            except BaseException:
                transport.close()
                stream.close()
                raise
        return protocol

    def close(self, *, abort_ssl: bool = False) -> Awaitable[None]:
        """Close the pooled connections, then the AnyTLS sessions if this connector made
        them (await the result)."""
        closing = super().close(abort_ssl=abort_ssl)
        if not self._owns_client:
            return closing

        async def close_all() -> None:
            await closing
            await self.client.close()

        return asyncio.ensure_future(close_all())
