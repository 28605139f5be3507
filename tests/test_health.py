"""Health checks against real HTTP servers on loopback, through a real registry.

The servers run on 127.0.0.x addresses (Linux routes all of 127/8 to lo) so that each
endpoint has an address of its own in DNS answers. Checks run every 0.2 s; waits are
bounded polls, never fixed sleeps standing in for "long enough".
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import pytest

from gslb.config import load_zone_text
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.health.prober import (
    CheckResult,
    Prober,
    ProbeState,
    Tracker,
    check_port,
    http_url,
    make_session,
    run_check,
)
from gslb.health.thread import HealthThread
from gslb.model import AddressData, CheckKind, Endpoint, EndpointRef, HealthCheck, RType
from gslb.registry import Registry

WWW = "www.gslb.example.com."
TCP = "tcp.gslb.example.com."
STATIC = "static.gslb.example.com."
INTERVAL = 0.2
FALL = 2
RISE = 2

ZONE = """
zone: gslb.example.com
nameservers:
  ns1: [127.0.0.1]
services:
  www:
    check: {type: http, path: CHECK_PATH, interval: 0.2, timeout: 0.2, rise: 2, fall: 2}
    pools:
      primary: {priority: 1, endpoints: []}
      backup: {priority: 2, endpoints: []}
  tcp:
    check: {type: tcp, interval: 0.2, timeout: 0.2, rise: 2, fall: 2}
    pools:
      main: {endpoints: []}
  static:
    check: {type: none}
    pools:
      main: {endpoints: []}
