"""The ``key=value`` text used by Settings, ServerSettings and padding schemes (§3).

Entries are separated by ``\\n``, each split at the first ``=``; lines without ``=`` are
ignored and later duplicates win. Writers emit no trailing newline.
"""

from __future__ import annotations

from collections.abc import Mapping


def parse_kv(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """Parse key=value lines; undecodable bytes are replaced, never raised."""
    text = bytes(data).decode("utf-8", "replace")
    result: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def format_kv(entries: Mapping[str, str]) -> bytes:
    """Serialise entries as ``k=v`` lines joined by ``\\n``."""
    return "\n".join(f"{k}={v}" for k, v in entries.items()).encode()


def parse_version(value: str | None) -> int:
    """Return the integer protocol version in ``value``, or 0 when absent or garbage."""
    if value is None:
        return 0
    try:
        return int(value.strip()) if value.strip().isdigit() else 0
    except ValueError:
        return 0
