"""Why a connection to the server failed, in words, and logging that once per cause.

:func:`hint` adds the likely cause to an error (the same hints ``anytls-client --check``
prints); :class:`FailureLog` logs client-side failures at WARNING once per cause per
minute, the repeats at DEBUG, so a wrong password does not flood the log.
"""

from __future__ import annotations

import logging
import time

#: What a server closing a session before its first frame most likely means (v2 servers
#: answer the client's settings at once; a refused login gets nothing, by design).
SILENT_CLOSE = (
    "the server closed the connection without a word: most likely a wrong password (the "
    "server logs 'rejected ...: wrong password'), or this address is locked out for a "
    "minute after too many failed logins (the server's --auth-fail-limit), or the port is "
    "not an AnyTLS server"
)

#: Seconds between two WARNING lines for the same cause.
REPEAT_INTERVAL = 60.0


def cause(exc: BaseException) -> str:
    """A short key for the kind of failure (``auth``, ``refused``, ``timeout`` ...)."""
    text = str(exc).lower()
    if "does not speak tls" in text or "answered in http" in text:
        return "not-anytls"
    if "failed verification" in text or "pinned" in text:
        return "certificate"
    if "ended" in text or "closed" in text:
        return "auth"
    if "refused" in text or "connect call failed" in text:
        return "refused"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    return "other"


def hint(exc: BaseException) -> str:
    """``"; likely cause ..."`` for ``exc``, or ``""`` when its message says it already."""
    from ..errors import FailureReason, SessionClosedError, StreamOpenError

    if isinstance(exc, StreamOpenError):
        # The server is fine: it tried the destination and says what went wrong there.
        if exc.reason is FailureReason.NOT_ALLOWED and "private or local" in str(exc):
            return (
                "; the server refuses its own machine's and networks' addresses unless it "
                "runs with --allow-private"
            )
        return ""
    kind = cause(exc)
    # (a session, not a stream, that ended; unless its message says it already)
    if kind == "auth" and isinstance(exc, SessionClosedError) and "wrong password" not in str(exc):
        return "; " + SILENT_CLOSE
    if kind == "refused":
        return "; is the server running, and is the port open in its firewall?"
    if kind == "timeout":
        return "; the server did not answer: check the address, port and firewall"
    return ""


class FailureLog:
    """Log failures to reach the server at WARNING, once per cause per minute."""

    def __init__(self, logger: logging.Logger, interval: float = REPEAT_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}

    def report(self, what: str, exc: BaseException) -> None:
        """Log ``what: exc; hint`` (WARNING the first time per cause and minute, else DEBUG)."""
        kind = cause(exc)
        now = time.monotonic()
        last = self._last.get(kind)
        if last is None or now - last >= self.interval:
            self._last[kind] = now
            self.logger.warning(
                "%s: %s%s (said once a minute; repeats at debug level)", what, exc, hint(exc)
            )
        else:
            self.logger.debug("%s: %s", what, exc)
