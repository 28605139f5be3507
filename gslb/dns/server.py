"""The DNS listeners: UDP and TCP on one port, each query answered from the current snapshot.

``DnsServer.respond`` is the whole datagram-to-reply path and is synchronous; the
asyncio protocols only move bytes. Replies come from the response cache
(``gslb.dns.cache``) when it holds one for the current snapshot, else from the full
parser, the answer engine and the packer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from time import perf_counter
from typing import Any, cast

from gslb.dns import wire
from gslb.dns.cache import DEFAULT_CAPACITY, ResponseCache
from gslb.dns.querylog import QueryLog
from gslb.dns.rrl import ResponseRateLimiter
from gslb.dns.stats import DnsStats
from gslb.dns.udp import BatchedUdp, UdpListener, UdpProtocol
from gslb.dns.udp import batching_available as udp_batching_available
from gslb.engine.answer import Answer, answer
from gslb.engine.context import Client
from gslb.model import EndpointRef, IPAddress
from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.dns")

DEFAULT_TCP_IDLE_TIMEOUT = 10.0  # Knot's tcp-idle-timeout: between messages
DEFAULT_TCP_READ_TIMEOUT = 0.5  # Knot's tcp-io-timeout: a started message must arrive whole
DEFAULT_MAX_TCP_CONNECTIONS = 256
BIND_ATTEMPTS = 8
LIMIT_LOG_PERIOD = 10.0  # seconds between warnings that the TCP connection limit was hit

SourceAddress = tuple[Any, ...] | IPv4Address | IPv6Address


class DnsServer:
    """Answers DNS over UDP and TCP from the snapshot ``snapshots()`` returns at each query."""

    def __init__(
        self,
        snapshots: Callable[[], Snapshot],
        *,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
        tcp_read_timeout: float = DEFAULT_TCP_READ_TIMEOUT,
        max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
        rrl: ResponseRateLimiter | None = None,
        cache_size: int = DEFAULT_CAPACITY,
        query_log: QueryLog | None = None,
        udp_batch: bool = True,
    ) -> None:
        """``cache_size``: entries of the response cache; 0 turns the cache off.
        ``query_log``: writes a line for the queries it samples. ``udp_batch``: read and
        answer UDP in batches where the system has ``recvmmsg`` (``gslb.dns.udp``)."""
        self._snapshots = snapshots
        self.cache = ResponseCache(cache_size) if cache_size > 0 else None
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_read_timeout = min(tcp_read_timeout, tcp_idle_timeout)
        self.max_tcp_connections = max_tcp_connections
        self.rrl = rrl
        self.stats = DnsStats(cache=self.cache)
        self.query_log = query_log
        self.udp_batch = udp_batch
        self._udp: UdpListener | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TcpConnection] = set()
        self._limit_logged = -LIMIT_LOG_PERIOD

    def respond(self, data: bytes, source_address: SourceAddress, tcp: bool) -> bytes | None:
        """The reply to one DNS message, or ``None`` when it deserves none. Never raises."""
        query_log = self.query_log
        if query_log is not None and query_log.sample():
            return self._logged(data, source_address, tcp)
        try:
            snapshot = self._snapshots()
            cache = self.cache
            if cache is not None:
                reply = cache.lookup(data, source_address, tcp, snapshot)
                if reply is not None:
                    return reply  # counted on its cache entry
        except Exception:
            return self._failed(data, source_address)
        started = perf_counter()  # after the cache: hits are not timed (see gslb.dns.stats)
        reply = self._compute(data, source_address, tcp, snapshot)[0]
        self.stats.observe(perf_counter() - started)
        return reply

    def answer_datagram(self, data: bytes, source_address: tuple[Any, ...]) -> bytes | None:
        """The reply to a UDP datagram: ``respond``, then the rate limiter's say."""
        reply = self.respond(data, source_address, False)
        rrl = self.rrl
        if reply is not None and rrl is not None:
            reply = rrl.limit(reply, _ip_of_host(source_address[0]))
            if reply is None:
                self.stats.dropped["rate limit"] += 1
        return reply

    def _compute(
        self, data: bytes, source_address: SourceAddress, tcp: bool, snapshot: Snapshot
    ) -> tuple[bytes | None, wire.Query | None, Answer | None]:
        """The full path: parse, answer, pack, count, and keep in the cache if it may be."""
        stats = self.stats
        query: wire.Query | bytes | None = None
        try:
            query = wire.parse_query(data)
            if not isinstance(query, wire.Query):
                if query is None:
                    stats.dropped["not a query"] += 1
                else:
                    stats.count((_question_type(data), query[3] & 0x0F, ()))
                return query, None, None
            source = (  # a socket's address tuple, or an address given in process
                _ip_of_host(source_address[0]) if isinstance(source_address, tuple) else source_address
            )
            edns = query.edns
            subnet = edns.subnet if edns is not None else None
            if subnet is not None:  # the parser's client, completed: one fewer per query
                client = subnet.client
                client.resolver, client.nonce = source, query.id
            else:
                client = Client(source, nonce=query.id)
            qtype = query.rtype if query.rtype is not None else query.question.qtype
            result = answer(snapshot, query.qname, qtype, client, explain=False)
            reply = wire.pack_answer(query, result, tcp)
            tally = stats.count((query.question.qtype, reply[3] & 0x0F, _endpoint_refs(result)))
            cache = self.cache
            if cache is not None:
                cache.store(data, source_address, tcp, snapshot, query.qname, result, reply, tally)
            return reply, query, result
        except Exception:
            return self._failed(data, source_address), (
                query if isinstance(query, wire.Query) else None), None

    def _failed(self, data: bytes, source_address: SourceAddress) -> bytes | None:
        """SERVFAIL for a query that raised: logged once, counted."""
        log.exception("SERVFAIL: query from %s failed", _describe(source_address))
        reply = wire.servfail(data)
        if reply is not None:
            self.stats.count((_question_type(data), reply[3] & 0x0F, ()))
        return reply

    def _logged(self, data: bytes, source_address: SourceAddress, tcp: bool) -> bytes | None:
        """The full path for a sampled query, with its log line (the cache's reply would
        be the same bytes: the cache keeps only what the full path gives)."""
        started = perf_counter()
        try:
            snapshot = self._snapshots()
        except Exception:
            return self._failed(data, source_address)
        reply, query, result = self._compute(data, source_address, tcp, snapshot)
        elapsed = perf_counter() - started
        self.stats.observe(elapsed)
        assert self.query_log is not None
        self.query_log.write(_describe(source_address), tcp, query, result, reply, elapsed)
        return reply

    async def start(self, host: str, port: int) -> int:
        """Listen on UDP and TCP ``host``:``port``; port 0 picks one free for both.

        Returns the port.
        """
        loop = asyncio.get_running_loop()
        attempts = BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            udp = await self._listen_udp(loop, host, port)
            bound: int = udp.get_extra_info("sockname")[1]
            try:
                tcp = await loop.create_server(lambda: _TcpConnection(self), host, bound)
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue  # the UDP port's TCP twin is taken: try another port
            self._udp, self._tcp = udp, tcp
            return bound
        raise AssertionError("unreachable")

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer on sockets bound elsewhere (a worker's share of a SO_REUSEPORT group);
        ``tcp`` is listening already."""
        loop = asyncio.get_running_loop()
        if self._batching():
            self._udp = BatchedUdp(udp, self.answer_datagram, self.stats.dropped, loop)
        else:
            self._udp, _ = await loop.create_datagram_endpoint(self._udp_protocol, sock=udp)
        self._tcp = await loop.create_server(lambda: _TcpConnection(self), sock=tcp)

    async def _listen_udp(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> BatchedUdp | asyncio.DatagramTransport:
        if not self._batching():
            transport, _ = await loop.create_datagram_endpoint(
                self._udp_protocol, local_addr=(host, port)
            )
            return transport
        family, kind, proto, _, address = (await loop.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        ))[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return BatchedUdp(sock, self.answer_datagram, self.stats.dropped, loop)

    def _batching(self) -> bool:
        return self.udp_batch and udp_batching_available()

    def _udp_protocol(self) -> UdpProtocol:
        return UdpProtocol(self.answer_datagram, self.stats.dropped)

    async def close(self) -> None:
        """Stop listening and drop every TCP connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self._connections):
                connection.abort()
            await self._tcp.wait_closed()
            self._tcp = None


