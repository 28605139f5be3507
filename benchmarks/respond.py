"""Server CPU per query of the whole datagram -> reply function, in-process, no sockets.

    .venv/bin/python benchmarks/respond.py [--subnets 100000] [--passes 3]

Times ``DnsServer.respond()`` on the bundled zone and GeoIP database:

- hot: the same question again and again, with the response cache and without it;
- cold: the first query from each of ``--subnets`` distinct ECS /24s for the ``geo``
  service (GeoIP lookup, selection chain, packing, storing in the cache), each pass
  with a fresh server and a freshly opened GeoIP database, so nothing is warm.

Prints the median of ``--passes`` passes per case and the ratios. Bounded: at most
``--subnets`` queries per pass and case.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
from interpreter import describe

from gslb.config import load_zones
from gslb.dns.server import DnsServer
from gslb.geoip import GeoDatabase
from gslb.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ("127.0.0.1", 5000)
HOT_QUERIES = 50_000


def query(name: str, ecs: str | None = None, qid: int = 1) -> bytes:
    options = [dns.edns.ECSOption(ecs, 24)] if ecs else None
    message = dns.message.make_query(name, "A", use_edns=0, options=options)
    message.id = qid
    return message.to_wire()


def distinct_subnets(count: int) -> list[str]:
    """``count`` distinct /24s spread over the IPv4 space (an odd multiplier is a bijection)."""
    numbers = ((i * 2654435761) % (1 << 24) for i in range(count))
    return [f"{n >> 16}.{n >> 8 & 255}.{n & 255}.0" for n in numbers]


def make_registry() -> Registry:
    registry = Registry()
    registry.load_zones(load_zones(ROOT / "zones"))
    registry.set_locator(GeoDatabase.open(ROOT / "data" / "gslb-geo.mmdb"))
    return registry


def per_query_us(server: DnsServer, queries: list[bytes]) -> float:
    respond = server.respond
    start = time.process_time()  # CPU time: less disturbed by other processes than wall time
    for data in queries:
        respond(data, SOURCE, False)
    return (time.process_time() - start) / len(queries) * 1e6


def median_of(passes: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    figures = [run() for _ in range(passes)]
    return statistics.median(figures), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=100_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    registry = make_registry()
    hot = {
        "static A (mail)": [query("mail.gslb.example.com", qid=i & 0xFFFF) for i in range(HOT_QUERIES)],
        "service geo, ECS, same /24": [
            query("geo.gslb.example.com", "198.51.100.0", qid=i & 0xFFFF) for i in range(HOT_QUERIES)
        ],
    }
    print(f"{describe()}\n")
    print(f"hot path: {HOT_QUERIES:,} queries per pass, median of {args.passes} passes (µs per query)")
    print("| case | cache on | cache off | off ÷ on |")
    print("|---|---:|---:|---:|")
    for name, queries in hot.items():
        on_server = DnsServer(lambda: registry.snapshot)
        off_server = DnsServer(lambda: registry.snapshot, cache_size=0)
        on, _ = median_of(args.passes, lambda s=on_server, q=queries: per_query_us(s, q))  # type: ignore[misc]
        off, _ = median_of(args.passes, lambda s=off_server, q=queries: per_query_us(s, q))  # type: ignore[misc]
        print(f"| {name} | {on:.2f} | {off:.1f} | {off / on:.0f} |")

    cold_queries = [query("geo.gslb.example.com", subnet) for subnet in distinct_subnets(args.subnets)]

    def cold() -> float:
        fresh = make_registry()  # a freshly opened GeoIP database: its lookup cache is empty
        server = DnsServer(lambda: fresh.snapshot, cache_size=max(65_536, args.subnets))
        figure = per_query_us(server, cold_queries)
        assert server.cache is not None and server.cache.hits == 0
        return figure

    median, figures = median_of(args.passes, cold)
    print()
    print(f"cold path: the first query from each of {args.subnets:,} distinct ECS /24s "
          f"(service geo): median {median:.1f} µs per answer; passes: "
          + ", ".join(f"{f:.1f}" for f in figures))


if __name__ == "__main__":
    main()
