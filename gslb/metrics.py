"""Prometheus metrics of one GSLB instance, served as ``GET /metrics`` (prometheus-client).

The hot paths keep plain counters that cost no lock and no label lookup (the DNS
server's ``DnsStats``, the registry's transition counts, the prober's check figures
here, ``CheckFigures``); this module reads them, and the registry's snapshot, only when
Prometheus scrapes. The API's own figures go straight into prometheus-client metrics,
which are thread-safe.

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
import bisect
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gslb.dns.stats import DnsStats, counters_of
from gslb.engine.answer import Rcode
from gslb.model import CheckKind, EndpointRef, HealthCheck, RType, endpoint_label
from gslb.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_CHECK_LE = (*map(repr, CHECK_BUCKETS), "+Inf")  # the buckets' labels, as prometheus-client's


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
        self.checks = CheckFigures()
        self.registry.register(self.checks)
        # the prober's report of each check (from the health thread): straight to the
        # figures, without a call in between (thousands a second)
        self.observe_check: Callable[[EndpointRef, HealthCheck, bool, float | None], None] = (
            self.checks.observe_check)
        self.registry.register(_Collector(snapshot, transitions))

    async def _own_counts(self) -> DnsStats | None:
        return counters_of(self.dns) if self.dns is not None else None

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


class _KindFigures:
    """The check figures of one check type."""

    __slots__ = ("kind", "buckets", "sum", "failures", "timed", "failed")

    def __init__(self, kind: CheckKind) -> None:
        self.kind = kind
        self.buckets = [0] * (len(CHECK_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.sum = 0.0
        self.failures = 0
        self.timed = 0.0  # when the first round trip, failure was observed (0: not yet)
        self.failed = 0.0


class CheckFigures(Collector):
    """``gslb_health_check_seconds`` and ``gslb_health_check_failures_total`` as plain
    numbers: the health thread adds to them thousands of times a second, where a
    prometheus-client histogram costs two locks and a bucket search in Python per check
    (2-3 µs, a tenth of a check's whole cost in the prober). Only that thread writes; a
    scrape reads them on another thread, so a histogram's buckets and sum may be read a
    few checks apart, as prometheus-client's own are (a lock each). The output is the
    one prometheus-client gives: children in the order they were first observed, each
    with its ``_created`` time.
    """

    def __init__(self) -> None:
        # by the check type's id(): an enum member's own hash is computed in Python
        self._of = {id(kind): _KindFigures(kind) for kind in CheckKind}
        # in the order first observed: lists, so that a scrape can read them as they grow
        self._timed: list[_KindFigures] = []
        self._failed: list[_KindFigures] = []

    def observe_check(self, ref: EndpointRef, check: HealthCheck, ok: bool, rtt: float | None) -> None:
        """The prober's report of one check (called from the health thread)."""
        figures = self._of[id(check.kind)]
        if ok:
            if rtt is None:
                return
            # the first bound >= rtt: a bucket's bound is inclusive (le)
            figures.buckets[bisect.bisect_left(CHECK_BUCKETS, rtt)] += 1
            figures.sum += rtt
            if not figures.timed:
                figures.timed = time.time()
                self._timed.append(figures)
        else:
            figures.failures += 1
            if not figures.failed:
                figures.failed = time.time()
                self._failed.append(figures)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        name = "gslb_health_check_seconds"
        seconds = HistogramMetricFamily(name, "round trip of successful health checks",
                                        labels=["type"])
        for figures in list(self._timed):
            cumulative, buckets = 0, []
            for le, count in zip(_CHECK_LE, figures.buckets, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            kind = figures.kind.value
            seconds.add_metric([kind], buckets, sum_value=figures.sum)
            seconds.samples.append(Sample(f"{name}_created", {"type": kind}, figures.timed))
        yield seconds
        failures = CounterMetricFamily("gslb_health_check_failures", "failed health checks",
                                       labels=["type"])
        for figures in list(self._failed):
            failures.add_metric([figures.kind.value], figures.failures, created=figures.failed)
        yield failures


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
