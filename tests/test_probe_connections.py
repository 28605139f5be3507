"""The prober's connections, against real servers on loopback: HTTP checks reuse one
kept-alive connection per endpoint, recover when the endpoint closes it, never reuse one
that timed out or that the endpoint asked to close; TCP checks leave nothing open and
never reach the endpoint's accept queue; and results reach the registry in batches that
publish a snapshot only when answers change.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from test_health import wait_for
from test_tcp_checks import assert_nothing_to_accept, listener

from gslb.config import load_zone_text, parse_check
from gslb.health.http import HttpChecker, HttpTarget, Outcome, Response
from gslb.health.prober import CheckResult, Prober, run_check
from gslb.health.thread import HealthThread
from gslb.model import Endpoint as ModelEndpoint
from gslb.model import EndpointRef
from gslb.registry import CheckReport, Registry

HOST = "127.0.0.91"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Endpoint:
    """A raw HTTP/1.1 server: counts connections and requests; ``delays`` holds seconds
    to wait before answering the request of that number (1-based); ``close_after``
    closes each connection after answering (without saying so); ``say_close`` answers
    with ``Connection: close``."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self.connections = 0
        self.requests = 0
        self.delays: dict[int, float] = {}
        self.close_after = False
        self.say_close = False
        self.close_now = threading.Event()  # close the open connections after their answer
        self.closed = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.connections += 1
                sock: socket.socket = self.request
                sock.settimeout(5)
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        try:
                            data = sock.recv(4096)
                        except OSError:
                            return
                        if not data:
                            return
                        buffer += data
                    _, _, buffer = buffer.partition(b"\r\n\r\n")
                    owner.requests += 1
                    with gauge or contextlib.nullcontext():
                        time.sleep(owner.delays.get(owner.requests, 0))
                    if owner.say_close:
                        sock.sendall(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                        return
                    try:
                        sock.sendall(OK)
                    except OSError:
                        return
                    if owner.close_after:
                        return
                    if owner.close_now.is_set():
                        sock.close()
                        owner.closed.set()
                        return

        self.server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.stop()


def target(server: Endpoint, timeout: float = 1.0, checker: HttpChecker | None = None) -> HttpTarget:
    check = parse_check({"type": "http", "path": "/health", "timeout": timeout})
    return HttpTarget(ip_address(HOST), server.port, check, checker)


def run(coroutine_function: object) -> object:
    return asyncio.run(asyncio.wait_for(coroutine_function, 10))  # type: ignore[arg-type]


def test_checks_reuse_one_kept_connection(endpoint: Endpoint) -> None:
    async def go() -> list[CheckResult]:
        async with HttpChecker() as http:
            where = target(endpoint)
            results = [await run_check(http, where.check, ref(endpoint), where) for _ in range(5)]
            assert http.kept == 1
            return results

    results = run(go())
    assert [r.result for r in results] == ["HTTP 200"] * 5  # type: ignore[attr-defined]
    assert (endpoint.connections, endpoint.requests) == (1, 5)


def test_a_connection_closed_by_the_endpoint_is_retried_once_afresh(endpoint: Endpoint) -> None:
    async def go() -> Outcome:
        async with HttpChecker() as http:
            where = target(endpoint, checker=http)
            endpoint.close_now.set()
            first = await http.get(where)  # answered, then the endpoint closes the connection
            assert first.status == 200
            # waits blocking this loop, so that it has not seen the close when the next
            # check is sent: the write succeeds, the answer is the end of the connection,
            # and the check retries on a new one
            assert endpoint.closed.wait(5)
            endpoint.close_now.clear()
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Outcome] = loop.create_future()
            assert http.send(where, 1.0, done.set_result)
            return await done

    outcome = run(go())
    assert isinstance(outcome, Response) and outcome.status == 200
    assert (endpoint.connections, endpoint.requests) == (2, 2)


