"""Hostile HTTP on raw sockets: anonymous large bodies, slow and stalled connections, oversized heads.

The server runs with short limits (1 s) from its config, so each test waits about that long; every
wait is a socket read with a deadline, which also notices the server closing the connection.
"""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server, start_server, stop_server

LIST_ROOMS = "/twirp/livekit.RoomService/ListRooms"
TEN_MB = 10 * 1024 * 1024
IDLE_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
HEADER_SIZE = 4096
CLOSE_DEADLINE = 5.0  # far above the 1 s limits, far below "held forever"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    limits = {
        "idle_timeout": IDLE_TIMEOUT,
        "body_timeout": BODY_TIMEOUT,
        "max_request_header_size": HEADER_SIZE,
        "max_request_headers": 50,
    }
    instance = start_server(tmp_path_factory.mktemp("server"), {"limit": limits})
    yield instance
    stop_server(instance)


def connect(server: Server) -> socket.socket:
    host, port = server.http_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=CLOSE_DEADLINE)
    return sock


def head(path: str, *lines: str, method: str = "POST") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *lines, "", ""]).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body), read within the socket's deadline."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_within(sock: socket.socket, deadline: float) -> float:
    """Seconds until the server closes `sock` (reading and dropping what it still sends); fails after
    `deadline`."""
    start = time.monotonic()
    sock.settimeout(deadline)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {deadline}s")
    return time.monotonic() - start


def authorised_list_rooms(server: Server) -> int:
    with connect(server) as sock:
        body = b"{}"
        sock.sendall(
            head(
                LIST_ROOMS,
                f"Authorization: Bearer {server.token(room_list=True)}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
            )
            + body
        )
        return read_response(sock)[0]


def test_an_anonymous_10_mb_body_is_refused_before_it_is_sent(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(head(LIST_ROOMS, "Content-Type: application/json", f"Content-Length: {TEN_MB}"))
        sock.sendall(b"{" + b" " * 65535)  # a first piece; the other 10 MB never come
        status, headers, body = read_response(sock)
        assert status == 401 and json.loads(body)["code"] == "unauthenticated"
        assert headers["connection"] == "close"
        closed_within(sock, CLOSE_DEADLINE)  # not left waiting for the rest
    assert authorised_list_rooms(server) == 200


def test_an_anonymous_10_mb_body_sent_in_full_is_discarded_and_the_connection_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(head(LIST_ROOMS, "Content-Type: application/json", f"Content-Length: {TEN_MB}"))

        def upload() -> None:
            with contextlib.suppress(OSError):  # the server may close before it has all of it
                sock.sendall(b" " * TEN_MB)

        uploader = threading.Thread(target=upload)
        uploader.start()
        try:
            status, headers, _ = read_response(sock)
            assert status == 401 and headers["connection"] == "close"
            assert authorised_list_rooms(server) == 200, "others are served meanwhile"
            closed_within(sock, CLOSE_DEADLINE)
        finally:
            uploader.join(CLOSE_DEADLINE)
    assert not uploader.is_alive()


def test_an_anonymous_chunked_body_is_refused_before_it_is_read(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(head(LIST_ROOMS, "Content-Type: application/json", "Transfer-Encoding: chunked"))
        sock.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")  # one 64 KB chunk, and no end
        status, headers, _ = read_response(sock)
        assert status == 401 and headers["connection"] == "close"
        closed_within(sock, CLOSE_DEADLINE)


def test_expect_100_continue_gets_the_refusal_instead_of_the_go_ahead(server: Server) -> None:
    with connect(server) as sock:
        lines = ("Content-Type: application/json", f"Content-Length: {TEN_MB}", "Expect: 100-continue")
        sock.sendall(head(LIST_ROOMS, *lines))
        status, _, body = read_response(sock)
        assert status == 401 and json.loads(body)["code"] == "unauthenticated"
    with connect(server) as sock:  # authenticated, but declared over the body limit: refused unsent
        token = server.token(room_list=True)
        sock.sendall(
            head(LIST_ROOMS, f"Authorization: Bearer {token}", f"Content-Length: {TEN_MB + 1}", lines[2])
        )
        status, _, body = read_response(sock)
        assert status == 413 and "request body too large" in json.loads(body)["msg"]
    with connect(server) as sock:  # a request that will be served gets the go-ahead
        sock.sendall(head(LIST_ROOMS, f"Authorization: Bearer {token}", *lines[::2], "Content-Length: 2"))
        assert read_response(sock)[0] == 100
        sock.sendall(b"{}")
        assert read_response(sock)[0] == 200


def test_a_body_that_never_finishes_is_refused_and_closed(server: Server) -> None:
    with connect(server) as sock:
        token = server.token(room_list=True)
        sock.sendall(
            head(
                LIST_ROOMS,
                f"Authorization: Bearer {token}",
                "Content-Type: application/json",
                f"Content-Length: {TEN_MB}",
            )
            + b"{"
        )
        status, headers, body = read_response(sock)
        elapsed = closed_within(sock, CLOSE_DEADLINE)
        assert status == 408 and json.loads(body)["code"] == "deadline_exceeded"
        assert headers["connection"] == "close" and elapsed < CLOSE_DEADLINE


def test_unfinished_headers_are_closed_however_slowly_they_trickle(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST " + LIST_ROOMS.encode() + b" HTTP/1.1\r\nHost: test\r\n")
        start = time.monotonic()
        sock.settimeout(0.2)
        closed = False
        while time.monotonic() - start < CLOSE_DEADLINE and not closed:
            try:  # one header byte every 0.2 s, for as long as the server listens
                sock.sendall(b"X")
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, f"a slowloris connection was held for {CLOSE_DEADLINE}s"


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(head("/", method="GET"))
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection", "keep-alive").lower() != "close"
        closed_within(sock, CLOSE_DEADLINE)


def test_an_oversized_header_is_refused_without_logging_the_token(server: Server) -> None:
    token = server.token(room_list=True)
    with connect(server) as sock:
        sock.sendall(
            head(LIST_ROOMS, f"Authorization: Bearer {token}{'A' * HEADER_SIZE}", "Content-Length: 0")
        )
        assert read_response(sock)[0] == 400
        closed_within(sock, CLOSE_DEADLINE)
    with connect(server) as sock:
        sock.sendall(head("/", *(f"X-Header-{i}: {i}" for i in range(60)), method="GET"))
        assert read_response(sock)[0] == 400
    log = server.log()  # aiohttp logs the error before it answers
    assert "bad http request from 127.0.0.1: a line of the request head is over" in log
    assert "Traceback" not in log and token[:20] not in log


def test_an_ordinary_request_still_works_after_all_that(server: Server) -> None:
    assert authorised_list_rooms(server) == 200
    assert server.process.poll() is None
