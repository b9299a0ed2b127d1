"""Waiting for something to become true, with a deadline: the one polling helper of the test suite."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

DEADLINE = 30.0  # generous: a `start` worker forks its job process pool before registering
POLL = 0.05


async def eventually(
    check: Callable[[], Any],
    what: str,
    deadline: float = DEADLINE,
    *,
    accept: Callable[[Any], bool] = bool,
    poll: float = POLL,
) -> Any:
    """Poll `check()` (plain or async) until `accept` holds for its value (by default: it is truthy), and
    return that value; after `deadline` seconds, fail naming `what` and the last value seen."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if accept(value):
            return value
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {deadline:g}s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(poll)
