"""The event loop every Switchboard process runs on: uvloop's where it is installed (it is on Linux and
macOS; it is optional elsewhere, e.g. on Windows), else asyncio's own."""

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
