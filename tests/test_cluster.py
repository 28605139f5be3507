"""Two ``gslb serve`` instances on one real redis-server, as the zone's two nameservers:
the README's "Several instances" section, end to end, with ``dig``, real endpoint
processes and the bundled zones/example.yaml."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network

import dns.edns
import dns.message
import dns.query
import pytest

from tests.redisfixtures import RedisServer, redis_server
from tests.test_e2e import GSLB, ROOT, Process, dig, free_port, post, start_endpoint

__all__ = ["redis_server"]  # the fixture, used by name

EU = ("127.0.0.11", "127.0.0.12")
US = ("127.0.0.21",)
WWW = "www.gslb.example.com"
GEO = "geo.gslb.example.com"
NOTICE = 0.2  # seconds: a change through one instance reaches the other's answers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Instance:
    def __init__(self, redis_url: str, *extra: str) -> None:
        self.proc = Process.start(
            [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
             "--state", redis_url, "--zones", str(ROOT / "zones"), *extra],
            r"serving \d+ zone",
        )
        self.dns = int(self.proc.find(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
        self.api = int(self.proc.find(r"api listening on http://127\.0\.0\.1:(\d+)").group(1))

    def www(self) -> set[str]:
        """The addresses ``dig`` gets for the www service."""
        result = dig(self.dns, WWW, "A")
        assert result.status == "NOERROR" and "aa" in result.flags
        return {rr[4] for rr in result.rrs("ANSWER", "A")}

    def answers(self, name: str = WWW) -> set[str]:
        """The addresses in the answer, through dnspython: quick enough to poll each
        millisecond (a ``dig`` process takes tens of milliseconds to start)."""
        query = dns.message.make_query(name, "A")
        reply = dns.query.udp(query, "127.0.0.1", port=self.dns, timeout=2)
        return {item.address for rrset in reply.answer for item in rrset}

    def query(self, name: str, subnet: IPv4Network | None = None, rtype: str = "A") -> str:
        """The answer (records and ECS scope) as text, through dnspython."""
        options = [] if subnet is None else [
            dns.edns.ECSOption(str(subnet.network_address), subnet.prefixlen)]
        query = dns.message.make_query(name, rtype, use_edns=0, options=options)
        reply = dns.query.udp(query, "127.0.0.1", port=self.dns, timeout=2)
        scopes = [o.scopelen for o in reply.options if isinstance(o, dns.edns.ECSOption)]
        return f"{dns.rcode.to_text(reply.rcode())} {sorted(map(str, reply.answer))} {scopes}"

    def get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}{path}", timeout=5) as r:
            return json.load(r)  # type: ignore[no-any-return]

    def registered(self) -> set[str]:
        service = self.get(f"/services/{WWW}")
        return {e["address"] for pool in service["pools"] for e in pool["endpoints"]}  # type: ignore[attr-defined,index]


def wait_for(condition: Callable[[], bool], deadline: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.005)
    return time.monotonic() - started


def post_status(api: int, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    try:
        return post(api, path, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture
def procs() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for proc in started:
        proc.stop(signal.SIGKILL)


def start(procs: list[Process], redis_url: str) -> Instance:
    instance = Instance(redis_url)
    procs.append(instance.proc)
    return instance


def test_two_instances_one_truth(redis_server: RedisServer, procs: list[Process]) -> None:
    a, b = start(procs, redis_server.url), start(procs, redis_server.url)
    port = free_port(EU + US)
    endpoints = {address: start_endpoint(address, port) for address in EU + US}
    procs.extend(endpoints.values())

    # register through A: answered by B within 200 ms of A's acknowledgement
    took, total = [], []
    for address in EU + US:
        pool = "eu-west" if address in EU else "us-east"
        started = time.monotonic()
        status, body = post(a.api, "/register", {
            "service": WWW, "pool": pool, "address": address, "port": port,
            "heartbeat_timeout": 3600})
        assert status == 201, body
        if pool == "eu-west":
            took.append(wait_for(lambda address=address: address in b.answers(), 2,  # type: ignore[misc]
                                 f"{address} on B"))
        else:
            took.append(wait_for(lambda: "127.0.0.21" in b.registered(), 2, "us-east on B"))
        total.append(time.monotonic() - started)
    print("register on A -> answered by B, after A's answer: "
          f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms; "
          f"with the request: {', '.join(f'{t * 1000:.0f}' for t in total)} ms")
    assert max(took) < NOTICE
    wait_for(lambda: a.www() == b.www() == set(EU), 5, "both answer eu-west")

    # drain on B (the endpoint says so in a heartbeat): effective on A
    status, body = post(b.api, "/heartbeat", {
        "service": WWW, "address": EU[0], "port": port, "status": "draining"})
    assert status == 200, body
    drained = wait_for(lambda: a.answers() == {EU[1]}, 2, "drained on A")
    print(f"drain through B -> effective on A: {drained * 1000:.0f} ms")
    assert drained < NOTICE and a.www() == {EU[1]}
    post(b.api, "/heartbeat", {"service": WWW, "address": EU[0], "port": port, "status": "alive"})
    wait_for(lambda: a.www() == b.www() == set(EU), 2, "undrained on A")

    # kill eu-west: both fail over to us-east (both probers agree: the quorum of 2)
    for address in EU:
        endpoints[address].stop(signal.SIGKILL)
    took_fail = wait_for(lambda: a.www() == b.www() == set(US), 5, "both fail over")
    print(f"both failed over in {took_fail:.2f} s")
    for address in EU:
        endpoints[address] = start_endpoint(address, port)
        procs.append(endpoints[address])
    wait_for(lambda: a.www() == b.www() == set(EU), 5, "both back on eu-west")

    # restart Redis: writes fail with 503 meanwhile, answers go on, nothing is lost
    redis_server.stop()
    wait_for(lambda: a.get("/healthz")["status"] == b.get("/healthz")["status"] == "degraded",
             5, "both report the outage")
    store = b.get("/healthz")["store"]
    assert isinstance(store, dict) and store["kind"] == "redis" and store["ok"] is False
    assert store["error"]
    status, body = post_status(a.api, "/register", {
        "service": WWW, "pool": "us-east", "address": "127.0.0.23", "port": port})
    assert status == 503 and "nothing was changed" in str(body["error"])
    status, body = post_status(b.api, "/heartbeat", {
        "service": WWW, "address": EU[1], "port": port, "status": "alive"})
    assert status == 503 and "this instance only" in str(body["error"])
    assert a.www() == b.www() == set(EU)
    redis_server.start()
    wait_for(lambda: a.get("/healthz")["status"] == b.get("/healthz")["status"] == "ok",
             10, "both resync")
    assert a.registered() == b.registered() == set(EU + US)  # acknowledged: kept
    status, _ = post(b.api, "/register", {
        "service": WWW, "pool": "us-east", "address": "127.0.0.22", "port": port})
    assert status == 201
    wait_for(lambda: "127.0.0.22" in a.registered(), NOTICE, "registered through B, on A")

    # kill instance A: B keeps answering, and decides health alone once A's verdicts age
    a.proc.stop(signal.SIGKILL)
    assert all(b.www() == set(EU) for _ in range(20))
    for address in EU:
        endpoints[address].stop(signal.SIGKILL)
    took_alone = wait_for(lambda: b.www() == {"127.0.0.21"}, 12, "B fails over alone")
    print(f"B alone failed over in {took_alone:.2f} s")


def test_same_subnets_same_answers(redis_server: RedisServer, procs: list[Process]) -> None:
    a, b = start(procs, redis_server.url), start(procs, redis_server.url)
    # registrations (not probed: no heartbeat or check traffic needed) make the ring larger
    for i in range(1, 9):
        status, _ = post(b.api, "/register", {
            "service": WWW, "pool": "us-east", "address": f"198.51.100.{100 + i}",
            "weight": 50 * i})
        assert status == 201
    wait_for(lambda: len(a.registered()) == 8, 2, "registrations on A")
    # a registration and the serial it bumps reach the store in two writes: A may see the
    # one before the other, and agrees once it has read both
    wait_for(lambda: a.query("gslb.example.com", rtype="SOA") == b.query("gslb.example.com", rtype="SOA"),
             2, "the same SOA serial on A and B")

    rng = random.Random(7)
    known = [IPv4Network(n) for n in ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")]
    subnets = known + [
        IPv4Network((rng.getrandbits(24) << 8, 24)) for _ in range(10_000 - len(known))]
    queries = []
    for i, subnet in enumerate(subnets):
        query = dns.message.make_query(GEO, "A", use_edns=0, options=[
            dns.edns.ECSOption(str(subnet.network_address), 24)])
        query.id = i % 65536
        queries.append(query.to_wire())
    started = time.monotonic()
    from_a, from_b = ask_all(a.dns, queries), ask_all(b.dns, queries)
    elapsed = time.monotonic() - started
    # the same query (same ID) gets the very same reply bytes from either instance
    differ = [subnets[i] for i in range(len(subnets)) if from_a[i] != from_b[i]]
    print(f"{len(subnets)} subnets, 2 instances: {len(differ)} replies differ ({elapsed:.1f} s)")
    assert differ == []
    answers = {str(dns.message.from_wire(reply).answer) for reply in from_a[:300]}
    assert len(answers) >= 4  # the subnets really spread over the endpoints


def ask_all(port: int, queries: list[bytes], window: int = 64) -> list[bytes]:
    """Each query's reply over UDP, ``window`` queries in flight at once; a query that
    got no reply within a second is sent again (at most three times)."""
    replies: list[bytes | None] = [None] * len(queries)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(1.0)
        for first in range(0, len(queries), window):
            batch = range(first, min(first + window, len(queries)))
            for _ in range(3):
                waiting = {queries[i][:2]: i for i in batch if replies[i] is None}
                if not waiting:
                    break
                for i in waiting.values():
                    sock.send(queries[i])
                with contextlib.suppress(TimeoutError):
                    while waiting:
                        reply = sock.recv(4096)
                        i = waiting.pop(reply[:2], -1)
                        if i >= 0:
                            replies[i] = reply
    missing = [i for i, reply in enumerate(replies) if reply is None]
    assert not missing, f"{len(missing)} queries got no reply"
    return [reply for reply in replies if reply is not None]
