"""``anytls-server`` on SIGHUP: read the config file, users and certificate again and apply
them to new sessions (open ones keep going)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from ..aio.server import AnyTLSServer
from ..core.address import Address
from ..errors import ConfigError
from ..log import level_number
from ._certificates import tls_context
from ._server_config import server_config

log = logging.getLogger("anytls.server")


class Reloader:
    """SIGHUP: re-read the config file, users and certificate; apply to new sessions."""

    #: Settings that need a restart; a reload keeps the running value.
    RESTART: ClassVar[dict[str, str]] = {
        "l": "listen",
        "workers": "workers",
        "metrics": "metrics",
        "accept_proxy_protocol": "accept_proxy_protocol",
        "log_format": "log_format",
        "acme": "acme",
        "acme_email": "acme_email",
        "acme_directory": "acme_directory",
        "acme_ca": "acme_ca",
        "acme_http": "acme_http",
        "state_dir": "state_dir",
    }

    def __init__(
        self,
        reread: Callable[[], argparse.Namespace],
        args: argparse.Namespace,
        server: AnyTLSServer,
        listen: Address,
        level: int = logging.INFO,
    ) -> None:
        #: Reads the flags and the config file again.
        self.reread = reread
        self.args = args
        self.server = server
        self.listen = listen
        #: Level of the "reloaded" line (workers other than the first log at DEBUG).
        self.level = level
        #: The password generated at start (kept while the config names no user).
        self.generated: str | None = None
        #: Filters the file's users on reload (quotas, expiry); None = serve them all.
        self.keep_users: Callable[[Any], dict[str, str]] | None = None
        #: Called with the new settings before they are applied (may raise ConfigError).
        self.on_reload: Callable[[argparse.Namespace], None] | None = None

    def reload(self) -> None:
        try:
            new = self.reread()
            if self.generated and not new.p and not new.user:
                new.p = self.generated
            for dest, key in self.RESTART.items():
                if getattr(new, dest) != getattr(self.args, dest):
                    log.log(
                        logging.WARNING if self.level >= logging.INFO else logging.DEBUG,
                        "reload: %s changed; restart the server to apply it",
                        key,
                    )
                    setattr(new, dest, getattr(self.args, dest))
            config = server_config(new)
            if self.on_reload is not None:
                self.on_reload(new)
            if self.args.panel or self.keep_users is not None:
                # Users come from the panel (or the quota keeper): keep the running ones.
                running = self.server.config
                keep = self.keep_users(config.users) if self.keep_users else running.users
                # Users the quota keeper refuses stay refused (with the file's passwords).
                refused = {
                    n: (config.users[n], why)
                    for n, (_, why) in running.refused.items()
                    if n in config.users and n not in keep
                }
                config = dataclasses.replace(
                    config,
                    users=keep,
                    refused=refused,
                    limits=config.limits if not self.args.panel else running.limits,
                    padding=config.padding if not self.args.panel else running.padding,
                )
            ctx = tls_context(new, self.listen) if (new.cert or self.args.cert) else None
        except (ConfigError, SystemExit) as exc:
            # Every worker reloads; the first one says it at ERROR, the others at DEBUG.
            log.log(
                logging.ERROR if self.level >= logging.INFO else logging.DEBUG,
                "reload failed, keeping the running settings: %s",
                exc,
            )
            return
        old_users = self.server.config.users
        added = sorted(set(config.users) - set(old_users))
        removed = sorted(set(old_users) - set(config.users))
        changed = sorted(
            n for n in config.users if n in old_users and old_users[n] != config.users[n]
        )
        self.server.update(config, ctx)
        logging.getLogger().setLevel(level_number(new.log_level))
        self.args = new
        parts = [f"{len(config.users)} user{'s' * (len(config.users) != 1)}"]
        for label, names in (("added", added), ("removed", removed), ("new password", changed)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if ctx is not None:
            parts.append(f"certificate reloaded from {new.cert or 'a new self-signed one'}")
        log.log(
            self.level,
            "reloaded (%s); open sessions keep going",
            "; ".join(parts),
            extra={"event": "reload", "users": len(config.users)},
        )