"""


def zone_text(check_path: str = "/health") -> str:
    return ZONE.replace("CHECK_PATH", check_path)


# --- real servers ---------------------------------------------------------------------


class HealthServer:
    """An HTTP server on its own thread that answers every GET with ``status``.

    The standard library's server accepts inside ``serve_forever``, so ``stop()`` leaves
    no connection half-accepted behind (pytest turns such leaks into errors).
    """

    def __init__(self, host: str, port: int = 0, status: int = 200) -> None:
        self.host = host
        self.port = port
        self.status = status
        self.paths: list[str] = []  # every request's path, in order
        self.statuses: list[int] = []  # and the status it was answered with
        self.times: list[float] = []  # and when it came (time.monotonic())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        return len(self.paths)

    def start(self) -> HealthServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                status = owner.status
                owner.times.append(time.monotonic())
                owner.paths.append(self.path.split("?", 1)[0])
                owner.statuses.append(status)
                body = b"ok\n" if status < 400 else b"bad\n"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


ServerFactory = Callable[..., HealthServer]


@pytest.fixture
def servers() -> Iterator[ServerFactory]:
    started: list[HealthServer] = []

    def make(host: str, port: int = 0, status: int = 200) -> HealthServer:
        server = HealthServer(host, port, status).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()  # again for those a test stopped: a no-op


def free_port(host: str) -> int:
    """A port with nothing listening on ``host`` (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def registry() -> Registry:
    reg = Registry(store=None)
    reg.load_zones([load_zone_text(zone_text(), "test.yaml")])
    return reg


@pytest.fixture
def health(registry: Registry) -> Iterator[HealthThread]:
    with HealthThread(registry, heartbeat_period=0.1) as thread:
        yield thread


# --- helpers ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def register(registry: Registry, service: str, pool: str, server: HealthServer) -> EndpointRef:
    registry.register(service, pool, Endpoint(ip_address(server.host), server.port))
    return EndpointRef(service, pool, ip_address(server.host), server.port)


def is_up(registry: Registry, ref: EndpointRef) -> bool:
    view = registry.snapshot.service(ref.service)
    assert view is not None
    for endpoint in view.endpoints:
        if endpoint.pool.name == ref.pool and endpoint.endpoint.key == (ref.address, ref.port):
            return endpoint.health.up
    raise AssertionError(f"no endpoint {ref}")


def answered(registry: Registry) -> list[str]:
    result = answer(registry.snapshot, WWW, RType.A, Client(ip_address("127.0.0.1")))
    addresses = []
    for record in result.answer:
        assert isinstance(record.data, AddressData)
        addresses.append(str(record.data.address))
    return addresses


def note(registry: Registry, ref: EndpointRef) -> str | None:
    found = registry.check_note(ref)
    return None if found is None else found.result


# --- the tracker: rise/fall without time -------------------------------------------------


@pytest.mark.parametrize(
    ("start_up", "results", "states"),
    [
        # a fresh endpoint is up but unconfirmed: its first failure takes it down at once
        (True, [False], ["down"]),
        (True, [True, False, True, False, False], ["up", "up", "up", "up", "down"]),
        # fall=2: two failures in a row, not two in all
        (True, [True, False, False], ["up", "up", "down"]),
        # rise=3: three passes in a row bring it back
        (True, [False, True, True, False, True, True, True], [
            "down", "down", "down", "down", "down", "down", "up"]),
        # known down (from the registry): stays down until it rises
        (False, [True, True, True], ["down", "down", "up"]),
    ],
)
def test_tracker_rise_fall(start_up: bool, results: list[bool], states: list[str]) -> None:
    check = HealthCheck(rise=3, fall=2)
    tracker = Tracker.start(check, start_up)
    seen = []
    for ok in results:
        tracker = tracker.observe(ok)
        seen.append("up" if tracker.up else "down")
    assert seen == states


def test_tracker_reasons() -> None:
    check = HealthCheck(rise=2, fall=3)
    fresh = Tracker.start(check, True)
    assert fresh.state is ProbeState.UNCONFIRMED
    assert fresh.reason(fresh.observe(False), "HTTP 500") == "first check failed: HTTP 500"
    up = fresh.observe(True).observe(False).observe(False)
    assert up.reason(up.observe(False), "connection refused") == (
        "3 failed checks: connection refused"
    )
    down = Tracker.start(check, False).observe(True)
    assert down.reason(down.observe(True), "HTTP 200") == "2 passed checks: HTTP 200"


def test_check_ports_and_urls() -> None:
    http = HealthCheck(kind=CheckKind.HTTP)
    tcp = HealthCheck(kind=CheckKind.TCP)
    assert check_port(http, None) == 80
    assert check_port(http, 8080) == 8080
    assert check_port(HealthCheck(port=9000), 8080) == 9000
    assert check_port(tcp, None) is None
    assert http_url(ip_address("192.0.2.1"), 80, "/health") == "http://192.0.2.1:80/health"
    assert http_url(ip_address("2001:db8::1"), 8080, "/h?x=1") == "http://[2001:db8::1]:8080/h?x=1"


def test_a_check_that_raises_is_a_failure() -> None:
    async def go(check: HealthCheck) -> CheckResult:
        async with make_session() as session:
            return await run_check(session, check, EndpointRef(WWW, "p", ip_address("127.0.0.1")))

    # an impossible port (the config loader forbids it) makes the socket layer raise
    tcp = asyncio.run(go(HealthCheck(kind=CheckKind.TCP, port=70000)))
    assert not tcp.ok
    assert tcp.result.startswith("check error: OverflowError")
    http = asyncio.run(go(HealthCheck(kind=CheckKind.HTTP, port=70000)))
    assert not http.ok
    assert http.result.startswith("check error: OverflowError")


# --- HTTP checks through the health thread ---------------------------------------------


def test_healthy_endpoint_stays_up(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    server = servers("127.0.0.11")
    ref = register(registry, WWW, "primary", server)
    took = wait_for(lambda: server.requests >= 1, 1, "a first check")
    assert took < 0.5  # a new endpoint is checked promptly, not after an interval
    deadline = time.monotonic() + 3 * INTERVAL
    while time.monotonic() < deadline:
        assert is_up(registry, ref)
        time.sleep(0.02)
    assert server.requests >= 3
    assert set(server.paths) == {"/health"}
    found = registry.check_note(ref)
    assert found is not None
    assert (found.ok, found.result) == (True, "HTTP 200")
    assert found.rtt is not None and 0 < found.rtt < INTERVAL
    assert answered(registry) == ["127.0.0.11"]


def test_failing_endpoint_goes_down_at_its_first_check_and_rises(
    registry: Registry,
    health: HealthThread,
    servers: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = servers("127.0.0.12", status=500)
    ref = register(registry, WWW, "primary", server)
    assert is_up(registry, ref)  # answered at once, before any check
    wait_for(lambda: not is_up(registry, ref), 1, "down after the first check")
    assert server.statuses[0] == 500
    assert "up -> down (first check failed: HTTP 500 (expected 200-399))" in caplog.text
    assert note(registry, ref) == "HTTP 500 (expected 200-399)"

    server.status = 200
    wait_for(lambda: is_up(registry, ref), RISE * INTERVAL + 1, "up after rise passes")
    assert server.statuses.count(200) >= RISE
    assert f"down -> up ({RISE} passed checks: HTTP 200)" in caplog.text


def test_dead_endpoint_fails_over_to_the_next_tier_and_comes_back(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    primary = servers("127.0.0.13")
    backup = servers("127.0.0.14")
    ref = register(registry, WWW, "primary", primary)
    backup_ref = register(registry, WWW, "backup", backup)
    wait_for(lambda: primary.requests >= 2 and backup.requests >= 2, 2, "both checked")
    assert answered(registry) == ["127.0.0.13"]

    port = primary.port
    primary.stop()
    wait_for(lambda: not is_up(registry, ref), INTERVAL * FALL + 1, "the dead endpoint down")
    assert note(registry, ref) == "connection refused"
    assert is_up(registry, backup_ref)
    assert answered(registry) == ["127.0.0.14"]

    revived = servers("127.0.0.13", port=port)
    wait_for(lambda: is_up(registry, ref), RISE * INTERVAL + 1, "the endpoint up again")
    assert revived.requests >= RISE
    assert answered(registry) == ["127.0.0.13"]


# --- TCP, none, heartbeats -------------------------------------------------------------


def test_tcp_checks(registry: Registry, health: HealthThread, servers: ServerFactory) -> None:
    listening = register(registry, TCP, "main", servers("127.0.0.21"))
    dead_port = free_port("127.0.0.22")
    registry.register(TCP, "main", Endpoint(ip_address("127.0.0.22"), dead_port))
    dead = EndpointRef(TCP, "main", ip_address("127.0.0.22"), dead_port)
    registry.register(TCP, "main", Endpoint(ip_address("127.0.0.23")))
    portless = EndpointRef(TCP, "main", ip_address("127.0.0.23"))

    wait_for(lambda: not is_up(registry, dead) and not is_up(registry, portless), 1, "both down")
    wait_for(lambda: note(registry, listening) == "connected", 1, "a passing tcp check")
    assert is_up(registry, listening)
    assert note(registry, dead) == "connection refused"
    assert (note(registry, portless) or "").startswith("no port to check")


def test_none_check_is_never_probed(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    static = servers("127.0.0.31")
    ref = register(registry, STATIC, "main", static)
    witness = servers("127.0.0.32")
    register(registry, WWW, "primary", witness)
    wait_for(lambda: witness.requests >= 3, 2, "the prober at work meanwhile")
    assert static.requests == 0
    assert registry.check_note(ref) is None
    assert is_up(registry, ref)


def test_heartbeats_expire_and_revive(registry: Registry, health: HealthThread) -> None:
    address = ip_address("127.0.0.41")
    registry.register(STATIC, "main", Endpoint(address, 8080, heartbeat_timeout=0.5))
    ref = EndpointRef(STATIC, "main", address, 8080)
    assert is_up(registry, ref)  # grace until the first heartbeat is due
    took = wait_for(lambda: not is_up(registry, ref), 2, "down without heartbeats")
    assert took >= 0.4

    registry.heartbeat(STATIC, "main", address, 8080, draining=False, load=None)
    assert is_up(registry, ref)
    wait_for(lambda: not is_up(registry, ref), 2, "down again when heartbeats stop")


# --- following registry changes --------------------------------------------------------


def test_deregistered_endpoint_is_no_longer_probed(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    server = servers("127.0.0.51")
    ref = register(registry, WWW, "primary", server)
    witness = servers("127.0.0.52")
    register(registry, WWW, "backup", witness)
    wait_for(lambda: server.requests >= 2, 2, "checks before deregistering")

    registry.deregister(WWW, "primary", ref.address, ref.port)
    since = witness.requests
    wait_for(lambda: witness.requests >= since + 2, 2, "the prober noticing meanwhile")
    seen = server.requests
    since = witness.requests
    wait_for(lambda: witness.requests >= since + 3, 2, "the prober at work meanwhile")
    assert server.requests == seen
    assert registry.check_note(ref) is None


def test_an_idle_prober_checks_a_new_endpoint_at_once(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    """With nothing due the prober sleeps (up to a second); a registration wakes it."""
    for host in ("127.0.0.71", "127.0.0.72", "127.0.0.73"):
        time.sleep(3 * INTERVAL)  # the last endpoint's stopped schedule has come up: idle
        server = servers(host)
        ref = register(registry, WWW, "primary", server)
        took = wait_for(lambda server=server: server.requests >= 1, 2, f"a first check of {host}")
        assert took < 0.3, took
        registry.deregister(WWW, "primary", ref.address, ref.port)


def test_changed_check_restarts_the_schedule(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    server = servers("127.0.0.61")
    ref = register(registry, WWW, "primary", server)
    wait_for(lambda: "/health" in server.paths, 1, "a check of /health")

    registry.load_zones([load_zone_text(zone_text("/ready"), "test.yaml")])
    wait_for(lambda: "/ready" in server.paths, 1, "a check of the new path")
    time.sleep(0.05)
    count = server.paths.count("/health")
    wait_for(lambda: server.paths.count("/ready") >= 3, 2, "more checks of the new path")
    assert server.paths.count("/health") == count
    assert is_up(registry, ref)


def test_switching_the_check_off_brings_a_down_endpoint_up(
    registry: Registry, health: HealthThread, servers: ServerFactory
) -> None:
    server = servers("127.0.0.71", status=500)
    ref = register(registry, WWW, "primary", server)
    wait_for(lambda: not is_up(registry, ref), 1, "down after the first check")

    registry.load_zones([load_zone_text(zone_text().replace("type: http", "type: none"), "t")])
    wait_for(lambda: is_up(registry, ref), 1, "up with no check")
    time.sleep(0.05)
    count = server.requests
    time.sleep(2 * INTERVAL)
    assert server.requests == count


# --- lifetimes --------------------------------------------------------------------------


def test_health_thread_lifetime(registry: Registry) -> None:
    thread = HealthThread(registry)
    thread.stop()  # before start: nothing to do
    thread.start()
    with pytest.raises(RuntimeError):
        thread.start()
    thread.stop()
    thread.stop()  # twice: nothing to do
    thread.start()  # and again, with a fresh loop
    thread.stop()


def test_prober_run_is_cancelled_cleanly(registry: Registry, servers: ServerFactory) -> None:
    server = servers("127.0.0.81")
    register(registry, WWW, "primary", server)

    async def go() -> None:
        task = asyncio.create_task(Prober(registry).run())
        while server.requests < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(go(), 5))
