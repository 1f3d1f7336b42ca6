"""Where the server keeps what must survive a restart.

One directory holds the generated certificate and key, ACME account keys and
certificates, and SQLite files (traffic not yet reported, quotas). ``--state-dir``
(config key ``state_dir``) names it; the default follows the XDG base directory
spec for a user and systemd's ``StateDirectory=`` for a service.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_state_dir", "ensure_state_dir"]


def default_state_dir(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The state directory used when none is given.

    Under systemd with ``StateDirectory=anytls`` the service manager says where
    (``$STATE_DIRECTORY``, ``/var/lib/anytls``); otherwise ``$XDG_STATE_HOME/anytls``,
    by default ``~/.local/state/anytls``.
    """
    env = os.environ if environ is None else environ
    systemd = env.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return base / "anytls"


def ensure_state_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700: it holds private keys) if missing and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
