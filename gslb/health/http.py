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

A check's timeout comes from one sweep for all of them (``gslb.health.sweep``), not a
timer per check.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple, cast
from urllib.parse import quote

import httptools

from gslb.health.sweep import TimeoutSweep
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


class Response(NamedTuple):
    """A check's response (a tuple: one is made per check, thousands a second)."""

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


Outcome = Response | BaseException  # what an exchange ends with
Done = Callable[[Outcome], None]


class _Exchange(asyncio.Protocol):
    """One connection: sends a request when asked, parses the response, and calls back
    with it (or with the error: a timeout, the connection closing, a malformed reply)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: HttpChecker) -> None:
        self._loop = loop
        self._owner = owner
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.opened = loop.time()
        self.closed = False
        self._done: Done | None = None
        self.tick = 0  # the owner's sweep that times the exchange out; 0: none
        self._want_body = False
        self._body = bytearray()
        self._status = 0  # of the response being read; 0: headers not complete yet
        self.got_bytes = False

    def send(self, data: bytes, want_body: bool, done: Done, timeout: float | None) -> None:
        """Send ``data``; ``done`` is called once, with the response or the error."""
        assert self.transport is not None
        self._done = done
        self._want_body = want_body
        self._body.clear()
        self._status = 0
        self.got_bytes = False
        if timeout is not None:
            self._owner._arm(self, timeout)
        self.transport.write(data)

    def request(self, data: bytes, want_body: bool) -> asyncio.Future[Response]:
        """``send`` for coroutines: the response as a future (the caller bounds the time)."""
        waiter: asyncio.Future[Response] = self._loop.create_future()

        def settle(outcome: Outcome) -> None:
            if waiter.done():
                return
            if isinstance(outcome, Response):
                waiter.set_result(outcome)
            else:
                waiter.set_exception(outcome)

        self.send(data, want_body, settle, None)
        return waiter

    def close(self) -> None:
        self.closed = True
        self._owner._kept.discard(self)
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._owner._open.add(self)

    def data_received(self, data: bytes) -> None:
        if self._done is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponseError(f"not an HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._owner._kept.discard(self)
        self._owner._open.discard(self)
        if self._done is not None:
            if self._status:  # a body delimited by the end of the connection
                self._finish(keep_alive=False)
            else:
                self._fail(exc if exc is not None else ClosedError())

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

    # --- the end of an exchange ---

    def time_out(self) -> None:
        """The owner's sweep found it past its timeout."""
        self.tick = 0
        self._fail(TimeoutError())

    def _finish(self, keep_alive: bool) -> None:
        done = self._end()
        if not keep_alive:
            self.close()
        if done is not None:
            done(Response(self._status, bytes(self._body) if self._want_body else b"", keep_alive))

    def _fail(self, exc: BaseException) -> None:
        done = self._end()
        self.close()  # its state is unknown: never reused
        if done is not None:
            done(exc)

    def _end(self) -> Done | None:
        done, self._done = self._done, None
        if self.tick:
            self._owner._disarm(self)
        return done


class HttpTarget:
    """One endpoint's HTTP check: its request, made once, and its kept connection."""

    __slots__ = ("host", "port", "check", "request", "exchange", "pending", "answered")

    def __init__(
        self, address: IPAddress, port: int, check: HealthCheck, checker: HttpChecker | None = None
    ) -> None:
        self.host = str(address)
        self.port = port
        self.check = check
        self.request = request_bytes(address, port, check)
        self.exchange: _Exchange | None = None  # kept from the last check, if any
        # the check under way (HttpChecker.send): connection, start, timeout, callback
        self.pending: tuple[_Exchange, float, float, Done] | None = None
        self.answered: Done = _unanswerable
        if checker is not None:
            self.answered = functools.partial(checker._answered, self)  # once, not per check


