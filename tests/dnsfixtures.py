"""A realistic zone and a real DnsServer on port 0 in a background thread, for DNS tests."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from gslb.config import load_zone_text
from gslb.dns.server import DnsServer
from gslb.model import EndpointRef, Health, Zone
from gslb.snapshot import EndpointView, ServiceView, Snapshot, make_zone_view

APEX = "gslb.example.com."
SERIAL = 2024010101
DOWN = IPv4Address("192.0.2.12")  # the one endpoint the prober reports down

BIG_TXT = [f"big-{i:02d}-" + "x" * 40 for i in range(16)]  # ~1 kB: over 512, under 1232
HUGE_TXT = [f"huge-{i:02d}-" + "y" * 60 for i in range(40)]  # ~2.8 kB: over 1232


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


ZONE_TEXT = f"""
zone: gslb.example.com
ttl: 3600
soa:
  primary: ns1
  contact: hostmaster@example.com
  ttl: 3600
  minimum: 30
nameservers:
  ns1: [192.0.2.53]
  ns2: [192.0.2.54, "2001:db8::54"]
records:
  "@":
    TXT: "v=spf1 -all"
    MX: "10 mail"
  mail:
    ttl: 600
    A: 192.0.2.25
  alias:
    CNAME: mail
  app:
    CNAME: www
  docs:
    CNAME: docs.example.org.
  a.b:
    A: 192.0.2.99
  big:
    TXT: {_yaml_list(BIG_TXT)}
  huge:
    TXT: {_yaml_list(HUGE_TXT)}
services:
  www:
    ttl: 20
    answers: 2
    check: {{type: none}}
    pools:
      eu-west:
        priority: 1
        endpoints:
          - address: 192.0.2.10
          - address: 192.0.2.11
            weight: 50
          - address: 192.0.2.12
      us-east:
        priority: 2
        endpoints:
          - address: 198.51.100.10
"""


def make_zone() -> Zone:
    return load_zone_text(ZONE_TEXT, "test-zone.yaml")


def make_snapshot(zone: Zone | None = None) -> Snapshot:
    zone = zone or make_zone()
    services = {
        service.name: ServiceView(
            service,
            tuple(
                EndpointView(
                    pool, endpoint, Health(probe_up=endpoint.address != DOWN),
                    EndpointRef(service.name, pool.name, endpoint.address, endpoint.port),
                )
                for pool in service.pools
                for endpoint in pool.endpoints
            ),
        )
        for service in zone.services
    }
    return Snapshot(generation=1, zones={zone.apex: make_zone_view(zone, SERIAL, services)})


class ServerThread:
    """A DnsServer serving in its own thread and event loop."""

    def __init__(
        self,
        snapshots: Callable[[], Snapshot],
        host: str = "127.0.0.1",
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        **options: Any,
    ) -> None:
        self.server = DnsServer(
            snapshots, tcp_idle_timeout=tcp_idle_timeout, max_tcp_connections=max_tcp_connections,
            **options,
        )
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dns-server")

    def __enter__(self) -> ServerThread:
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self.server.start(self.host, 0), self._loop)
            self.port = future.result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._stop_loop()

    async def _close(self) -> None:
        await self.server.close()
        await asyncio.sleep(0.05)  # let transports finish closing their sockets

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def raw_udp(port: int, data: bytes, timeout: float = 2.0, host: str = "127.0.0.1") -> bytes | None:
    """Send one datagram; the reply, or None when none came within ``timeout``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, (host, port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def tcp_frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)
