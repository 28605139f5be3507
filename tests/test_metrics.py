"""GET /metrics after real traffic: a real ``gslb serve``, real DNS queries (dnspython)
and API requests; each counter moved by exactly what was sent."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_e2e import start_gslb

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    proc, dns_port, api_port = start_gslb(tmp_path / "state.sqlite")
    yield dns_port, api_port
    proc.stop(signal.SIGKILL)


def scrape(api_port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ask(port: int, name: str, rdtype: str) -> int:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2).rcode()


def test_counters_move_by_the_traffic_sent(server: tuple[int, int]) -> None:
    dns_port, api_port = server
    before = scrape(api_port)

    for _ in range(7):
        assert ask(dns_port, "geo.gslb.example.com", "A") == dns.rcode.NOERROR
    for _ in range(3):
        assert ask(dns_port, "nothing-here.gslb.example.com", "AAAA") == dns.rcode.NXDOMAIN
    for _ in range(2):
        assert ask(dns_port, "example.org", "MX") == dns.rcode.REFUSED
    for _ in range(4):
        urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=5).close()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{api_port}/services/nope.gslb.example.com")

    after = scrape(api_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("gslb_dns_queries_total", qtype="A", rcode="NOERROR") == 7
    assert moved("gslb_dns_queries_total", qtype="AAAA", rcode="NXDOMAIN") == 3
    assert moved("gslb_dns_queries_total", qtype="MX", rcode="REFUSED") == 2
    assert moved("gslb_dns_cache_hits_total") + moved("gslb_dns_cache_misses_total") == 12
    # replies computed in full are timed; cache hits are not
    assert moved("gslb_dns_response_seconds_count") == moved("gslb_dns_cache_misses_total")
    # repeats are served from the cache, unless a new snapshot (a health check's news)
    # emptied it in between
    assert moved("gslb_dns_cache_hits_total") >= 1
    assert moved("gslb_api_requests_total", route="/healthz", method="GET", status="200") == 4
    assert moved("gslb_api_requests_total", route="/services/{name}", method="GET",
                 status="404") == 1
    # one scrape before this one, counted once it finished
    assert moved("gslb_api_requests_total", route="/metrics", method="GET", status="200") == 1
    assert value(after, "gslb_endpoint_up", service="geo.gslb.example.com", pool="europe",
                 endpoint="192.0.2.10") == 1
    assert value(after, "gslb_snapshot_generation") >= 1

    # answers by pool and endpoint, hits and misses alike: 7 answers from one pool, each
    # naming one endpoint (the service answers with 1), sticky: always the same one
    def family(name: str, service: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: count - before.get((name, labels), 0.0)
                for (sample, labels), count in after.items()
                if sample == name and ("service", service) in labels}

    pools = {labels: n for labels, n in family("gslb_answers_total", "geo.gslb.example.com").items()
             if n}
    assert list(pools.values()) == [7]
    endpoints = family("gslb_endpoint_answers_total", "geo.gslb.example.com")
    assert sorted(n for n in endpoints.values() if n) == [7]


def test_health_metrics_follow_the_prober(server: tuple[int, int]) -> None:
    # The bundled zone's fastest service probes 127.0.0.41:8041 and .42, where nothing
    # listens here: its checks fail, and the endpoints go down.
    _, api_port = server
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = scrape(api_port)
        if value(samples, "gslb_health_transitions_total", to="down") >= 2:
            break
        time.sleep(0.2)
    assert value(samples, "gslb_health_check_failures_total", type="http") >= 2
    for address in ("127.0.0.41:8041", "127.0.0.42:8041"):
        assert value(samples, "gslb_endpoint_up", service="fastest.gslb.example.com",
                     pool="main", endpoint=address) == 0
