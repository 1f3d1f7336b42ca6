"""Users as the config file describes them: a password plus optional limits.

``[users]`` takes ``name = "password"`` or, per user, a table::

    [users.bob]
    password = "..."
    speed_limit = 20          # Mbit/s, each direction, all of bob's sessions together
    device_limit = 2          # distinct client IP addresses at once
    quota = 50_000_000_000    # bytes, up + down, kept across restarts (state dir)
    expires = 2027-01-01      # a TOML date (or "2027-01-01"); from that day bob is refused
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

#: Keys a per-user table may hold.
USER_KEYS = ("name", "password", "speed_limit", "device_limit", "quota", "expires")


@dataclass(frozen=True)
class UserEntry:
    """One configured user."""

    password: str
    speed_limit: float = 0.0
    device_limit: int = 0
    quota: int = 0
    expires: datetime.date | None = None

    @property
    def limited(self) -> bool:
        """True when any limit is set."""
        return bool(self.speed_limit or self.device_limit or self.quota or self.expires)

    def expired(self, today: datetime.date | None = None) -> bool:
        """True from the day of :attr:`expires` on."""
        if self.expires is None:
            return False
        return (today or datetime.date.today()) >= self.expires


def _number(key: str, value: Any, whole: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{key}: expected {kind} ≥ 0, got {value!r}")
    if whole and not isinstance(value, int):
        raise ValueError(f"{key}: expected a whole number, got {value!r}")
    return value


def parse_entry(name: str, table: dict[str, Any]) -> UserEntry:
    """A user table (``password`` plus limits) → :class:`UserEntry`; ValueError says why."""
    unknown = sorted(set(table) - set(USER_KEYS))
    if unknown:
        raise ValueError(
            f"user {name!r}: unknown key {unknown[0]!r} (known: {', '.join(USER_KEYS[1:])})"
        )
    password = table.get("password")
    if not isinstance(password, str) or not password:
        raise ValueError(f"user {name!r}: the password must be a non-empty string")
    expires = table.get("expires")
    if isinstance(expires, str):
        try:
            expires = datetime.date.fromisoformat(expires)
        except ValueError:
            raise ValueError(
                f"user {name!r}: expires: expected a date like 2027-01-31, got {expires!r}"
            ) from None
    elif isinstance(expires, datetime.datetime):
        expires = expires.date()
    if expires is not None and not isinstance(expires, datetime.date):
        raise ValueError(f"user {name!r}: expires: expected a date like 2027-01-31")
    try:
        return UserEntry(
            password=password,
            speed_limit=float(_number("speed_limit", table.get("speed_limit", 0), False)),
            device_limit=int(_number("device_limit", table.get("device_limit", 0), True)),
            quota=int(_number("quota", table.get("quota", 0), True)),
            expires=expires,
        )
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None


def entries_from_toml(value: Any) -> dict[str, UserEntry]:
    """The limits of every user given as a table in a config file's ``users`` value."""
    out: dict[str, UserEntry] = {}
    if isinstance(value, dict):
        for name, item in value.items():
            if isinstance(item, dict):
                out[name] = parse_entry(name, item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out[item["name"]] = parse_entry(item["name"], item)
    return out