def test_connections_the_endpoint_closes_after_each_answer(endpoint: Endpoint) -> None:
    endpoint.close_after = True  # an idle timeout of zero, in effect

    async def go() -> list[CheckResult]:
        async with HttpChecker() as http:
            where = target(endpoint)
            results = []
            for _ in range(4):
                results.append(await run_check(http, where.check, ref(endpoint), where))
                await asyncio.sleep(0.05)  # the close arrives while idle
            return results

    results = run(go())
    assert [r.ok for r in results] == [True] * 4  # type: ignore[attr-defined]
    assert (endpoint.connections, endpoint.requests) == (4, 4)


def test_connection_close_is_honoured(endpoint: Endpoint) -> None:
    endpoint.say_close = True

    async def go() -> list[CheckResult]:
        async with HttpChecker() as http:
            where = target(endpoint)
            results = [await run_check(http, where.check, ref(endpoint), where) for _ in range(3)]
            assert http.kept == 0
            return results

    results = run(go())
    assert [r.ok for r in results] == [True] * 3  # type: ignore[attr-defined]
    assert endpoint.connections == 3


def test_a_slow_answer_on_a_kept_connection_times_out_and_the_connection_is_dropped(
    endpoint: Endpoint,
) -> None:
    endpoint.delays = {2: 0.5}  # the second answer comes after the check's timeout

    async def go() -> list[CheckResult]:
        async with HttpChecker() as http:
            where = target(endpoint, timeout=0.2)
            results = [await run_check(http, where.check, ref(endpoint), where) for _ in range(3)]
            return results

    results = run(go())
    assert [r.result for r in results] == [  # type: ignore[attr-defined]
        "HTTP 200", "timeout after 0.2s", "HTTP 200"]
    # the late answer never counts for a later check: that one came on a new connection
    assert (endpoint.connections, endpoint.requests) == (2, 3)


def ref(server: Endpoint) -> EndpointRef:
    return EndpointRef("s.", "p", ip_address(HOST), server.port)


ZONE = """
zone: gslb.example.com
nameservers: {ns1: [127.0.0.1]}
services:
  www:
    check: {type: KIND, path: /health, interval: 0.1, timeout: 0.1, rise: 1, fall: 1}
    pools:
      main:
        endpoints: ENDPOINTS
"""


def zone(kind: str, ports: list[int]) -> str:
    endpoints = ", ".join(f"{{address: {HOST}, port: {port}}}" for port in ports)
    return ZONE.replace("KIND", kind).replace("ENDPOINTS", f"[{endpoints}]")


def test_steady_checks_publish_no_snapshots(endpoint: Endpoint) -> None:
    """Checks every 0.1 s through the health thread: one connection for all of them,
    and once the first results are in, passing checks change no snapshot."""
    registry = Registry()
    # fall 3: a check slowed past its timeout by a busy machine changes nothing either
    text = zone("http", [endpoint.port]).replace("rise: 1, fall: 1", "rise: 1, fall: 3")
    registry.load_zones([load_zone_text(text, "z.yaml")])
    with HealthThread(registry):
        wait_for(lambda: endpoint.requests >= 3, 5, "the first checks")
        time.sleep(1.1)  # past the registry's delay for confirmations and first RTTs
        generation, requests = registry.generation, endpoint.requests
        wait_for(lambda: endpoint.requests >= requests + 8, 5, "more checks")
        assert registry.generation == generation
    assert endpoint.connections <= endpoint.requests // 4  # one, unless a check timed out
    (view,) = registry.snapshot.service("www.gslb.example.com.").endpoints  # type: ignore[union-attr]
    assert view.health.up and view.health.confirmed and view.health.rtt is not None


def test_tcp_checks_leave_no_connection_behind() -> None:
    listening = listener(HOST, 64)
    port = listening.getsockname()[1]
    try:
        registry = Registry()
        registry.load_zones([load_zone_text(zone("tcp", [port]), "z.yaml")])
        ref = EndpointRef("www.gslb.example.com.", "main", ip_address(HOST), port)
        with HealthThread(registry):
            wait_for(lambda: (note := registry.check_note(ref)) is not None and note.ok, 5,
                     "a passing tcp check")
        note = registry.check_note(ref)
        assert note is not None and note.result == "connected"
        # SYN, SYN-ACK, reset: no check ever reached the listener's accept queue
        assert_nothing_to_accept(listening)
    finally:
        listening.close()


