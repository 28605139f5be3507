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
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, cast

from gslb.dns import wire
from gslb.dns.cache import DEFAULT_CAPACITY, ResponseCache
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.model import IPAddress
from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.dns")

DEFAULT_TCP_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_TCP_CONNECTIONS = 256
BIND_ATTEMPTS = 8

SourceAddress = tuple[Any, ...] | IPv4Address | IPv6Address


class DnsServer:
    """Answers DNS over UDP and TCP from the snapshot ``snapshots()`` returns at each query."""

    def __init__(
        self,
        snapshots: Callable[[], Snapshot],
        *,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
        max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
        cache_size: int = DEFAULT_CAPACITY,
    ) -> None:
        """``cache_size``: entries of the response cache; 0 turns the cache off."""
        self._snapshots = snapshots
        self.cache = ResponseCache(cache_size) if cache_size > 0 else None
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TcpConnection] = set()

    def respond(self, data: bytes, source_address: SourceAddress, tcp: bool) -> bytes | None:
        """The reply to one DNS message, or ``None`` when it deserves none. Never raises."""
        try:
            snapshot = self._snapshots()
            cache = self.cache
            if cache is not None:
                reply = cache.lookup(data, source_address, tcp, snapshot)
                if reply is not None:
                    return reply
            query = wire.parse_query(data)
            if not isinstance(query, wire.Query):
                return query
            source = _source_ip(source_address)
            ecs = query.client
            client = (
                Client(ecs.address, ecs.source_prefix, source, query.id)
                if ecs is not None
                else Client(source, nonce=query.id)
            )
            qtype = query.rtype if query.rtype is not None else query.question.qtype
            result = answer(snapshot, query.qname, qtype, client, explain=False)
            reply = wire.pack_answer(query, result, tcp)
            if cache is not None:
                cache.store(data, source_address, tcp, snapshot, query.qname, result, reply)
            return reply
        except Exception:
            log.exception("SERVFAIL: query from %s failed", _describe(source_address))
            return wire.servfail(data)

    async def start(self, host: str, port: int) -> int:
        """Listen on UDP and TCP ``host``:``port``; port 0 picks one free for both.

        Returns the port.
        """
        loop = asyncio.get_running_loop()
        attempts = BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
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


def _source_ip(source: SourceAddress) -> IPAddress:
    if isinstance(source, IPv4Address | IPv6Address):
        return source
    return _ip_of_host(source[0])


def _describe(source: object) -> str:
    if isinstance(source, tuple) and len(source) >= 2:
        return f"{source[0]} port {source[1]}"
    return str(source)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not always a DatagramTransport subclass (CPython 3.11's selector transport)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self._server.respond(data, addr, tcp=False)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier replies (port unreachable); nothing to do.
        log.debug("UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    """DNS over TCP (RFC 7766): length-prefixed messages, answered in order as they come."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[Any, ...] = ()
        self._buffer = bytearray()
        self._paused = False
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        server = self._server
        if len(server._connections) >= server.max_tcp_connections:
            log.warning("TCP connection limit (%d) reached", server.max_tcp_connections)
            transport.abort()
            return
        self._transport = transport
        self._peer = transport.get_extra_info("peername") or ()
        server._connections.add(self)
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._timer = loop.call_later(server.tcp_idle_timeout, self._check_idle)

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
            self._last_activity = asyncio.get_running_loop().time()
            reply = self._server.respond(message, self._peer, tcp=True)
            if reply is not None:
                transport.write(len(reply).to_bytes(2, "big") + reply)
            transport = self._transport

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions.
        self._paused = True
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
        idle = loop.time() - self._last_activity
        timeout = self._server.tcp_idle_timeout
        if idle < timeout:
            self._timer = loop.call_later(timeout - idle, self._check_idle)
            return
        self._timer = None
        if transport.get_write_buffer_size():
            transport.abort()  # it stopped reading; a graceful close would wait forever
        else:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
