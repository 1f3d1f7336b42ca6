"""``anytls-server``'s flags → :class:`~anytls.aio.server.ServerConfig`: users and passwords
(a generated one kept in the state directory when none is given), the padding scheme and the
config file's per-user tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ..aio.limits import UserPolicy
from ..aio.server import ServerConfig
from ..core.address import Address
from ..core.padding import PaddingScheme
from ..errors import ConfigError, PaddingSchemeError
from ..users import UserEntry


def parse_users(password: str | None, extra: Sequence[str]) -> dict[str, str]:
    """Users from ``-p`` and ``--user NAME:PASSWORD`` flags (later ones win)."""
    users: dict[str, str] = {}
    if password:
        users["default"] = password
    for item in extra:
        name, sep, pw = item.partition(":")
        if not sep or not name or not pw:
            raise ConfigError(f"--user {item!r}: expected NAME:PASSWORD")
        users[name] = pw
    if not users:
        raise ConfigError(
            "no password: give -p PASSWORD or --user NAME:PASSWORD (or users in the config file)"
        )
    return users


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits) for a server started without one."""
    import secrets

    return secrets.token_urlsafe(18)


#: File in the state directory holding the password generated for a server without one.
GENERATED_PASSWORD_FILE = "generated-password"


def stored_password(directory: Path) -> tuple[str, str | None]:
    """The generated password kept in ``directory`` (made and saved, mode 0600, if none).

    Returns ``(password, where)``: ``where`` is the file, or None when it could not be
    written (the password then lasts until the server stops).
    """
    from ..state import ensure_state_dir

    path = directory / GENERATED_PASSWORD_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the generated password in {str(path)!r}: {exc}") from exc
    if kept:
        return kept, str(path)
    password = generate_password()
    try:
        ensure_state_dir(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
    except OSError:
        return password, None
    return password, str(path)


def load_padding(source: str | Sequence[str] | None) -> PaddingScheme:
    """The scheme in the file ``source`` (bytes as they are), inline lines, or the default."""
    if not source:
        return PaddingScheme.default()
    if not isinstance(source, str):
        try:
            return PaddingScheme.parse("\n".join(source).encode())
        except PaddingSchemeError as exc:
            raise ConfigError(f"padding_scheme: {exc}") from exc
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read padding scheme {source!r}: {exc.strerror}") from exc
    try:
        return PaddingScheme.parse(raw)
    except PaddingSchemeError as exc:
        raise ConfigError(f"padding scheme {source!r}: {exc}") from exc


def user_entries(args: argparse.Namespace) -> dict[str, UserEntry]:
    """The config file's per-user tables (limits, quota, expiry): name → UserEntry."""
    from ..users import entries_from_toml
    from .config_file import normalise_key, read_toml

    if not args.config:
        return {}
    data = read_toml(args.config)
    for key, value in data.items():
        if normalise_key(key) == "users":
            try:
                return entries_from_toml(value)
            except ValueError as exc:
                raise ConfigError(f"{args.config}: users: {exc}") from exc
    return {}


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The :class:`~anytls.aio.server.ServerConfig` the flags describe."""
    if args.allow_private and args.deny_private:
        raise ConfigError("--allow-private and --deny-private contradict each other; drop one")
    panel = bool(getattr(args, "panel", None))
    entries = user_entries(args)
    return ServerConfig(
        users={} if panel else parse_users(args.p, args.user),
        speed_limit=args.speed_limit,
        limits={
            name: UserPolicy(entry.speed_limit, entry.device_limit)
            for name, entry in entries.items()
            if entry.speed_limit or entry.device_limit
        },
        padding=load_padding(args.padding_scheme),
        connect_timeout=args.connect_timeout,
        idle_session_timeout=args.idle_session_timeout,
        max_streams_per_session=args.max_streams_per_session,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        allow_private=args.allow_private,
        deny_private=args.deny_private,
        fallback=Address.parse(args.fallback) if args.fallback else None,
        max_connections=max(0, args.max_connections),
        auth_fail_limit=max(0, args.auth_fail_limit),
        stream_buffer=max(16 * 1024, args.stream_buffer),
        session_buffer=max(16 * 1024, args.session_buffer),
        preface_timeout=args.preface_timeout,
        accept_proxy_protocol=args.accept_proxy_protocol,
        tcp_fast_open=args.tcp_fast_open,
    )
