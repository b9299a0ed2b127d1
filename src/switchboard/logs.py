"""Structured logs: one event per line, `time level logger event key=value …`, UTC timestamps.

Values in log lines often come from requests (room names, token headers, query parameters, what a worker
says it is), so the formatter escapes them, for every logger in one place: a value cannot end the line,
start a forged one, or hide text from a terminal. Tracebacks are indented under their event.
"""

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING}


# C0 and C1 controls, DEL, Unicode line and paragraph separators, and the bidirectional overrides
# (which reorder what a terminal shows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_OR_BACKSLASH = re.compile(_UNSAFE.pattern[:-1] + "\\\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """`text` with control characters written as escapes (and `\\` doubled, so escapes are unambiguous)."""
    return _UNSAFE_OR_BACKSLASH.sub(_escape_char, text)


def _escape_controls(text: str) -> str:
    return _UNSAFE.sub(_escape_char, text)


class _Shown:
    """A log argument as the line shows it: `%s` escaped; `%r` is Python's repr, itself escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return _escape_controls(repr(self.value))


def _shown(value: object) -> object:
    # Numbers stay numbers, for %d and %.1f; they cannot carry text.
    return value if value is None or isinstance(value, (int, float)) else _Shown(value)


class _Formatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers see the record unchanged
        args: Any = record.args
        if isinstance(args, Mapping):
            record.args = {key: _shown(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_shown(value) for value in args)
        line = super().format(record)
        # Only a traceback or stack follows the message (which is escaped): indent it under its event.
        return line.replace("\n", "\n  ")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Also a message built before the call (not from arguments) keeps to its line.
        return _escape_controls(super().formatMessage(record))


class _HttpParseErrors(logging.Filter):
    """aiohttp logs a request it cannot parse with a traceback whose message quotes the offending bytes,
    e.g. the start of an `Authorization` header: one line naming the problem says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            problem = (
                "a line of the request head is over limit.max_request_header_size"
                if isinstance(error, LineTooLong)
                else f"{type(error).__name__} (status {error.code})"
            )
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "bad http request from %s: %s", (remote, problem)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.ERROR))
    # aiohttp's access log would add a line per request; the API logs its own errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_HttpParseErrors())
    # ICE connectivity checks log every candidate pair at INFO; only their problems matter here.
    logging.getLogger("aioice").setLevel(max(root.level, logging.WARNING))
