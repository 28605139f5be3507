"""Prometheus metrics of one GSLB instance, served as ``GET /metrics`` (prometheus-client).

The hot paths keep plain counters that cost no lock and no label lookup (the DNS
server's ``DnsStats``, the registry's transition counts); this module reads them, and
the registry's snapshot, only when Prometheus scrapes. The API's and the prober's own
figures go straight into prometheus-client metrics, which are thread-safe.

    gslb_dns_queries_total{qtype, rcode}        replies sent, by question type and rcode
    gslb_dns_dropped_total{reason}              queries not answered (rrl, malformed, busy)
    gslb_dns_response_seconds                   histogram: datagram in -> reply bytes, for
                                                replies computed in full (not cache hits)
    gslb_dns_cache_hits_total, ..._misses_total response cache
    gslb_answers_total{service, pool}           address answers, by the pool they came from
    gslb_endpoint_answers_total{service, pool, endpoint}
    gslb_endpoint_up{service, pool, endpoint}   1 serving, 0 not
    gslb_health_transitions_total{to}           endpoint state changes
    gslb_health_check_seconds{type}             histogram of successful checks' round trip
    gslb_health_check_failures_total{type}
    gslb_registrations                          endpoints registered through the API
    gslb_api_requests_total{route, method, status}
    gslb_snapshot_generation                    the registry's generation
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gslb.dns.stats import DnsStats, counters_of
from gslb.engine.answer import Rcode
from gslb.model import CheckKind, EndpointRef, HealthCheck, RType, endpoint_label
from gslb.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric of one instance, in its own registry (so tests can run several)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        transitions: Callable[[], dict[str, int]],
        dns: DnsStats | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.dns = dns
        # Where the DNS counters come from at scrape time, read on the event loop: this
        # process's server (its counters have no lock: only the loop may read them), or
        # the worker processes' counters summed (gslb.workers.pool.WorkerPool.collect).
        self.dns_counts: Callable[[], Awaitable[DnsStats | None]] = self._own_counts
        self.api_requests = Counter(
            "gslb_api_requests", "HTTP API requests, by route, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.check_seconds = Histogram(
            "gslb_health_check_seconds", "round trip of successful health checks",
            ["type"], buckets=CHECK_BUCKETS, registry=self.registry,
        )
        self.check_failures = Counter(
            "gslb_health_check_failures", "failed health checks", ["type"], registry=self.registry,
        )
        self._check_seconds: dict[CheckKind, Histogram] = {}  # its children, by check type
        self.registry.register(_Collector(snapshot, transitions))

    async def _own_counts(self) -> DnsStats | None:
        return counters_of(self.dns) if self.dns is not None else None

    def observe_check(self, ref: EndpointRef, check: HealthCheck, ok: bool, rtt: float | None) -> None:
        """The prober's report of one check (called from the health thread)."""
        kind = check.kind
        if ok and rtt is not None:
            seconds = self._check_seconds.get(kind)
            if seconds is None:  # labels() per check would cost more than the check's report
                seconds = self._check_seconds[kind] = self.check_seconds.labels(kind.value)
            seconds.observe(rtt)
        elif not ok:
            self.check_failures.labels(kind.value).inc()

    async def scrape(self) -> bytes:
        """The Prometheus text of every metric; call it on the event loop."""
        dns = await self.dns_counts()
        return await asyncio.to_thread(self.render, dns)

    def render(self, dns: DnsStats | None = None) -> bytes:
        """The text of every metric, with ``dns`` (counters as ``dns_counts`` gives them)."""
        text = generate_latest(self.registry)
        if dns is not None:
            families = CollectorRegistry(auto_describe=False)
            families.register(_DnsCollector(dns))
            text += generate_latest(families)
        return text


class _Collector(Collector):
    """Reads the plain counters and the snapshot at scrape time."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        transitions: Callable[[], dict[str, int]],
    ) -> None:
        self._snapshot = snapshot
        self._transitions = transitions

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        snap = self._snapshot()
        yield GaugeMetricFamily("gslb_snapshot_generation", "the registry's generation",
                                value=snap.generation)
        up = GaugeMetricFamily("gslb_endpoint_up", "1 when the endpoint is being answered",
                               labels=["service", "pool", "endpoint"])
        registered = 0
        for zone in snap.zones.values():
            for name, view in zone.services.items():
                for ep in view.endpoints:
                    up.add_metric([name.rstrip("."), ep.pool.name, ep.endpoint.label],
                                  1.0 if ep.health.serving else 0.0)
                    registered += ep.endpoint.registered
        yield up
        yield GaugeMetricFamily("gslb_registrations", "endpoints registered through the API",
                                value=registered)
        moves = CounterMetricFamily("gslb_health_transitions", "endpoint state changes",
                                    labels=["to"])
        for state, count in sorted(self._transitions().items()):
            moves.add_metric([state], count)
        yield moves


class _DnsCollector(Collector):
    """The DNS front's counters, as read for one scrape."""

    def __init__(self, dns: DnsStats) -> None:
        self._dns = dns

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        return _dns_metrics(self._dns)


def _dns_metrics(dns: DnsStats) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    summary = dns.summary()
    queries = CounterMetricFamily("gslb_dns_queries", "DNS replies sent, by question type and rcode",
                                  labels=["qtype", "rcode"])
    for (qtype, rcode), count in sorted(summary.replies.items()):
        queries.add_metric([RType.name_of(qtype), Rcode.name_of(rcode)], count)
    yield queries
    dropped = CounterMetricFamily("gslb_dns_dropped", "DNS queries not answered, by reason",
                                  labels=["reason"])
    for reason, count in sorted(dns.dropped.items()):
        dropped.add_metric([reason], count)
    yield dropped
    yield CounterMetricFamily("gslb_dns_cache_hits", "replies from the response cache",
                              value=summary.cache_hits)
    yield CounterMetricFamily("gslb_dns_cache_misses", "queries the response cache did not hold",
                              value=summary.cache_misses)
    pools = CounterMetricFamily("gslb_answers", "address answers, by service and pool",
                                labels=["service", "pool"])
    endpoints = CounterMetricFamily("gslb_endpoint_answers", "answers naming each endpoint",
                                    labels=["service", "pool", "endpoint"])
    for (service, pool), count in sorted(summary.answers.items()):
        pools.add_metric([service.rstrip("."), pool], count)
    for (service, pool, address, port), count in sorted(
        summary.answered.items(), key=lambda item: (item[0][0], item[0][1], str(item[0][2]))
    ):
        endpoints.add_metric([service.rstrip("."), pool, endpoint_label(address, port)], count)
    yield pools
    yield endpoints
    histogram = HistogramMetricFamily(
        "gslb_dns_response_seconds",
        "time to compute replies in full, datagram in to reply bytes (cache hits not timed)")
    cumulative, buckets = 0, []
    for bound, count in zip(dns.latency_bounds, dns.latency_counts, strict=False):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", cumulative + dns.latency_counts[-1]))
    histogram.add_metric([], buckets, sum_value=dns.latency_sum)
    yield histogram
