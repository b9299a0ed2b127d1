"""Structured logs: one event per line, `time level logger event key=value …`, UTC timestamps."""

import logging
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING}


class _Formatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.ERROR))
    # aiohttp's access log would add a line per request; the API logs its own errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # ICE connectivity checks log every candidate pair at INFO; only their problems matter here.
    logging.getLogger("aioice").setLevel(max(root.level, logging.WARNING))
