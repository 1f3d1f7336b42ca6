"""The server's SQLite file in the state directory (``node.sqlite3``).

Three small tables, written only by the parent process about once a second:

* ``pending``: per user, traffic not yet accepted by the panel (added every second,
  subtracted once a push succeeds), so a restart or a crash loses at most the last
  second's bytes;
* ``usage``: per user, bytes used so far, for the ``quota`` of file-configured users;
* ``meta``: the panel's last good node config and user list (with their ETags), so a node
  that restarts while its panel is down still serves its users.

WAL journal with ``synchronous=NORMAL``: a commit costs well under a millisecond and a
power cut loses at most the last commits, never the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: File name inside the state directory.
FILE_NAME = "node.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending
    (user TEXT PRIMARY KEY, up INTEGER NOT NULL, down INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage
    (user TEXT PRIMARY KEY, up INTEGER NOT NULL, down INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """The SQLite file; every method commits before it returns."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, directory: Path | str) -> Store:
        """The store in ``directory`` (created, mode 0700, if missing)."""
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(path / FILE_NAME)

    def close(self) -> None:
        """Close the file."""
        self.db.close()

    # ------------------------------------------------------------------ counters
    def _add(self, table: str, deltas: Mapping[str, tuple[int, int]]) -> None:
        rows = [(name, up, down) for name, (up, down) in deltas.items() if up or down]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                f"INSERT INTO {table} (user, up, down) VALUES (?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET up = up + excluded.up, "
                "down = down + excluded.down",
                rows,
            )

    def _read(self, table: str) -> dict[str, tuple[int, int]]:
        rows = self.db.execute(f"SELECT user, up, down FROM {table}").fetchall()
        return {name: (int(up), int(down)) for name, up, down in rows}

    def add_pending(self, deltas: Mapping[str, tuple[int, int]]) -> None:
        """Add traffic that the panel has not seen yet."""
        self._add("pending", deltas)

    def pending(self) -> dict[str, tuple[int, int]]:
        """Traffic not yet pushed: user → (up, down)."""
        return self._read("pending")

    def pushed(self, sent: Mapping[str, tuple[int, int]]) -> None:
        """The panel accepted ``sent``: subtract it (what arrived meanwhile stays)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE pending SET up = up - ?, down = down - ? WHERE user = ?",
                [(up, down, name) for name, (up, down) in sent.items()],
            )
            self.db.execute("DELETE FROM pending WHERE up <= 0 AND down <= 0")

    def add_usage(self, deltas: Mapping[str, tuple[int, int]]) -> None:
        """Add bytes used (for quotas)."""
        self._add("usage", deltas)

    def usage(self) -> dict[str, tuple[int, int]]:
        """Bytes used so far: user → (up, down)."""
        return self._read("usage")

    # ------------------------------------------------------------------ meta
    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` (JSON) under ``key``."""
        with self.db:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def get(self, key: str) -> Any:
        """The value kept under ``key``, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None