class HttpChecker:
    """Sends checks' GETs, keeping at most ``keep`` idle connections for the next ones.

    ``send`` is the fast path: a GET over a kept connection, with a callback and no
    coroutine; ``get`` (a coroutine) also connects. Use as ``async with HttpChecker() as
    http:``; leaving closes every connection.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._kept: set[_Exchange] = set()  # idle, for the next check of their target
        self._open: set[_Exchange] = set()  # every connection, idle or not
        self._retries: set[asyncio.Task[None]] = set()
        self._closing = False
        self._timeouts: TimeoutSweep[_Exchange] | None = None  # made on the first check's loop

    async def __aenter__(self) -> HttpChecker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True  # connections closed now are not retried
        retries = list(self._retries)
        for task in retries:
            task.cancel()
        await asyncio.gather(*retries, return_exceptions=True)
        self.close()
        await asyncio.sleep(0)  # let the transports finish closing

    def close(self) -> None:
        for exchange in list(self._open):
            exchange.close()
        if self._timeouts is not None:
            self._timeouts.close()

    def _arm(self, exchange: _Exchange, timeout: float) -> None:
        """Time ``exchange`` out after ``timeout`` seconds, unless it ends before."""
        sweep = self._timeouts
        if sweep is None:
            sweep = self._timeouts = TimeoutSweep(exchange._loop, _Exchange.time_out)
        exchange.tick = sweep.arm(exchange, timeout)

    def _disarm(self, exchange: _Exchange) -> None:
        tick, exchange.tick = exchange.tick, 0
        if self._timeouts is not None:
            self._timeouts.disarm(exchange, tick)

    @property
    def kept(self) -> int:
        """How many connections are kept for the next checks."""
        return len(self._kept)

    def forget(self, target: HttpTarget) -> None:
        """Close the target's kept connection: it will not be checked again."""
        if target.exchange is not None:
            target.exchange.close()
            target.exchange = None

    def send(self, target: HttpTarget, timeout: float, done: Done) -> bool:
        """GET over the target's kept connection and call ``done`` with the response or
        the error (TimeoutError after ``timeout``). False, and nothing sent, when the
        target has no usable kept connection: use ``get``."""
        exchange, target.exchange = target.exchange, None
        if exchange is None:
            return False
        self._kept.discard(exchange)
        started = exchange._loop.time()
        if exchange.closed or started - exchange.opened > MAX_AGE:
            exchange.close()
            return False
        # what the answer needs, kept on the target rather than in a closure per check
        target.pending = (exchange, started, timeout, done)
        exchange.send(target.request, target.check.body is not None, target.answered, timeout)
        return True

    def _answered(self, target: HttpTarget, outcome: Outcome) -> None:
        """The end of ``send``: keep the connection, or retry a stale one, and report."""
        pending, target.pending = target.pending, None
        if pending is None:
            return
        exchange, started, timeout, done = pending
        if isinstance(outcome, Response):
            self._keep_or_close(target, exchange, outcome)
        elif _stale(outcome, exchange) and not self._closing:
            # closed by the endpoint while idle: once more, on a fresh connection
            loop = exchange._loop
            task = loop.create_task(self._retry(target, timeout - (loop.time() - started), done))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        done(outcome)

    async def _retry(self, target: HttpTarget, timeout: float, done: Done) -> None:
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                outcome: Outcome = await self.get(target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = exc
        done(outcome)

    async def get(self, target: HttpTarget) -> Response:
        """GET the target's path, over its kept connection or a new one; raises OSError,
        TimeoutError (the caller bounds the time), ssl.SSLError or BadResponseError."""
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
                except (ClosedError, ConnectionResetError, BrokenPipeError) as exc:
                    if not _stale(exc, exchange):
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
            lambda: _Exchange(loop, self), target.host, target.port, ssl=context,
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


def _unanswerable(outcome: Outcome) -> None:
    raise RuntimeError("HttpChecker.send needs an HttpTarget made with its checker")


def _stale(outcome: BaseException, exchange: _Exchange) -> bool:
    """Whether a kept connection failed only because the endpoint had closed it."""
    return isinstance(outcome, ClosedError | ConnectionResetError | BrokenPipeError) and (
        not exchange.got_bytes)
