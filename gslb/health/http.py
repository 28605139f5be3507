"""HTTP/1.1 checks over kept-alive connections: one GET, its status and the start of its body.

A general HTTP client costs several hundred microseconds of CPU per request, and a fresh
connection per check a hundred more; a prober checking thousands of endpoints a second
keeps one connection per endpoint open and sends each check over it, as production
probers do. ``httptools`` (llhttp, in C) parses the responses.

Connections are kept while the endpoint allows (HTTP/1.1 keep-alive, no ``Connection:
close``) and for at most ``MAX_AGE`` seconds, so that a listener that stopped accepting
new connections while serving its old ones, or a renewed certificate, is noticed within
that time. A kept connection that the endpoint closed while idle is retried once on a
fresh connection, as HTTP clients do for idempotent requests. A check that fails for any
reason closes its connection: the next one starts afresh.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import quote

import httptools

from gslb.model import HealthCheck, IPAddress

USER_AGENT = "gslb-prober/0.1"
MAX_BODY = 64 * 1024  # bytes of a response searched for the check's ``body`` text
MAX_AGE = 30.0  # seconds a connection is reused before the next check opens a new one

_VERIFYING = ssl.create_default_context()
_ANY_CERTIFICATE = ssl.create_default_context()
_ANY_CERTIFICATE.check_hostname = False
_ANY_CERTIFICATE.verify_mode = ssl.CERT_NONE


class ClosedError(ConnectionError):
    """The endpoint closed the connection without a response."""

    def __init__(self) -> None:
        super().__init__("connection closed without a response")


class BadResponseError(ValueError):
    """The endpoint's answer is not HTTP."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes  # at most MAX_BODY bytes, and only when asked for
    keep_alive: bool


def request_bytes(address: IPAddress, port: int, check: HealthCheck) -> bytes:
    """The GET a check sends: its path, its Host header (else ``ADDRESS:PORT``)."""
    host = check.host
    if host is None:
        host = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    path = quote(check.path, safe="/?&=%:@!$'()*+,;~-._#[]")
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n\r\n").encode("ascii", "replace")


def tls_context(check: HealthCheck) -> ssl.SSLContext | None:
    """The TLS setting of a check: verify against the system's CAs, or accept any."""
    if not check.tls:
        return None
    return _VERIFYING if check.tls_verify else _ANY_CERTIFICATE


class _Exchange(asyncio.Protocol):
    """One connection: sends a request when asked, parses the response into a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kept: set[_Exchange]) -> None:
        self._loop = loop
        self._kept = kept  # the checker's kept connections: leave it when closed
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.opened = loop.time()
        self.closed = False
        self._waiter: asyncio.Future[Response] | None = None
        self._want_body = False
        self._body = bytearray()
        self._status = 0  # of the response being read; 0: headers not complete yet
        self._got_bytes = False

    # --- asked by HttpChecker ---

    def request(self, data: bytes, want_body: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = waiter = self._loop.create_future()
        self._want_body = want_body
        self._body.clear()
        self._status = 0
        self._got_bytes = False
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        self._kept.discard(self)
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponseError(f"not an HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._kept.discard(self)
        if self._waiter is not None and not self._waiter.done():
            if self._status:  # a body delimited by the end of the connection
                self._finish(keep_alive=False)
            elif exc is not None:
                self._waiter.set_exception(exc)
            else:
                self._waiter.set_exception(ClosedError())

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    # --- httptools callbacks ---

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self._want_body:
            return
        room = MAX_BODY - len(self._body)
        self._body += body[:room]
        if len(self._body) >= MAX_BODY:  # enough to judge; the rest is not read
            self._finish(keep_alive=False)

    def on_message_complete(self) -> None:
        if self._status < 200:  # 1xx: the final response follows
            self._status = 0
            return
        self._finish(self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, bytes(self._body), keep_alive))
        if not keep_alive:
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()


class HttpTarget:
    """One endpoint's HTTP check: its request, made once, and its kept connection."""

    __slots__ = ("host", "port", "check", "request", "exchange")

    def __init__(self, address: IPAddress, port: int, check: HealthCheck) -> None:
        self.host = str(address)
        self.port = port
        self.check = check
        self.request = request_bytes(address, port, check)
        self.exchange: _Exchange | None = None  # kept from the last check, if any


class HttpChecker:
    """Sends checks' GETs, keeping at most ``keep`` idle connections for the next ones.

    Use as ``async with HttpChecker() as http:``; leaving closes every kept connection.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._kept: set[_Exchange] = set()

    async def __aenter__(self) -> HttpChecker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for exchange in list(self._kept):
            exchange.close()

    @property
    def kept(self) -> int:
        """How many connections are kept for the next checks."""
        return len(self._kept)

    def forget(self, target: HttpTarget) -> None:
        """Close the target's kept connection: it will not be checked again."""
        if target.exchange is not None:
            target.exchange.close()
            target.exchange = None

    async def get(self, target: HttpTarget) -> Response:
        """GET the target's path; raises OSError, TimeoutError (the caller bounds the
        time), ssl.SSLError or BadResponseError."""
        loop = asyncio.get_running_loop()
        exchange, target.exchange = target.exchange, None
        want_body = target.check.body is not None
        if exchange is not None:
            self._kept.discard(exchange)
            if exchange.closed or loop.time() - exchange.opened > MAX_AGE:
                exchange.close()
            else:
                try:
                    response = await self._exchange(exchange, target.request, want_body)
                except (ClosedError, ConnectionResetError, BrokenPipeError):
                    if exchange.got_bytes:
                        raise
                    # closed by the endpoint while idle: once more, on a fresh connection
                else:
                    self._keep_or_close(target, exchange, response)
                    return response
        exchange = await self._connect(loop, target)
        response = await self._exchange(exchange, target.request, want_body)
        self._keep_or_close(target, exchange, response)
        return response

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: HttpTarget) -> _Exchange:
        check = target.check
        context = tls_context(check)
        if context is None:
            server_hostname = None
        elif check.tls_verify:
            server_hostname = check.host  # None: the address itself is verified
        else:
            server_hostname = check.host or ""  # "": no SNI, no name to match
        _, exchange = await loop.create_connection(
            lambda: _Exchange(loop, self._kept), target.host, target.port, ssl=context,
            server_hostname=server_hostname,
        )
        return exchange

    @staticmethod
    async def _exchange(exchange: _Exchange, data: bytes, want_body: bool) -> Response:
        try:
            return await exchange.request(data, want_body)
        except BaseException:  # timeout, cancelled, error: the connection's state is unknown
            exchange.close()
            raise

    def _keep_or_close(self, target: HttpTarget, exchange: _Exchange, response: Response) -> None:
        if response.keep_alive and not exchange.closed and len(self._kept) < self._keep:
            if target.exchange is not None:  # a concurrent check of the same target
                target.exchange.close()
            target.exchange = exchange
            self._kept.add(exchange)
        else:
            exchange.close()
