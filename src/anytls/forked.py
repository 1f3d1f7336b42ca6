"""Run a function in a short-lived forked child and return its result.

Reading, checking or making a certificate needs ``cryptography``, whose compiled module
adds about 8 MiB to a process's resident memory for as long as the process lives (of a
server's 40 MiB at rest), although the server needs it only for a moment at start and on
reload. Those steps run through :func:`run_forked`: the child does the work and exits,
the server never loads the module.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["run_forked"]

P = ParamSpec("P")
T = TypeVar("T")

#: Modules whose loading the child spares the caller; with any already loaded, a fork
#: would save nothing, so the function runs in the calling process.
HEAVY = ("cryptography",)


def run_forked(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` computed in a forked child: its return value, or the
    exception it raised (both must pickle). The child must not log or touch the caller's
    event loop; it only computes, reads and writes files."""
    if not hasattr(os, "fork") or any(name in sys.modules for name in HEAVY):
        return fn(*args, **kwargs)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            os.close(read_fd)
            try:
                outcome: tuple[bool, object] = (True, fn(*args, **kwargs))
            except BaseException as exc:  # handed to the parent as is
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception as exc:
                data = pickle.dumps((False, RuntimeError(f"{fn.__name__}: {exc}")))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"{fn.__name__} died in its child process")
    ok, value = pickle.loads(data)
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
