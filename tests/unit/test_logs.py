"""Log lines: whatever a request puts in a value, an event stays one line and its text is shown escaped."""

import io
import logging
from collections.abc import Iterator

import pytest

from switchboard import logs

FORGED = "\n2026-01-01T00:00:00.000Z ERROR switchboard.api forged"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs._Formatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_values_with_line_breaks_stay_on_their_line(output: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    log.info("participant joined room=%s sdk=%s", "r" + FORGED, "python\r\x1b[2Jx")
    log.info("twirp error path=%s", "/twirp/x\u2028forged\x85")
    (first, second) = lines(output)
    assert first.endswith(
        "room=r\\n2026-01-01T00:00:00.000Z ERROR switchboard.api forged sdk=python\\r\\x1b[2Jx"
    )
    assert second.endswith("path=/twirp/x\\u2028forged\\x85")


def test_escapes_are_unambiguous_and_numbers_keep_their_format(output: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    log.info("room=%s jobs=%d load=%.1f none=%s", "a\\nb", 3, 0.25, None)
    log.info("worker version=%(version)s", {"version": "1.0\n\u202eevil"})
    first, second = lines(output)
    assert first.endswith("room=a\\\\nb jobs=3 load=0.2 none=None")  # a backslash, then n: not a newline
    assert second.endswith("worker version=1.0\\n\\u202eevil")


def test_repr_arguments_and_prebuilt_messages_are_escaped_too(output: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    log.warning("alg %r", "HS256\nforged")
    log.warning("message built beforehand: " + FORGED)
    log.info("header %r", {"alg": "x\x00y"})
    assert len(lines(output)) == 3
    first, second, third = lines(output)
    assert first.endswith("alg 'HS256\\nforged'")
    assert second.endswith("beforehand: \\n2026-01-01T00:00:00.000Z ERROR switchboard.api forged")
    assert third.endswith("header {'alg': 'x\\x00y'}")


def test_a_traceback_is_indented_under_its_event(output: io.StringIO) -> None:
    log = logging.getLogger("test.logs")
    try:
        raise ValueError("bad value" + FORGED)
    except ValueError:
        log.exception("failed room=%s", "r\nx")
    first, *rest = lines(output)
    assert first.endswith("failed room=r\\nx")
    assert rest and all(line.startswith("  ") for line in rest)
    assert any("forged" in line for line in rest), "the exception's text is kept, indented"


def test_aiohttp_parse_errors_become_one_line_without_the_quoted_bytes(output: io.StringIO) -> None:
    from aiohttp.http_exceptions import LineTooLong

    logger = logging.getLogger("test.logs")
    logger.addFilter(logs._HttpParseErrors())
    try:
        try:
            raise LineTooLong(b"Bearer eyJhbGciOiJIUzI1NiJ9.secret", 8190)
        except LineTooLong:
            logger.exception("Error handling request from %s", "127.0.0.1")
    finally:
        logger.filters.clear()
    (line,) = lines(output)
    assert " INFO " in line and "eyJ" not in line
    assert line.endswith("bad http request from 127.0.0.1: a line of the request head is over "
                         "limit.max_request_header_size")  # fmt: skip
