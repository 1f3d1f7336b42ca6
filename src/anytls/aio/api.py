"""The traffic stats API (``--api HOST:PORT``), in Hysteria 2's shape.

Existing tooling written for Hysteria 2's ``trafficStats`` API reads it unchanged:

* ``GET /traffic`` → ``{"user": {"tx": bytes, "rx": bytes}}``; ``tx`` is what the client
  sent (upload, client → server), ``rx`` what it received (download), as Hysteria counts
  them; ``?clear=1`` zeroes the counters after answering. Users with no traffic since
  start (or the last clear) are left out, as Hysteria does.
* ``GET /online`` → ``{"user": number of distinct client IP addresses connected now}``.
* ``POST /kick`` with a JSON list of user names → their sessions close at once.

Every request must carry the secret in its ``Authorization`` header (a missing or wrong
one gets 401). Figures are summed over every worker process (:class:`ServerGroup`).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .control import ServerGroup
from .http_endpoint import LocalHttpServer, Response


class StatsApi(LocalHttpServer):
    """The three endpoints, answered on the event loop."""

    name = "stats API"

    def __init__(self, group: ServerGroup, secret: str | None) -> None:
        super().__init__()
        self.group = group
        self.secret = secret or ""
        #: Counters as of the last ``clear``: user → [up, down].
        self._base: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ endpoints
    async def traffic(self, clear: bool) -> dict[str, dict[str, int]]:
        """``GET /traffic`` (the counters since the last clear)."""
        totals = await self.group.traffic()
        out: dict[str, dict[str, int]] = {}
        for name, (up, down) in totals.items():
            base = self._base.get(name, [0, 0])
            # A counter below its base means a worker restarted: count from zero.
            tx = up - base[0] if up >= base[0] else up
            rx = down - base[1] if down >= base[1] else down
            if tx or rx:
                out[name] = {"tx": tx, "rx": rx}
        if clear:
            self._base = {name: list(v) for name, v in totals.items()}
        return out

    async def online(self) -> dict[str, int]:
        """``GET /online``."""
        return {name: len(ips) for name, ips in (await self.group.online()).items()}

    async def kick(self, users: list[str]) -> int:
        """``POST /kick``."""
        return await self.group.kick(users, "kicked through the API")

    # ------------------------------------------------------------------ HTTP
    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):  # also accept the common Bearer form
            given = given[7:]
        return hmac.compare_digest(given.strip().encode(), self.secret.encode())

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """The endpoint's JSON answer."""
        status, payload = await self._route(method, target, headers, body)
        return Response(status, "application/json; charset=utf-8", json.dumps(payload).encode())

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        if self.secret and not self._authorised(headers):
            return 401, {"error": "unauthorized"}
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query)
        if path == "/traffic" and method == "GET":
            clear = query.get("clear", ["0"])[-1].lower() in ("1", "true", "yes")
            return 200, await self.traffic(clear)
        if path == "/online" and method == "GET":
            return 200, await self.online()
        if path == "/kick" and method == "POST":
            try:
                users = json.loads(body or b"null")
            except ValueError:
                users = None
            if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                return 400, {"error": 'expected a JSON list of user names, e.g. ["alice"]'}
            await self.kick(users)
            return 200, {}
        if path in ("/traffic", "/online", "/kick"):
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": "not found"}
