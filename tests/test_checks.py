"""Check types in depth against real servers on loopback: HTTP body text, Host header,
HTTPS with and without certificate verification, per-endpoint checks, push-only
heartbeat checks, and the transition history."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import pytest
import trustme
from test_health import HealthServer, wait_for

from gslb.config import load_zone_text, parse_check
from gslb.health import http
from gslb.health.prober import CheckResult, make_session, run_check
from gslb.health.thread import HealthThread
from gslb.model import Endpoint, EndpointRef, HealthCheck
from gslb.registry import Registry

HOST = "127.0.0.41"


class Site:
    """An HTTP(S) server answering every GET with ``body``; remembers Host headers."""

    def __init__(self, body: bytes = b"ok", context: ssl.SSLContext | None = None) -> None:
        self.body = body
        self.hosts: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                owner.hosts.append(self.headers.get("Host"))
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    started: list[Site] = []
    yield started
    for site in started:
        site.stop()


def check(site: Site, **fields: object) -> CheckResult:
    spec = parse_check({"type": "http", "path": "/health", "timeout": 2, **fields})

    async def go() -> CheckResult:
        async with make_session() as session:
            return await run_check(session, spec, EndpointRef("s.", "p", ip_address(HOST),
                                                             site.port))

    return asyncio.run(go())


def test_body_text_must_appear(sites: list[Site]) -> None:
    site = Site(b'{"status": "ok"}')
    sites.append(site)
    passed = check(site, body='"status": "ok"')
    assert (passed.ok, passed.result) == (True, "HTTP 200")
    site.body = b'{"status": "degraded"}'
    failed = check(site, body='"status": "ok"')
    assert not failed.ok
    assert failed.result == "HTTP 200 without '\"status\": \"ok\"' in the body"
    assert check(site).ok  # without a body rule the status decides


def test_host_header(sites: list[Site]) -> None:
    site = Site()
    sites.append(site)
    assert check(site, host="app.example.com").ok
    assert check(site).ok
    assert site.hosts == ["app.example.com", f"{HOST}:{site.port}"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_site(ca: trustme.CA, sites: list[Site]) -> Site:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.example.com").configure_cert(context)
    site = Site(b"ok", context)
    sites.append(site)
    return site


def test_https_without_verification_accepts_any_certificate(
    ca: trustme.CA, sites: list[Site]
) -> None:
    site = tls_site(ca, sites)
    assert check(site, tls=True, tls_verify=False).ok
    assert not check(site).ok  # plain HTTP to a TLS port fails


def test_https_with_verification(ca: trustme.CA, sites: list[Site]) -> None:
    site = tls_site(ca, sites)
    untrusted = check(site, tls=True, host="app.example.com")
    assert not untrusted.ok and "certificate" in untrusted.result.lower(), untrusted
    ca.configure_trust(http._VERIFYING)  # as if the CA were in the system's trust store
    assert check(site, tls=True, host="app.example.com").ok
    wrong_name = check(site, tls=True, host="other.example.com")
    assert not wrong_name.ok and "certificate" in wrong_name.result.lower(), wrong_name
    assert site.hosts[-1] == "app.example.com"


ZONE = """
zone: gslb.example.com
nameservers: {ns1: [127.0.0.1]}
services:
  www:
    check: {type: http, path: /health, interval: 0.2, timeout: 0.2, rise: 1, fall: 1}
    pools:
      main:
        allow: [127.0.0.0/8]
        endpoints:
          - {address: 127.0.0.42, port: PORT1}
          - {address: 127.0.0.43, port: PORT2, check: {path: /deep}}
  push:
    check: {type: heartbeat}
    pools:
      main:
        endpoints: [127.0.0.44]
