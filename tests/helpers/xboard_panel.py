"""A stand-in for an Xboard panel's UniProxy API, built from Xboard's own code.

Every shape below cites where it comes from in cedar2025/Xboard:

* routes: ``app/Http/Routes/V1/ServerRoute.php`` (``ServerRoute::map``): under
  ``/api/v1/server/UniProxy/``: ``GET config``, ``GET user``, ``POST push``, ``POST alive``;
* the ``server`` middleware, ``app/Http/Middleware/Server.php`` (``Server::handle``):
  ``token`` must equal the ``server_token`` setting and ``node_id`` is required (a Laravel
  validation failure: HTTP 422 ``{"message": "Invalid token", "errors": {...}}``); an
  unknown node raises ``ApiException('Server does not exist')``, rendered by
  ``app/Exceptions/Handler.php`` (``render``) through ``ApiResponse::fail`` as HTTP 400
  ``{"status": "fail", "message": ..., "data": null, "error": null}``;
* ``app/Http/Controllers/V1/Server/UniProxyController.php``:
  ``config()``: ``ServerService::buildNodeConfig`` (``app/Services/ServerService.php``,
  the ``anytls`` arm: ``protocol``, ``listen_ip``, ``server_port``, ``network``,
  ``networkSettings``, ``server_name``, ``tls_settings``, ``padding_scheme``) plus
  ``base_config: {push_interval, pull_interval}``; ``user()``: ``{"users": [{"id",
  "uuid", "speed_limit", "device_limit"}]}`` (``ServerService::getAvailableUsers``);
  both answer ``ETag: "<sha1 of the JSON>"`` and 304 with no body when ``If-None-Match``
  contains it (``str_contains``); ``push()``: a JSON object or 422 ``Invalid data
  format``, then ``success(true)``; ``alive()``: a JSON value or 400 ``{"error":
  "Invalid online data"}``, then ``{"data": true}``;
* ``ServerService::processTraffic`` keeps items that are arrays of two numbers and
  ``app/Jobs/TrafficFetchJob.php`` adds ``[0]`` to the user's ``u`` and ``[1]`` to ``d``;
* the default ``padding_scheme`` of an anytls node: ``app/Models/Server.php``
  (``PROTOCOL_CONFIGURATIONS[TYPE_ANYTLS]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: ``Server::PROTOCOL_CONFIGURATIONS[anytls]['padding_scheme']['default']``.
DEFAULT_PADDING = [
    "stop=8",
    "0=30-30",
    "1=100-400",
    "2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000",
    "3=9-9,500-1000",
    "4=500-1000",
    "5=500-1000",
    "6=500-1000",
    "7=500-1000",
]


def php_json(value: Any) -> bytes:
    """``json_encode`` as PHP writes it (no spaces, ``/`` escaped, non-ASCII escaped)."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/").encode()


