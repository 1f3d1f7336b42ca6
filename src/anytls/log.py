"""Logging setup for the command-line programs."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "fatal", "panic")


def setup_logging(level: str | None) -> None:
    """Log to stderr at ``level`` (flag, else ``LOG_LEVEL``, else info); Go level names work."""
    name = (level or os.environ.get("LOG_LEVEL") or "info").lower()
    mapped = {
        "trace": logging.DEBUG,
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "warn": logging.WARNING,
        "error": logging.ERROR,
        "fatal": logging.CRITICAL,
        "panic": logging.CRITICAL,
    }.get(name, logging.INFO)
    logging.basicConfig(
        level=mapped,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