"""


def test_an_endpoint_check_overrides_the_service_check() -> None:
    first, second = HealthServer("127.0.0.42").start(), HealthServer("127.0.0.43").start()
    try:
        zone = ZONE.replace("PORT1", str(first.port)).replace("PORT2", str(second.port))
        registry = Registry()
        registry.load_zones([load_zone_text(zone, "z.yaml")])
        with HealthThread(registry):
            wait_for(lambda: first.requests >= 2 and second.requests >= 2, 5, "checks")
        assert set(first.paths) == {"/health"}
        assert set(second.paths) == {"/deep"}  # and its interval (0.2) from the service
    finally:
        first.stop()
        second.stop()


def test_a_push_only_service_added_later_gets_its_grace_and_then_expires() -> None:
    """The look for new push-only endpoints runs after a change only: one added to a
    running registry still gets its grace from that look, and goes down after it."""
    now = [100.0]
    registry = Registry(clock=lambda: now[0])
    full = ZONE.replace("PORT1", "1").replace("PORT2", "2")
    without = full[: full.index("  push:")]
    registry.load_zones([load_zone_text(without, "z")])
    assert registry.expire_heartbeats() == []
    now[0] += 10
    assert registry.expire_heartbeats() == []  # nothing changed: nothing to look at
    registry.load_zones([load_zone_text(full, "z")])
    ref = EndpointRef("push.gslb.example.com.", "main", ip_address("127.0.0.44"))
    now[0] += 10
    assert registry.expire_heartbeats() == []  # its grace starts here (t=120)
    now[0] += 14
    assert registry.expire_heartbeats() == []  # 14 s: within the 15 s timeout
    now[0] += 2
    assert registry.expire_heartbeats() == [ref]


def test_heartbeat_checks_are_push_only() -> None:
    now = [100.0]
    registry = Registry(clock=lambda: now[0])
    registry.load_zones([load_zone_text(ZONE.replace("PORT1", "1").replace("PORT2", "2"), "z")])
    ref = EndpointRef("push.gslb.example.com.", "main", ip_address("127.0.0.44"))
    registry.expire_heartbeats()  # grace starts

    def health() -> tuple[bool, bool]:
        view = registry.snapshot.service(ref.service)
        assert view is not None
        (endpoint,) = view.endpoints
        return endpoint.health.up, endpoint.health.confirmed

    assert health() == (True, False)  # up, unconfirmed, within its grace
    now[0] += 16  # past the default heartbeat timeout (15 s) without a heartbeat
    assert registry.expire_heartbeats() == [ref]
    assert health() == (False, False)
    registry.heartbeat(ref.service, "main", ref.address, None, False, None)
    assert health() == (True, True)
    assert registry.notes(ref).check is None  # never probed
    history = [(t.old, t.new) for t in registry.notes(ref).history]
    assert history == [("up", "down"), ("down", "up")]


def test_a_transition_is_logged_once_and_kept_in_history(caplog: pytest.LogCaptureFixture) -> None:
    server = HealthServer("127.0.0.45", status=500).start()
    try:
        registry = Registry()
        registry.load_zones([load_zone_text(ZONE.replace("PORT1", "1").replace("PORT2", "2"),
                                            "z")])
        registry.register("www.gslb.example.com.", "main",
                          Endpoint(ip_address(server.host), server.port,
                                   check=HealthCheck(interval=0.1, timeout=0.1, rise=1, fall=1)))
        ref = EndpointRef("www.gslb.example.com.", "main", ip_address(server.host), server.port)
        with caplog.at_level(logging.WARNING, "gslb.registry"), HealthThread(registry):
            wait_for(lambda: server.requests >= 4, 5, "four failed checks")
        lines = [r.getMessage() for r in caplog.records if str(ref) in r.getMessage()]
        assert lines == [f"endpoint {ref}: up -> down (first check failed: HTTP 500 "
                         "(expected 200-399))"]
        (change,) = registry.notes(ref).history
        assert (change.old, change.new) == ("up", "down")
        assert change.reason.startswith("first check failed")
    finally:
        server.stop()
