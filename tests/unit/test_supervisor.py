"""The supervisor's restart waits, the copying of agents' output, the watchdog's rules; no processes."""

import asyncio
import os

import pytest

from switchboard.agents.supervisor import LINE_LIMIT, SupervisorSettings, copy_lines
from switchboard.agents.watchdog import Watchdog


def test_restart_waits_double_up_to_the_maximum() -> None:
    settings = SupervisorSettings(restart_delay=0.5, restart_max_delay=5)
    assert [settings.restart_wait(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


async def test_output_lines_are_prefixed_and_long_ones_cut(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"first\nsec")
    stream.feed_data(b"ond\n" + b"x" * (LINE_LIMIT + 10) + b"\nlast without newline")
    stream.feed_eof()
    await copy_lines(stream, b"captions | ")
    lines = capfdbinary.readouterr().err.split(b"\n")
    assert lines[:2] == [b"captions | first", b"captions | second"]
    assert all(line.startswith(b"captions | ") for line in lines[:-1]) and lines[-1] == b""
    assert b"".join(line.removeprefix(b"captions | ") for line in lines[2:-2]) == b"x" * (LINE_LIMIT + 10)
    assert lines[-2] == b"captions | last without newline"


def test_the_watchdog_says_why_everything_must_end() -> None:
    assert Watchdog(None, None).check() is None
    assert Watchdog(os.getppid(), 30).check() is None
    assert Watchdog(os.getppid() + 1, None).check() == f"the server (pid {os.getppid() + 1}) is gone"
    unbounded = Watchdog(None, None)
    unbounded.draining()  # no drain limit: a drain of its own choosing
    assert unbounded.check() is None
    bounded = Watchdog(None, 0)
    bounded.limit(600, "later")
    bounded.draining()  # the earlier limit stands
    assert bounded.check() == "the drain did not end within 0s"
