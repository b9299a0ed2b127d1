"""The supervisor's restart waits and the copying of agents' output, without processes."""

import asyncio

import pytest

from switchboard.agents.supervisor import LINE_LIMIT, SupervisorSettings, copy_lines


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
