"""An Xboard node: settings and users from the panel's UniProxy API, traffic pushed back.

The contract is Xboard's own code (cedar2025/Xboard):

* routes (``app/Http/Routes/V1/ServerRoute.php``): ``GET config``, ``GET user``,
  ``POST push``, ``POST alive`` under ``/api/v1/server/UniProxy/``, behind the ``server``
  middleware (``app/Http/Middleware/Server.php``): query parameters ``token`` (the
  panel's ``server_token``), ``node_id`` and ``node_type`` (``anytls``); a bad token is a
  422 validation error, an unknown node a 400 ``Server does not exist``;
* ``UniProxyController::config``: ``ServerService::buildNodeConfig`` for ``anytls``
  (``server_port``, ``server_name``, ``tls_settings``, ``padding_scheme`` as a list of
  lines) plus ``base_config.push_interval``/``pull_interval`` in seconds; ``ETag`` is the
  quoted sha1 of the JSON, ``If-None-Match`` containing it gets ``304``;
* ``UniProxyController::user``: ``{"users": [{"id", "uuid", "speed_limit",
  "device_limit"}]}`` (``ServerService::getAvailableUsers``: users over quota, expired
  or banned are not listed), same ETag/304 rule;
* ``UniProxyController::push``: a JSON object ``{"<user id>": [upload, download]}``
  (``ServerService::processTraffic`` keeps items that are two numbers;
  ``TrafficFetchJob`` adds ``[0]`` to ``u`` and ``[1]`` to ``d``);
* ``UniProxyController::alive``: ``{"<user id>": ["ip", ...]}``
  (``ServerService::processAlive`` → ``DeviceStateService::setDevices``).

The password a client sends is the user's ``uuid``: ``Server::generateServerPassword``
returns it for every type but Shadowsocks and ``Protocols/General::buildAnyTLS`` puts it
in the ``anytls://`` link. Our user name for it is the panel's user ``id``, which is what
traffic and alive reports are keyed by.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11

from ..aio.control import ServerGroup
from ..aio.limits import UserPolicy
from ..core.padding import PaddingScheme
from ..errors import AnyTLSError, ConfigError, PaddingSchemeError
from ..store import Store

log = logging.getLogger("anytls.panel")

#: Seconds a panel request may take.
REQUEST_TIMEOUT = 10.0
#: Largest answer read from the panel (a user list of 10 000 users is about 1 MB).
MAX_RESPONSE = 64 * 1024 * 1024


class PanelError(AnyTLSError):
    """The panel could not be reached or refused a request; the message says which."""


@dataclass
class HttpResponse:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (PanelError if it is not)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise PanelError(f"the panel answered HTTP {self.status} with no JSON") from exc


async def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = REQUEST_TIMEOUT,  # noqa: ASYNC109
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One HTTP/1.1 request (``http`` or ``https``) on its own connection."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PanelError(f"{url!r} is not an http:// or https:// URL")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    request_headers = [("Host", host_header), ("User-Agent", "anytls"), ("Connection", "close")]
    request_headers += list((headers or {}).items())
    if body or method == "POST":
        request_headers.append(("Content-Length", str(len(body))))
    try:
        async with asyncio.timeout(timeout):
            context = (ssl_context or ssl.create_default_context()) if secure else None
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
            try:
                out = conn.send(h11.Request(method=method, target=target, headers=request_headers))
                if body:
                    out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
                out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
                writer.write(out)
                await writer.drain()
                status = 0
                response_headers: dict[str, str] = {}
                chunks: list[bytes] = []
                size = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                        response_headers = {
                            k.decode("latin-1").lower(): v.decode("latin-1")
                            for k, v in event.headers
                        }
                    elif isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > MAX_RESPONSE:
                            raise PanelError(f"the answer of {url} is larger than 64 MiB")
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                return HttpResponse(status, response_headers, b"".join(chunks))
            finally:
                writer.close()
    except TimeoutError as exc:
        raise PanelError(f"no answer from {parts.netloc} within {timeout:g} s") from exc
    except h11.RemoteProtocolError as exc:
        raise PanelError(f"{parts.netloc} does not speak HTTP/1.1: {exc}") from exc
    except OSError as exc:
        raise PanelError(f"cannot reach {parts.netloc}: {exc.strerror or exc}") from exc


def _error_text(response: HttpResponse) -> str:
    """Xboard's error bodies: ``{"message": ...}`` (validation and ApiResponse::fail)."""
    try:
        data = json.loads(response.body)
        message = data.get("message") if isinstance(data, dict) else None
    except ValueError:
        message = None
    text = message or response.body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {response.status}" + (f": {text}" if text else "")


