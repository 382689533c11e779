"""The monitor's minimal HTTP/1.1 server over real sockets (monitor.http); its idle timeout
and `Date` header on a clock the test turns by hand (tests.support.clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Mapping

import pytest

from lifeboat.errors import InvalidArgument, NotFound
from monitor.http import IDLE_TIMEOUT, HttpServer, Response
from tests.support.clock import FakeClock

START = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)
EARLY = 0.25  # before a due time (a binary fraction: exact sums)


def echo(query: Mapping[str, str]) -> Response:
    if "fail" in query:
        raise InvalidArgument("fail", "asked to fail")
    if "missing" in query:
        raise NotFound("nothing here")
    if "crash" in query:
        raise RuntimeError("boom")
    return Response(200, "".join(f"{k}={v};" for k, v in sorted(query.items())) + "\n")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    http = HttpServer("127.0.0.1:0", {"/echo": echo})
    await http.start()
    try:
        yield http
    finally:
        await http.stop()


async def exchange(
    port: int, raw: bytes, responses: int = 1
) -> list[tuple[str, dict[str, str], bytes]]:
    """Send raw bytes; read `responses` responses (by Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answers = []
        for _ in range(responses):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status, *lines = head.strip().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            body = await reader.readexactly(int(headers["content-length"]))
            answers.append((status, headers, body))
        return answers
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        pytest.param(
            "GET /echo?job=vm-web01&host=b1", "200 OK", b"host=b1;job=vm-web01;\n", id="query"
        ),
        pytest.param("GET /echo?job=vm%20a", "200 OK", b"job=vm a;\n", id="percent-decoding"),
        pytest.param("GET /echo?fail=1", "400 Bad Request", b"fail: asked to fail\n", id="invalid"),
        pytest.param("GET /echo?missing=1", "404 Not Found", b"nothing here\n", id="not-found"),
        pytest.param(
            "GET /echo?crash=1",
            "500 Internal Server Error",
            b"internal error: RuntimeError: boom\n",
            id="crash",
        ),
        pytest.param(
            "GET /nope", "404 Not Found", b"no such path '/nope'; try /echo\n", id="no-route"
        ),
        pytest.param("POST /echo", "405 Method Not Allowed", b"only GET and HEAD\n", id="post"),
    ],
)
async def test_requests(server: HttpServer, request_line: str, status: str, body: bytes) -> None:
    raw = f"{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    ((got_status, headers, got_body),) = await exchange(server.port, raw)
    assert got_status == f"HTTP/1.1 {status}"
    assert got_body == body
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["connection"] == "close"


async def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer) -> None:
    raw = b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /echo?a=2 HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        first = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 5\r\n" in first and b"Connection: keep-alive" in first
        assert await reader.readexactly(5) == b"a=1;\n"
        second = await reader.readuntil(b"\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 5\r\n" in second
        writer.write(b"GET /echo?a=3 HTTP/1.0\r\n\r\n")
        third = await asyncio.wait_for(reader.read(), 5)  # HTTP/1.0: the server closes
        assert third.startswith(b"HTTP/1.1 200 OK") and third.endswith(b"a=3;\n")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", "400 Bad Request", id="request-line"),
        pytest.param(b"GET /echo HTTP/1.1\r\nno colon\r\n\r\n", "400 Bad Request", id="header"),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
            "431 Request Header Fields Too Large",
            id="head-too-large",
        ),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "501 Not Implemented",
            id="chunked",
        ),
    ],
)
async def test_bad_requests_are_refused(server: HttpServer, raw: bytes, status: str) -> None:
    ((got_status, headers, _),) = await exchange(server.port, raw)
    assert got_status == f"HTTP/1.1 {status}"
    assert headers["connection"] == "close"


async def test_listen_failure_names_the_address(server: HttpServer) -> None:
    taken = HttpServer(f"127.0.0.1:{server.port}", {})
    with pytest.raises(Exception, match=f"127.0.0.1:{server.port}"):
        await taken.start()


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    fake = FakeClock(START)
    http = HttpServer("127.0.0.1:0", {"/echo": echo}, fake)
    await http.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    try:
        writer.write(b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"\r\nDate: Thu, 26 Nov 2026 19:32:00 GMT\r\n" in head
        assert await reader.readexactly(5) == b"a=1;\n"

        # The connection is the only task sleeping on this clock: a turn ends once it
        # sleeps again, waiting for the next request, so it was not closed.
        await fake.turn(IDLE_TIMEOUT - EARLY, 1)
        writer.write(b"GET /echo?a=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"\r\nDate: Thu, 26 Nov 2026 19:32:29 GMT\r\n" in head
        assert await reader.readexactly(5) == b"a=2;\n"

        # Idle time counts from the latest request.
        await fake.turn(IDLE_TIMEOUT - EARLY, 1)
        fake.advance(EARLY)
        async with asyncio.timeout(5):
            assert await reader.read() == b"", "closed by the server"
    finally:
        writer.close()
        await writer.wait_closed()
        await http.stop()