def test_a_batch_of_results_makes_one_snapshot_and_only_when_answers_change() -> None:
    registry = Registry()
    ports = list(range(9001, 9011))
    registry.load_zones([load_zone_text(zone("http", ports), "z.yaml")])
    refs = [EndpointRef("www.gslb.example.com.", "main", ip_address(HOST), p) for p in ports]
    start = registry.generation
    registry.note_checks([CheckReport(r, True, "HTTP 200", 0.001, True, "first check passed")
                          for r in refs])
    assert registry.generation == start + 1  # ten confirmations, one snapshot
    registry.note_checks([CheckReport(r, True, "HTTP 200", 0.009) for r in refs])
    registry.note_checks([CheckReport(r, True, "HTTP 200", 0.002) for r in refs])
    assert registry.generation == start + 1  # RTT jitter of a sticky service: nothing
    assert registry.check_note(refs[0]).rtt == 0.002  # type: ignore[union-attr]
    registry.note_checks([CheckReport(refs[0], False, "HTTP 500", None, False, "1 failed check")])
    assert registry.generation == start + 2  # a transition: at once
    (down, *_) = registry.snapshot.service("www.gslb.example.com.").endpoints  # type: ignore[union-attr]
    assert not down.health.up



class Gauge:
    """Requests being answered at once, across servers, and the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active -= 1


def test_the_concurrency_limit_holds() -> None:
    """Six endpoints that answer after 0.3 s, checked by a prober allowed two at once."""
    gauge = Gauge()
    servers = [Endpoint(gauge) for _ in range(6)]
    try:
        for server in servers:
            server.delays = {n: 0.3 for n in range(1, 100)}
        registry = Registry()
        text = zone("http", [server.port for server in servers])
        registry.load_zones([load_zone_text(text.replace("interval: 0.1, timeout: 0.1",
                                                         "interval: 2, timeout: 1"), "z.yaml")])

        async def go() -> None:
            task = asyncio.create_task(Prober(registry, max_concurrent=2).run())
            while sum(server.requests for server in servers) < 6:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        started = time.monotonic()
        asyncio.run(asyncio.wait_for(go(), 10))
        assert gauge.most == 2
        assert time.monotonic() - started >= 0.55  # the third pair waited for two rounds of 0.3 s
    finally:
        for server in servers:
            server.stop()


def test_late_results_of_removed_endpoints_are_dropped() -> None:
    """A result that arrives after its endpoint went (deregistered, or gone from the
    zone file) leaves no note and no health behind, whether or not the endpoint had a
    note before; the prober's plain tuples count as CheckReports."""
    registry = Registry()
    registry.load_zones([load_zone_text(zone("http", [9001, 9002]), "z.yaml")])
    service = "www.gslb.example.com."
    kept, dropped = (EndpointRef(service, "main", ip_address(HOST), p) for p in (9001, 9002))
    registry.register(service, "main", ModelEndpoint(ip_address("127.0.0.92"), 9003))
    registered = EndpointRef(service, "main", ip_address("127.0.0.92"), 9003)
    noted = registered  # noted before it goes; `never` goes before its first note
    registry.note_checks([(noted, True, "HTTP 200", 0.001, None, "")])
    registry.register(service, "main", ModelEndpoint(ip_address("127.0.0.92"), 9004))
    never = EndpointRef(service, "main", ip_address("127.0.0.92"), 9004)
    registry.note_checks([(dropped, True, "HTTP 200", 0.001, True, "first check passed")])
    assert registry.check_note(noted) is not None and registry.check_note(dropped) is not None

    registry.deregister(service, "main", ip_address("127.0.0.92"), 9003)
    registry.deregister(service, "main", ip_address("127.0.0.92"), 9004)
    registry.load_zones([load_zone_text(zone("http", [9001]), "z.yaml")])
    generation = registry.generation
    registry.note_checks([(ref, False, "HTTP 500", None, False, "1 failed check")
                          for ref in (noted, never, dropped)]
                         + [(kept, True, "HTTP 200", 0.003, None, "")])
    for gone in (noted, never, dropped):
        assert registry.check_note(gone) is None
        assert registry.notes(gone).history == ()
    assert registry.generation == generation  # nothing that answers use changed
    note = registry.check_note(kept)
    assert note is not None and (note.result, note.ok, note.rtt) == ("HTTP 200", True, 0.003)
    # registered again: it starts afresh, as a new endpoint
    registry.register(service, "main", ModelEndpoint(ip_address("127.0.0.92"), 9003))
    assert registry.check_note(noted) is None
    registry.note_checks([CheckReport(noted, True, "HTTP 204", 0.002)])
    note = registry.check_note(noted)
    assert note is not None and note.result == "HTTP 204"