@dataclass
class PanelState:
    """What the panel knows and what it was told."""

    token: str
    node_id: int
    server_port: int
    users: list[dict[str, Any]] = field(default_factory=list)
    padding: list[str] = field(default_factory=lambda: list(DEFAULT_PADDING))
    pull_interval: int = 60
    push_interval: int = 60
    server_name: str = "localhost"
    #: user id → [u, d], added up from every push (TrafficFetchJob).
    traffic: dict[int, list[int]] = field(default_factory=dict)
    #: user id → IPs of the last alive report (DeviceStateService::setDevices).
    alive: dict[int, list[str]] = field(default_factory=dict)
    #: (method, endpoint, If-None-Match, status) of every request.
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    #: Seconds to stall before answering (to test timeouts).
    stall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def user(
        self, uid: int, uuid: str, speed: int | None = None, devices: int | None = None
    ) -> None:
        """Add a user as ``getAvailableUsers`` selects it."""
        with self.lock:
            self.users.append(
                {"id": uid, "uuid": uuid, "speed_limit": speed, "device_limit": devices}
            )

    def remove_user(self, uid: int) -> None:
        """The user went over quota, expired or was banned: no longer listed."""
        with self.lock:
            self.users = [u for u in self.users if u["id"] != uid]

    def node_config(self) -> dict[str, Any]:
        """``UniProxyController::config`` for an anytls node."""
        return {
            "protocol": "anytls",
            "listen_ip": "0.0.0.0",
            "server_port": self.server_port,
            "network": None,
            "networkSettings": None,
            "server_name": self.server_name,
            "tls_settings": {"server_name": self.server_name, "allow_insecure": True},
            "padding_scheme": self.padding,
            "base_config": {
                "push_interval": self.push_interval,
                "pull_interval": self.pull_interval,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    state: PanelState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any = None, etag: str | None = None) -> None:
        data = b"" if status == 304 else php_json(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if etag:
            self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        state = self.state
        if state.stall:
            threading.Event().wait(state.stall)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        endpoint = url.path.rpartition("/")[2]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        inm = self.headers.get("If-None-Match")
        status, payload, etag = self._route(method, url.path, endpoint, query, body, inm)
        with state.lock:
            state.log.append((method, endpoint, inm, status))
        self._answer(status, payload, etag)

    def _route(
        self,
        method: str,
        path: str,
        endpoint: str,
        query: dict[str, str],
        body: bytes,
        inm: str | None,
    ) -> tuple[int, Any, str | None]:
        state = self.state
        routes = {"config": "GET", "user": "GET", "push": "POST", "alive": "POST"}
        if not path.startswith("/api/v1/server/UniProxy/") or routes.get(endpoint) != method:
            return 404, {"message": "Not Found"}, None
        # Middleware\Server::handle: validation (422), then the node lookup (400).
        errors: dict[str, list[str]] = {}
        if query.get("token") != state.token:
            errors["token"] = ["Invalid token" if query.get("token") else "token is required"]
        if not query.get("node_id"):
            errors["node_id"] = ["The node id field is required."]
        if query.get("node_type") not in (None, "anytls"):
            errors["node_type"] = ["Invalid node type specified"]
        if errors:
            return 422, {"message": next(iter(errors.values()))[0], "errors": errors}, None
        if query["node_id"] != str(state.node_id):
            return 400, fail("Server does not exist"), None
        with state.lock:
            if endpoint in ("config", "user"):
                response = state.node_config() if endpoint == "config" else {"users": state.users}
                tag = hashlib.sha1(php_json(response)).hexdigest()
                if inm and tag in inm:
                    return 304, None, None
                return 200, response, tag
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if endpoint == "push":
                if not isinstance(data, dict):
                    return 422, fail("Invalid data format"), None
                for uid, item in data.items():
                    if isinstance(item, list) and len(item) == 2:
                        total = state.traffic.setdefault(int(uid), [0, 0])
                        total[0] += int(item[0])
                        total[1] += int(item[1])
                return 200, success(True), None
            if data is None:
                return 400, {"error": "Invalid online data"}, None
            for uid, ips in data.items():
                state.alive[int(uid)] = list(ips)
            return 200, {"data": True}, None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


def success(data: Any) -> dict[str, Any]:
    """``ApiResponse::success``."""
    return {"status": "success", "message": "操作成功", "data": data, "error": None}


def fail(message: str) -> dict[str, Any]:
    """``ApiResponse::fail``."""
    return {"status": "fail", "message": message, "data": None, "error": None}


class Panel:
    """The panel's HTTP server on loopback; :meth:`stop` and :meth:`start` it at will."""

    def __init__(self, state: PanelState, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.state = state
        self.port = port
        self.tls = tls
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def requests(self, endpoint: str) -> list[tuple[str, str, str | None, int]]:
        with self.state.lock:
            return [r for r in self.state.log if r[1] == endpoint]

    def traffic(self, uid: int) -> list[int]:
        with self.state.lock:
            return list(self.state.traffic.get(uid, [0, 0]))


@contextlib.contextmanager
def xboard_panel(state: PanelState, tls: ssl.SSLContext | None = None) -> Iterator[Panel]:
    """A running :class:`Panel` for ``state`` (HTTPS with ``tls``)."""
    panel = Panel(state, tls=tls)
    panel.start()
    try:
        yield panel
    finally:
        panel.stop()
