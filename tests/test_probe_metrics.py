"""The check metrics kept as plain numbers give the text prometheus-client's own
Histogram and Counter give for the same checks (``gslb.metrics.CheckFigures``)."""

from __future__ import annotations

import ipaddress
import random
import re
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gslb.metrics import CHECK_BUCKETS, Metrics
from gslb.model import CheckKind, EndpointRef, HealthCheck
from gslb.registry import Registry

REF = EndpointRef("www.gslb.example.com.", "main", ipaddress.ip_address("192.0.2.1"), 80)


def _created(text: bytes) -> tuple[str, list[float]]:
    """The text with the ``_created`` times taken out, and those times."""
    pattern = re.compile(r'(_created\{type="\w+"\}) (\S+)')
    times = [float(m.group(2)) for m in pattern.finditer(text.decode())]
    return pattern.sub(r"\1 T", text.decode()), times


def test_check_figures_read_as_prometheus_client_metrics() -> None:
    registry = Registry()
    metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)
    reference = CollectorRegistry(auto_describe=True)
    seconds = Histogram("gslb_health_check_seconds", "round trip of successful health checks",
                        ["type"], buckets=CHECK_BUCKETS, registry=reference)
    failures = Counter("gslb_health_check_failures", "failed health checks", ["type"],
                       registry=reference)
    rng = random.Random(7)
    # TCP first, HTTP's first failure before its first success: children keep that order;
    # bucket bounds exactly, 0, beyond the last bound, and a success without a round trip
    for kind in (CheckKind.TCP, CheckKind.HTTP):
        check = HealthCheck(kind=kind)
        for i in range(3000):
            draw = rng.random()
            if draw < 0.1 or (kind is CheckKind.HTTP and i == 0):
                metrics.observe_check(REF, check, False, None)
                failures.labels(kind.value).inc()
                continue
            rtt = rng.choice((*CHECK_BUCKETS, 0.0, 7.5)) if draw < 0.3 else rng.expovariate(20)
            metrics.observe_check(REF, check, True, rtt)
            seconds.labels(kind.value).observe(rtt)
        metrics.observe_check(REF, check, True, None)  # counts nowhere
    ours, ours_created = _created(metrics.render())
    theirs, _ = _created(generate_latest(reference))
    # ours holds the other families too; the check families come first, in theirs' order
    assert ours.startswith("# HELP gslb_api_requests_total") and theirs in ours
    assert 'gslb_health_check_seconds_bucket{le="+Inf",type="tcp"}' in theirs
    assert len(ours_created) == 4  # a time for each child: seconds and failures, tcp and http
    assert all(abs(t - ours_created[0]) < 60 for t in ours_created)


def test_check_figures_scraped_while_checks_are_observed() -> None:
    # A scrape on another thread while the health thread observes: no error, and counts
    # that only grow.
    registry = Registry()
    metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)
    check = HealthCheck(kind=CheckKind.TCP)
    stop = threading.Event()

    def observe() -> None:
        n = 0
        while not stop.is_set() and n < 2_000_000:
            metrics.observe_check(REF, check, n % 7 != 0, 0.001 * (n % 5))
            n += 1

    thread = threading.Thread(target=observe)
    thread.start()
    try:
        last = -1.0
        for _ in range(50):
            text = metrics.render().decode()
            found = re.search(r'gslb_health_check_seconds_count\{type="tcp"\} (\S+)', text)
            count = float(found.group(1)) if found else 0.0
            assert count >= last
            last = count
    finally:
        stop.set()
        thread.join()
    assert last > 0
