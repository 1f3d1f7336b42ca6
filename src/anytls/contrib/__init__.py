"""Integrations with the HTTP clients Python programs already use.

* :mod:`anytls.contrib.httpx` — an ``httpx`` transport (``pip install 'anytls[httpx]'``);
* :mod:`anytls.contrib.aiohttp` — an ``aiohttp`` connector (``pip install 'anytls[aiohttp]'``).

Both open their connections as AnyTLS streams through one pooled :class:`anytls.Client`
(no local proxy port) and run TLS to the destination inside the stream.
"""

from ._common import ServerSpec, client_from, config_from_uri, start_tls

__all__ = ["ServerSpec", "client_from", "config_from_uri", "start_tls"]