@functools.lru_cache(maxsize=65536)
def _ip_of_host(host: str) -> IPAddress:
    address = ip_address(host.partition("%")[0])  # no IPv6 zone index in a client
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's IPv4 client
    return address


def _question_type(data: bytes) -> int:
    """The question's type, found the cheap way: after the name's final zero (or 0)."""
    end = data.find(0, 12)
    return data[end + 1] << 8 | data[end + 2] if 0 < end < len(data) - 2 else 0


def _endpoint_refs(result: Answer) -> tuple[EndpointRef, ...]:
    chosen = result.chosen
    if len(chosen) == 1:
        return (chosen[0].ref,)
    return tuple(view.ref for view in chosen)


def _describe(source: object) -> str:
    if isinstance(source, tuple) and len(source) >= 2:
        return f"{source[0]} port {source[1]}"
    return str(source)


class _TcpConnection(asyncio.Protocol):
    """DNS over TCP (RFC 7766): length-prefixed messages, answered in order as they come.

    A connection is closed when no message arrived for the idle timeout, or when a
    message it started has not arrived whole within the read timeout (a byte-at-a-time
    sender), or when a message is too short to hold a DNS header. When the connection
    limit is reached, a newcomer takes the place of the oldest connection that never
    sent a whole message, else of the one idle the longest if that has been idle for
    the read timeout at least; otherwise the newcomer is turned away. So silent or slow
    clients cannot keep others out, and busy ones are not cut off.
    """

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[Any, ...] = ()
        self._buffer = bytearray()
        self._paused = False
        self._last_activity = 0.0  # when the last whole message arrived (or the connection)
        self._answered = False  # whether a whole message ever arrived
        self._partial_since: float | None = None  # when an incomplete message began
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        server = self._server
        loop = asyncio.get_running_loop()
        now = loop.time()
        if len(server._connections) >= server.max_tcp_connections:
            idlest = min(server._connections, key=_TcpConnection.eviction_order, default=None)
            if idlest is None or (
                idlest._answered and now - idlest._last_activity < server.tcp_read_timeout
            ):
                if now - server._limit_logged >= LIMIT_LOG_PERIOD:  # not once per refusal
                    server._limit_logged = now
                    log.warning("TCP connection limit (%d) reached", server.max_tcp_connections)
                transport.abort()
                return
            idlest.abort()
            server._connections.discard(idlest)
        self._transport = transport
        self._peer = transport.get_extra_info("peername") or ()
        server._connections.add(self)
        self._last_activity = now
        self._timer = loop.call_at(now + server.tcp_idle_timeout, self._check_idle)

    def eviction_order(self) -> tuple[bool, float]:
        """Connections that never sent a whole message go first, then the idlest."""
        return self._answered, self._last_activity

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        buffer = self._buffer
        transport = self._transport
        while transport is not None and not self._paused and len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            if length < 12:  # no DNS header: not a DNS client; nothing to answer it with
                transport.abort()
                break
            self._last_activity = asyncio.get_running_loop().time()
            self._answered = True
            self._partial_since = None
            reply = self._server.respond(message, self._peer, tcp=True)
            if reply is not None:
                transport.write(len(reply).to_bytes(2, "big") + reply)
            transport = self._transport
        if buffer and not self._paused and self._partial_since is None and transport is not None:
            # a message has begun: it gets the read timeout, not the idle one
            loop = asyncio.get_running_loop()
            self._partial_since = loop.time()
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(
                self._partial_since + self._server.tcp_read_timeout, self._check_idle
            )

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions. Until it
        # reads again only the idle timeout applies.
        self._paused = True
        self._partial_since = None
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            self._answer_buffered()

    def _check_idle(self) -> None:
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        if self._partial_since is not None:
            deadline = self._partial_since + self._server.tcp_read_timeout
        else:
            deadline = self._last_activity + self._server.tcp_idle_timeout
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check_idle)
            return
        self._timer = None
        if transport.get_write_buffer_size():
            transport.abort()  # it stopped reading; a graceful close would wait forever
        else:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
