"""What the DNS front counts, as plain integers: bumped on the query path without a
lock or a label lookup (the event loop is the only writer), read by ``gslb.metrics``
when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from gslb.dns.cache import ResponseCache

# Upper bounds (seconds) of the response-time histogram: a cached reply takes a few
# microseconds, a cold one tens, a slow one (GC pause, huge answer) milliseconds.
LATENCY_BOUNDS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)


@dataclass(slots=True)
class DnsStats:
    replies: Counter[tuple[int, int]] = field(default_factory=Counter)  # (qtype, rcode)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> queries
    cache: ResponseCache | None = None  # its own hits and misses
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, pool)
    answered: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + endpoint
    latency_bounds: tuple[float, ...] = LATENCY_BOUNDS
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect_left(self.latency_bounds, seconds)] += 1
        self.latency_sum += seconds