class XboardClient:
    """The UniProxy API of one node."""

    def __init__(
        self,
        url: str,
        token: str,
        node_id: int,
        *,
        node_type: str = "anytls",
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--panel {url!r}: expected an http:// or https:// URL")
        self.base = url.rstrip("/")
        self.token = token
        self.node_id = node_id
        self.node_type = node_type
        self.timeout = timeout

    def url(self, name: str) -> str:
        """The URL of the UniProxy endpoint ``name``."""
        query = urlencode(
            {"node_type": self.node_type, "node_id": self.node_id, "token": self.token}
        )
        return f"{self.base}/api/v1/server/UniProxy/{name}?{query}"

    async def _call(
        self, method: str, name: str, body: Any = None, etag: str | None = None
    ) -> HttpResponse:
        headers = {"Accept": "application/json"}
        data = b""
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if etag:
            headers["If-None-Match"] = etag
        response = await http_request(
            method, self.url(name), headers=headers, body=data, timeout=self.timeout
        )
        if response.status == 304 and etag:
            return response
        if not 200 <= response.status < 300:
            raise PanelError(f"{name}: {_error_text(response)}")
        return response

    async def fetch(self, name: str, etag: str | None) -> tuple[Any, str | None] | None:
        """``GET config``/``user``: (JSON, ETag), or None when unchanged (304)."""
        response = await self._call("GET", name, etag=etag)
        if response.status == 304:
            return None
        return response.json(), response.headers.get("etag")

    async def push(self, traffic: dict[str, list[int]]) -> None:
        """``POST push``: ``{"<id>": [upload, download]}``."""
        await self._call("POST", "push", traffic)

    async def alive(self, online: dict[str, list[str]]) -> None:
        """``POST alive``: ``{"<id>": [ip, ...]}``."""
        await self._call("POST", "alive", online)


@dataclass
class NodeSettings:
    """What the panel says this node serves."""

    port: int
    padding: PaddingScheme | None
    server_name: str | None
    pull_interval: float
    push_interval: float
    users: dict[str, str] = field(default_factory=dict)
    limits: dict[str, UserPolicy] = field(default_factory=dict)


def parse_config(data: Any) -> tuple[int, PaddingScheme | None, str | None, float, float]:
    """Port, padding scheme, server name, pull and push interval of a node config."""
    if not isinstance(data, dict):
        raise PanelError("config: expected a JSON object")
    try:
        port = int(data["server_port"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PanelError("config: no server_port (is the node an anytls node?)") from exc
    scheme = data.get("padding_scheme")
    padding = None
    if isinstance(scheme, list) and scheme:
        try:
            padding = PaddingScheme.parse("\n".join(str(line) for line in scheme).encode())
        except PaddingSchemeError as exc:
            raise PanelError(f"config: padding_scheme: {exc}") from exc
    base = data.get("base_config") or {}
    pull = float(base.get("pull_interval") or 60)
    push = float(base.get("push_interval") or 60)
    name = data.get("server_name")
    return port, padding, name if isinstance(name, str) and name else None, pull, push


def parse_users(data: Any) -> tuple[dict[str, str], dict[str, UserPolicy]]:
    """Users (id → uuid) and their limits from a ``user`` answer."""
    if not isinstance(data, dict) or not isinstance(data.get("users"), list):
        raise PanelError('user: expected {"users": [...]}')
    users: dict[str, str] = {}
    limits: dict[str, UserPolicy] = {}
    for item in data["users"]:
        if not isinstance(item, dict) or "id" not in item or not item.get("uuid"):
            continue
        name = str(item["id"])
        users[name] = str(item["uuid"])
        speed = float(item.get("speed_limit") or 0)
        devices = int(item.get("device_limit") or 0)
        if speed > 0 or devices > 0:
            limits[name] = UserPolicy(speed, devices)
    return users, limits


class XboardNode:
    """Keeps a server (all its processes) in step with the panel."""

    def __init__(self, client: XboardClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.group: ServerGroup | None = None
        self.settings: NodeSettings | None = None
        self._config_etag: str | None = None
        self._users_etag: str | None = None
        self._down: str | None = None
        self._stopping = False

    # ------------------------------------------------------------------ start
    async def bootstrap(self) -> NodeSettings:
        """The node's settings from the panel, else the last good ones kept in the store."""
        try:
            config = await self.client.fetch("config", None)
            users = await self.client.fetch("user", None)
        except PanelError as exc:
            cached_config = self.store.get("panel_config")
            cached_users = self.store.get("panel_users")
            if cached_config is None or cached_users is None:
                raise PanelError(f"panel {self.client.base}: {exc}") from exc
            log.warning(
                "panel %s unreachable (%s); serving the last good settings and users kept "
                "in the state directory",
                self.client.base,
                exc,
            )
            self._down = str(exc)
            self.settings = self._settings(cached_config, cached_users)
            return self.settings
        assert config is not None and users is not None
        self._config_etag, self._users_etag = config[1], users[1]
        self.settings = self._settings(config[0], users[0])
        self.store.put("panel_config", config[0])
        self.store.put("panel_users", users[0])
        return self.settings

    def _settings(self, config: Any, users: Any) -> NodeSettings:
        port, padding, name, pull, push = parse_config(config)
        names, limits = parse_users(users)
        return NodeSettings(port, padding, name, pull, push, names, limits)

    # ------------------------------------------------------------------ loops
    def _failed(self, what: str, exc: Exception) -> None:
        if self._down is None:
            log.warning(
                "panel %s: %s failed (%s); keeping the last good user list and the "
                "unreported traffic until it answers again",
                self.client.base,
                what,
                exc,
                extra={"event": "panel_down"},
            )
        else:
            log.debug("panel still unreachable: %s: %s", what, exc)
        self._down = str(exc)

    def _succeeded(self) -> None:
        if self._down is not None:
            log.info("panel %s answers again", self.client.base, extra={"event": "panel_up"})
            self._down = None

    async def pull(self) -> bool:
        """Fetch config and users (If-None-Match); apply changes. True if anything changed."""
        assert self.settings is not None and self.group is not None
        try:
            config = await self.client.fetch("config", self._config_etag)
            users = await self.client.fetch("user", self._users_etag)
        except PanelError as exc:
            self._failed("pull", exc)
            return False
        self._succeeded()
        if config is None and users is None:
            return False
        try:
            return await self._apply(config, users)
        except (PanelError, ValueError, TypeError, KeyError) as exc:
            self._failed("pull", PanelError(f"unusable answer: {exc}"))
            return False

    async def _apply(
        self, config: tuple[Any, str | None] | None, users: tuple[Any, str | None] | None
    ) -> bool:
        assert self.settings is not None and self.group is not None
        settings = self.settings
        padding_changed = False
        added, removed = 0, []
        if config is not None:
            port, padding, name, pull, push = parse_config(config[0])
            self._config_etag = config[1]
            self.store.put("panel_config", config[0])
            if port != settings.port:
                log.warning("panel: server_port is now %d; restart the node to listen there", port)
            if padding is not None and (
                settings.padding is None or padding.md5 != settings.padding.md5
            ):
                settings.padding = padding
                padding_changed = True
            settings.server_name = name
            settings.pull_interval, settings.push_interval = pull, push
        if users is not None:
            names, limits = parse_users(users[0])
            self._users_etag = users[1]
            self.store.put("panel_users", users[0])
            added = len(set(names) - set(settings.users))
            removed = sorted(set(settings.users) - set(names))
            settings.users, settings.limits = names, limits
        await self.group.set_users(
            settings.users, settings.limits, settings.padding if padding_changed else None
        )
        # Logged once every process serves the new list.
        if padding_changed and settings.padding is not None:
            log.info("panel: new padding scheme (md5 %s) for new sessions", settings.padding.md5)
        if users is not None:
            log.info(
                "panel: %d users (%d new, %d removed)",
                len(settings.users),
                added,
                len(removed),
                extra={"event": "panel_users", "users": len(settings.users)},
            )
        return True

    async def push(self) -> bool:
        """Push the traffic kept in the store, then the online IPs. True on success."""
        assert self.group is not None
        pending = self.store.pending()
        sent = {name: value for name, value in pending.items() if name.isdigit()}
        try:
            if sent:
                await self.client.push({name: [up, down] for name, (up, down) in sent.items()})
                self.store.pushed(sent)
            online = await self.group.online()
            await self.client.alive({n: ips for n, ips in online.items() if n.isdigit()})
        except PanelError as exc:
            self._failed("push", exc)
            return False
        self._succeeded()
        return True

    async def run(self) -> None:
        """Pull and push at the panel's intervals until cancelled (pushes once at the end)."""
        assert self.settings is not None
        loop = asyncio.get_running_loop()
        next_pull = loop.time() + self.settings.pull_interval
        next_push = loop.time() + self.settings.push_interval
        try:
            while True:
                await asyncio.sleep(max(0.0, min(next_pull, next_push) - loop.time()))
                now = loop.time()
                try:
                    if now >= next_pull:
                        await self.pull()
                    if now >= next_push:
                        await self.push()
                except Exception:  # a bug or a broken state dir: keep the node going
                    log.exception("panel: pull or push failed")
                if now >= next_pull:
                    next_pull = loop.time() + self.settings.pull_interval
                if now >= next_push:
                    next_push = loop.time() + self.settings.push_interval
        finally:
            if self.store.pending():
                with contextlib.suppress(Exception):  # shutting down; the store keeps it
                    await asyncio.shield(self.push())
