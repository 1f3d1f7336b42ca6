"""Logging setup for the command-line programs: text for people, JSON for log shippers.

Text lines look like ``2024-05-01 12:00:00,123 INFO anytls.server: message``. With
``--log-format json`` every record is one JSON object per line::

    {"time": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "anytls.server",
     "message": "session from 1.2.3.4:5 (user alice) ended ...", "event": "session_close",
     "peer": "1.2.3.4:5", "user": "alice", "duration": 12.5, "bytes_in": 1, ...}

Fields passed with ``extra=`` (``event``, ``peer``, ``user``, ``duration``, ``bytes_in``,
``bytes_out``, ``streams``, ...) become keys of the JSON object; text lines carry the same
facts in the message itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")

_MAPPED = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
#: Level names accepted (Go's and Python's).
LEVELS = tuple(_MAPPED)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with ``extra=`` fields as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z"
        out: dict[str, object] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def level_number(level: str | None) -> int:
    """The logging level for a flag value (Go level names work), else ``LOG_LEVEL``/info."""
    name = (level or os.environ.get("LOG_LEVEL") or "info").lower()
    return _MAPPED.get(name, logging.INFO)


class _WorkerFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def set_worker(index: int) -> None:
    """Tag this process's log lines with its worker index (``worker`` key in JSON).

    Text lines read ``<time> [worker 1] INFO anytls.server: message``.
    """
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerFilter(index))
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(
                logging.Formatter(
                    f"%(asctime)s [worker {index}] %(levelname)s %(name)s: %(message)s"
                )
            )


def setup_logging(level: str | None, fmt: str | None = "text") -> None:
    """Log to stderr at ``level`` (flag, else ``LOG_LEVEL``, else info) as text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
