"""Structured logs: one event per line, `time level logger event key=value …`, UTC timestamps."""

import logging
import time

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING}


class _Formatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")


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
