"""The SQLite store: pending traffic survives a reopen, a push subtracts only what it sent."""

from __future__ import annotations

from pathlib import Path

from anytls.store import Store


def test_pending_usage_and_meta_survive_a_reopen(tmp_path: Path) -> None:
    store = Store.in_dir(tmp_path / "state")
    store.add_pending({"1": (100, 200), "2": (0, 0)})
    store.add_pending({"1": (1, 2), "3": (5, 0)})
    store.add_usage({"bob": (10, 20)})
    store.put("panel_users", {"users": [{"id": 1}]})
    store.close()
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    store = Store.in_dir(tmp_path / "state")
    assert store.pending() == {"1": (101, 202), "3": (5, 0)}
    assert store.usage() == {"bob": (10, 20)}
    assert store.get("panel_users") == {"users": [{"id": 1}]}
    assert store.get("missing") is None
    # A push of what was pending while more arrived: only the sent part goes.
    sent = store.pending()
    store.add_pending({"1": (7, 7)})
    store.pushed(sent)
    assert store.pending() == {"1": (7, 7)}
    store.close()