def test_steady_rtts_publish_only_for_a_fastest_service() -> None:
    registry = Registry()
    text = zone("http", [9001])
    registry.load_zones([load_zone_text(text, "z.yaml")])
    fastest = Registry()
    fastest.load_zones([load_zone_text(text.replace("    check:", "    policy: fastest\n    check:"),
                                       "z.yaml")])
    r = EndpointRef("www.gslb.example.com.", "main", ip_address(HOST), 9001)
    for reg in (registry, fastest):
        reg.note_checks([(r, True, "HTTP 200", 0.010, True, "first check passed")])
    moved = {}
    for name, reg in (("sticky", registry), ("fastest", fastest)):
        start = reg.generation
        reg.note_checks([(r, True, "HTTP 200", 0.0101, None, "")])  # jitter: nothing
        reg.note_checks([(r, True, "HTTP 200", 0.030, None, "")])  # moved by 20 ms
        moved[name] = reg.generation - start
        rtt = reg.snapshot.service("www.gslb.example.com.").endpoints[0].health.rtt  # type: ignore[union-attr]
        assert reg.check_note(r).rtt == 0.030  # type: ignore[union-attr]
        assert rtt == (0.030 if name == "fastest" else 0.010)
    assert moved == {"sticky": 0, "fastest": 1}


def test_timeouts_of_checks_over_kept_connections() -> None:
    """Checks sent over kept connections at once, timed by the checker's one sweep: a
    slow answer times out near its deadline, a prompt one is never timed out later,
    and each check hears of its end exactly once."""
    slow, prompt = Endpoint(), Endpoint()
    slow.delays = {2: 0.6}  # the first GET opens and keeps the connection; the second is slow

    async def go() -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        loop = asyncio.get_running_loop()
        heard: dict[str, list[tuple[str, float]]] = {"slow": [], "prompt": []}
        async with HttpChecker() as checker:
            targets = {"slow": target(slow, 0.2, checker), "prompt": target(prompt, 0.2, checker)}
            for t in targets.values():
                await checker.get(t)  # opens and keeps the connection
            started = loop.time()
            for name, t in targets.items():
                def done(outcome: Outcome, name: str = name) -> None:
                    kind = "response" if isinstance(outcome, Response) else type(outcome).__name__
                    heard[name].append((kind, loop.time() - started))
                assert checker.send(t, 0.2, done)
            await asyncio.sleep(0.8)  # past the slow answer too
        return heard["slow"], heard["prompt"]

    try:
        heard_slow, heard_prompt = run(go())  # type: ignore[misc]
    finally:
        slow.stop()
        prompt.stop()
    assert [kind for kind, _ in heard_slow] == ["TimeoutError"]
    assert 0.2 <= heard_slow[0][1] < 0.45
    assert [kind for kind, _ in heard_prompt] == ["response"]
