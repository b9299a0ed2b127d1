"""The webhook poster against real receivers on 127.0.0.1: an aiohttp server, and raw asyncio servers for
the answers aiohttp would not give (a connection closed right after an answer that kept it open, no answer,
an answer that is not HTTP)."""

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from switchboard.webhook_post import HttpPoster, ResponseError
from tests.conftest import free_port

HEADERS = {"Authorization": "a-token", "Content-Type": "application/webhook+json"}


@asynccontextmanager
async def aiohttp_receiver(
    handler: Callable[[web.Request], "asyncio.Future[web.StreamResponse] | web.StreamResponse"],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://localhost:{port}/hook"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_receiver(answer: bytes | None, *, close_after: bool) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Reads each request (head and Content-Length body); writes `answer` (None: never answers), then
    closes the connection if `close_after`. Yields the URL and the requests read."""
    requests: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.startswith(b"Content-Length")
                )
                requests.append(head + await reader.readexactly(length))
                if answer is None:
                    continue
                writer.write(answer)
                if close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/hook", requests
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def test_posts_share_one_kept_alive_connection_and_return_each_status() -> None:
    statuses = iter([200, 204, 503])
    seen: list[tuple[object, str, str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((peer, request.path_qs, request.headers["Authorization"], await request.read()))
        return web.Response(status=next(statuses), text="ok")

    async with aiohttp_receiver(hook) as url:
        poster = HttpPoster(url + "?token=x", timeout=5)
        got = [await poster.post(b'{"n":%d}' % n, HEADERS) for n in range(3)]
        poster.close()
    assert got == [200, 204, 503]
    assert [(path, auth, body) for _, path, auth, body in seen] == [
        ("/hook?token=x", "a-token", b'{"n":%d}' % n) for n in range(3)
    ]
    assert len({peer for peer, _, _, _ in seen}) == 1


async def test_an_answer_that_closes_or_has_no_length_ends_the_connection_and_the_next_post_connects() -> (
    None
):
    answers = iter(["close", "chunked", "plain"])
    peers: list[object] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        await request.read()
        kind = next(answers)
        if kind == "close":
            return web.Response(status=201, text="ok", headers={"Connection": "close"})
        if kind == "chunked":
            response = web.StreamResponse(status=202)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"part")
            await response.write_eof()
            return response
        return web.Response(status=200, text="ok")

    async with aiohttp_receiver(hook) as url:
        poster = HttpPoster(url, timeout=5)
        got = [await poster.post(b"{}", HEADERS) for _ in range(3)]
        poster.close()
    assert got == [201, 202, 200]
    assert len(set(peers)) == 3


async def test_a_connection_the_receiver_closed_after_answering_is_replaced_without_an_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # says nothing of closing, then closes
    async with raw_receiver(answer, close_after=True) as (url, requests):
        poster = HttpPoster(url, timeout=5)
        assert [await poster.post(b'{"n":%d}' % n, HEADERS) for n in range(4)] == [200] * 4
        poster.close()
    assert [request.rpartition(b"\r\n\r\n")[2] for request in requests] == [b'{"n":%d}' % n for n in range(4)]


async def test_an_unanswered_post_times_out_and_a_refused_one_raises() -> None:
    async with raw_receiver(None, close_after=False) as (url, requests):
        poster = HttpPoster(url, timeout=0.2)
        with pytest.raises(TimeoutError):
            await poster.post(b"{}", HEADERS)
        poster.close()
    assert len(requests) == 1
    with pytest.raises(ConnectionRefusedError):
        await HttpPoster(f"http://127.0.0.1:{free_port()}/hook", timeout=5).post(b"{}", HEADERS)


async def test_an_answer_that_is_not_http_raises() -> None:
    async with raw_receiver(b"SSH-2.0-OpenSSH\r\n\r\n", close_after=False) as (url, _):
        poster = HttpPoster(url, timeout=5)
        with pytest.raises(ResponseError, match=r"not an HTTP/1\.x response"):
            await poster.post(b"{}", HEADERS)
        poster.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its key, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(
        [*request, *subject, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


async def test_an_https_receiver_is_verified_against_the_trusted_certificates(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=200 if await request.read() == b"{}" else 400)

    async with aiohttp_receiver(hook, tls) as url:
        untrusted = HttpPoster(url, timeout=5)  # the certificate is not among the system's
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.post(b"{}", HEADERS)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read by the default context OpenSSL makes
        trusted = HttpPoster(url, timeout=5)
        assert [await trusted.post(b"{}", HEADERS) for _ in range(2)] == [200, 200]
        trusted.close()


def test_a_url_without_a_host_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpPoster("http:///hook", timeout=5)
