"""A minimal HTTP/1.1 server on asyncio streams, enough for Nagios' check_http and Prometheus.

GET and HEAD only, no request bodies, keep-alive as HTTP/1.1 says (HTTP/1.0
only when asked), one handler per exact path. Handlers are plain functions of
the query parameters; they run on the event loop, so they must be quick. The `Date`
header and the idle timeout of a kept-alive connection are read from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lifeboat.clock import SYSTEM, Clock, within
from lifeboat.errors import InvalidArgument, LifeboatError, NotFound, Unavailable

log = logging.getLogger("lifeboat.monitor.http")

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
IDLE_TIMEOUT = 30.0
SERVER = "lifeboat-monitor"
TEXT = "text/plain; charset=utf-8"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    content_type: str = TEXT
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


Handler = Callable[[Mapping[str, str]], Response]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> Request:
    """The request line and headers (the bytes up to the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise BadRequest(431, "too many header fields")
    url = urllib.parse.urlsplit(target)
    try:
        query = dict(urllib.parse.parse_qsl(url.query, strict_parsing=bool(url.query)))
    except ValueError:
        raise BadRequest(400, f"malformed query {url.query[:100]!r}") from None
    return Request(method, url.path or "/", query, version, headers)


def encode(response: Response, head_only: bool, keep_alive: bool, date: dt.datetime) -> bytes:
    body = response.body.encode("utf-8")
    headers = {
        "Date": email.utils.format_datetime(date, usegmt=True),
        "Server": SERVER,
        "Content-Type": response.content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Connection": "keep-alive" if keep_alive else "close",
        **response.headers,
    }
    status_line = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
    head = status_line + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + (b"" if head_only else body)


def _error_response(error: LifeboatError) -> Response:
    if isinstance(error, InvalidArgument):
        return Response(400, f"{error}\n")
    if isinstance(error, NotFound):
        return Response(404, f"{error}\n")
    if isinstance(error, Unavailable):
        return Response(503, f"{error}\n")
    return Response(500, f"{error}\n")


class HttpServer:
    def __init__(self, listen: str, routes: Mapping[str, Handler], clock: Clock = SYSTEM) -> None:
        self.listen = listen
        self.routes = dict(routes)
        self.clock = clock
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        try:
            self._server = await asyncio.start_server(
                self._connection, host or None, int(port), limit=MAX_HEAD_BYTES
            )
        except OSError as error:
            raise Unavailable(f"cannot listen on {self.listen} (http): {error}") from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("monitor http serving on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether to keep the connection open."""
        try:
            head = await within(self.clock, IDLE_TIMEOUT, reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as error:
            if error.partial.strip():
                await self._send(writer, Response(400, "incomplete request\n"), False, False)
            return False
        except asyncio.LimitOverrunError:
            await self._send(writer, Response(431, "request head too large\n"), False, False)
            return False
        try:
            request = parse_head(head[:-4])
            await self._skip_body(reader, request)
        except BadRequest as error:
            await self._send(writer, Response(error.status, f"{error}\n"), False, False)
            return False
        response = self.respond(request)
        keep_alive = request.keep_alive
        await self._send(writer, response, request.method == "HEAD", keep_alive)
        return keep_alive

    @staticmethod
    async def _skip_body(reader: asyncio.StreamReader, request: Request) -> None:
        if "transfer-encoding" in request.headers:
            raise BadRequest(501, "request bodies are not supported")
        length_text = request.headers.get("content-length", "0")
        if not length_text.isdigit():
            raise BadRequest(400, f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > MAX_HEAD_BYTES:
            raise BadRequest(413, "request body too large")
        if length:
            await reader.readexactly(length)

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool, keep_alive: bool
    ) -> None:
        writer.write(encode(response, head_only, keep_alive, self.clock.now()))
        await writer.drain()

    def respond(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return Response(404, f"no such path {request.path!r}; try {', '.join(self.routes)}\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, "only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
        try:
            return handler(request.query)
        except LifeboatError as error:
            return _error_response(error)
        except Exception as error:
            log.exception("GET %s crashed", request.path)
            return Response(500, f"internal error: {type(error).__name__}: {error}\n")
