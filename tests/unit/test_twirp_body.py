"""The Twirp transport's body limit on both of its ways to read a body: all of it already there (any small
request), or arriving piece by piece."""

import asyncio
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from switchboard.api.http import HttpLimits
from switchboard.api.twirp import TwirpError, TwirpServer
from switchboard.auth.tokens import TokenVerifier

LIMIT = 64


def request_with(body: bytes, *, complete: bool) -> tuple[object, streams.StreamReader]:
    loop = asyncio.get_running_loop()
    payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    payload.feed_data(body)
    if complete:
        payload.feed_eof()
    request = make_mocked_request("POST", "/twirp/livekit.AgentDispatchService/ListDispatch", payload=payload)
    return request, payload


def server() -> TwirpServer:
    return TwirpServer(TokenVerifier({}), HttpLimits(max_body_size=LIMIT, body_timeout=0.2))


@pytest.mark.parametrize("complete", [True, False])
async def test_a_body_within_the_limit_is_read_whole(complete: bool) -> None:
    request, payload = request_with(b"x" * LIMIT, complete=complete)
    if not complete:  # the rest of it, an empty end, arrives while the server waits
        asyncio.get_running_loop().call_soon(payload.feed_eof)
    assert await server()._read_body(request) == b"x" * LIMIT  # type: ignore[arg-type]


@pytest.mark.parametrize("complete", [True, False])
async def test_a_body_over_the_limit_is_refused(complete: bool) -> None:
    # No Content-Length (chunked): only reading it finds it too large, however it arrived.
    request, _ = request_with(b"x" * (LIMIT + 1), complete=complete)
    with pytest.raises(TwirpError) as refused:
        await server()._read_body(request)  # type: ignore[arg-type]
    assert refused.value.status == 413 and "request body too large" in refused.value.msg


async def test_a_body_that_stops_arriving_is_refused_after_the_body_timeout() -> None:
    request, _ = request_with(b"{", complete=False)
    with pytest.raises(TwirpError) as refused:
        await server()._read_body(request)  # type: ignore[arg-type]
    assert refused.value.code == "deadline_exceeded"
