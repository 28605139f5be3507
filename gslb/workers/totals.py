"""The DNS counters of the worker processes, summed for the control process's ``/metrics``.

This is the one place that knows how ``DnsStats`` adds up: a worker sends
``counters_of(its stats)`` (plain, picklable: its response cache reduced to the hit and
miss counts), and the control process renders ``summed(...)`` of the workers' latest
counters plus those of workers that have since been replaced, so counters never go
backwards when a worker is restarted.
"""

from __future__ import annotations

from collections.abc import Iterable

from gslb.dns.cache import ResponseCache
from gslb.dns.stats import DnsStats


def counters_of(stats: DnsStats) -> DnsStats:
    """A copy of ``stats`` that holds counts only (its cache: hits and misses)."""
    return summed([stats])


def summed(parts: Iterable[DnsStats]) -> DnsStats:
    total = DnsStats(cache=ResponseCache(0))  # a cache of nothing: only its counters
    assert total.cache is not None
    for part in parts:
        total.replies.update(part.replies)
        total.dropped.update(part.dropped)
        total.answers.update(part.answers)
        total.answered.update(part.answered)
        if part.cache is not None:
            total.cache.hits += part.cache.hits
            total.cache.misses += part.cache.misses
        if part.latency_bounds == total.latency_bounds:
            total.latency_counts = [a + b for a, b in zip(total.latency_counts,
                                                          part.latency_counts, strict=True)]
            total.latency_sum += part.latency_sum
    return total
