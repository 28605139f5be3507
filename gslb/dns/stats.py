"""What the DNS front counts, as plain integers: bumped on the query path without a
lock or a label lookup (the event loop is the only writer), read by ``gslb.metrics``
and the API when they ask.

A reply is counted as a ``Tally``: its question type, its rcode and the endpoints its
addresses came from. A reply computed in full is counted at once; a reply from the
response cache only bumps its cache entry's hit count, which the cache folds into
its own tallies when asked (``ResponseCache.fold``): so a cache hit costs one integer
increment, and still counts by type, rcode, service, pool and endpoint.

The response-time histogram times the replies computed in full (cache misses and
uncacheable answers). Cache hits are not timed: the two clock reads would cost a
fifth of a hit, and a hit's time is a dictionary lookup (``benchmarks/respond.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from gslb.dns.cache import ResponseCache
from gslb.model import EndpointRef

# Upper bounds (seconds) of the response-time histogram: a cold reply takes tens of
# microseconds, a slow one (GC pause, huge answer) milliseconds.
LATENCY_BOUNDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)

# (service, pool, address, port): an endpoint an answer named, as metrics and the API show it
EndpointKey = tuple[str, str, IPv4Address | IPv6Address, int | None]
# (qtype, rcode, endpoints the answer's addresses came from). Endpoints as EndpointRef,
# whose hash is computed once: an address's own hash is Python code, and a reply
# computed in full hashes its tally twice.
Tally = tuple[int, int, tuple[EndpointRef, ...]]


@dataclass(slots=True)
class DnsStats:
    tallies: Counter[Tally] = field(default_factory=Counter)  # other stats' replies, summed in
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> queries
    cache: ResponseCache | None = None  # the hits it served, with their tallies
    # hits and misses of caches not attached (the counts of workers, summed)
    cache_hits: int = 0
    cache_misses: int = 0
    latency_bounds: tuple[float, ...] = LATENCY_BOUNDS
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0
    # count()'s replies by tally: [the shared copy of the tally, replies]
    counted: dict[Tally, list[Any]] = field(default_factory=dict, repr=False, compare=False)

    def count(self, tally: Tally) -> Tally:
        """Count one reply computed in full; returns the one shared copy of ``tally``
        (replies with the same tally are many, and the cache keeps one per entry).
        One dictionary lookup: a tally's hash is recomputed at each."""
        cell = self.counted.get(tally)
        if cell is None:
            cell = self.counted[tally] = [tally, 0]
        cell[1] += 1
        shared: Tally = cell[0]
        return shared

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect_left(self.latency_bounds, seconds)] += 1
        self.latency_sum += seconds

    def totals(self) -> Counter[Tally]:
        """Every reply so far, computed or from the cache, by tally."""
        totals = Counter(self.tallies)
        for tally, replies in self.counted.values():
            totals[tally] += replies
        if self.cache is not None:
            totals.update(self.cache.fold())
        return totals

    def summary(self) -> StatsSummary:
        """The counts by the labels metrics and the API show."""
        summary = StatsSummary()
        for (qtype, rcode, endpoints), count in self.totals().items():
            summary.replies[(qtype, rcode)] += count
            pools = set()
            for ref in endpoints:
                summary.answered[(ref.service, ref.pool, ref.address, ref.port)] += count
                pools.add((ref.service, ref.pool))
            for key in pools:
                summary.answers[key] += count
        summary.cache_hits = self.cache_hits
        summary.cache_misses = self.cache_misses
        if self.cache is not None:
            summary.cache_hits += self.cache.hits
            summary.cache_misses += self.cache.misses
        return summary


def counters_of(stats: DnsStats) -> DnsStats:
    """A copy of ``stats`` with counts only (no cache attached): picklable, and safe to
    read in another thread or process. Call it where ``stats`` is written."""
    return summed([stats])


def summed(parts: Iterable[DnsStats]) -> DnsStats:
    """The counts of several servers' stats together (the workers')."""
    total = DnsStats()
    for part in parts:
        total.tallies.update(part.totals())
        total.dropped.update(part.dropped)
        total.cache_hits += part.cache_hits
        total.cache_misses += part.cache_misses
        if part.cache is not None:
            total.cache_hits += part.cache.hits
            total.cache_misses += part.cache.misses
        if part.latency_bounds == total.latency_bounds:
            total.latency_counts = [a + b for a, b in zip(total.latency_counts,
                                                          part.latency_counts, strict=True)]
            total.latency_sum += part.latency_sum
    return total


@dataclass(slots=True)
class StatsSummary:
    replies: Counter[tuple[int, int]] = field(default_factory=Counter)  # (qtype, rcode)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, pool)
    answered: Counter[EndpointKey] = field(default_factory=Counter)  # per endpoint
    cache_hits: int = 0
    cache_misses: int = 0
