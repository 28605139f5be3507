"""Memory, change cost and answer time as the configuration grows, in-process.

    .venv/bin/python benchmarks/scale.py [--baseline DIR]

For 1, 100 and 1,000 services of 10 endpoints each (10, 1,000 and 10,000 endpoints;
three geo pools per service, the bundled GeoIP database), each size in its own child
process so that its memory is its own, prints:

- resident memory after loading and after answering;
- the cost of one change, median and max of 40 (CPU ms, until the new snapshot is
  published): a registration (each to another service) and a health transition (the
  prober's verdict down, then up);
- the DNS path's cost per answer: the first pass over the services (builds their hash
  rings), new subnets (a second pass from other subnets: the per-subnet cost alone),
  from the response cache, and the first pass after a change to one service (the
  change empties the response cache; every service answers from its engine again).

For instruction counts (noise-free on a shared machine), ``--size N --register K`` only
loads N services and makes K registrations; run it under callgrind with K = 0 and with
K = 200 (and ``PYTHONHASHSEED=0``): the difference over K is one registration's cost.

``--baseline DIR`` runs the same sizes with the ``gslb`` package of another checkout
(say ``git archive`` of an older commit unpacked in DIR) right after each size, so the
two rows compare in one run. Bounded: 20,000 queries per pass, 80 changes per size.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import dns.edns
import dns.message

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 100, 1000)
QUERIES = 20_000
CHANGES = 40


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def zone_text(services: int) -> str:
    lines = ["zone: scale.example", "nameservers: {ns1: [127.0.0.1]}", "services:"]
    for s in range(services):
        lines += [
            f"  s{s}:",
            "    check: {type: none}",
            "    pools:",
            f"      eu: {{continents: [EU], location: {{lat: 50.1, lon: 8.7}}, endpoints: "
            f"[{', '.join(str(IPv4Address(0x0A000000 + s * 16 + i)) for i in range(4))}]}}",
            f"      us: {{continents: [NA], location: {{lat: 39.0, lon: -77.5}}, endpoints: "
            f"[{', '.join(str(IPv4Address(0x0B000000 + s * 16 + i)) for i in range(3))}]}}",
            f"      ap: {{continents: [AS], location: {{lat: 1.35, lon: 103.8}}, endpoints: "
            f"[{', '.join(str(IPv4Address(0x0C000000 + s * 16 + i)) for i in range(3))}]}}",
        ]
    return "\n".join(lines) + "\n"


def query(name: str, subnet: str, qid: int) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)])
    message.id = qid
    return message.to_wire()


def one_size(services: int) -> str:
    from gslb.config import load_zone_text
    from gslb.dns.server import DnsServer
    from gslb.geoip import GeoDatabase
    from gslb.model import Endpoint, EndpointRef
    from gslb.registry import Registry

    logging.disable(logging.WARNING)  # the health changes' log lines
    before = rss_mb()
    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(services), "scale.yaml")])
    registry.set_locator(GeoDatabase.open(ROOT / "data" / "gslb-geo.mmdb"))
    loaded = rss_mb()

    def timed(change: object) -> float:
        begin = time.process_time()
        change()  # type: ignore[operator]
        return (time.process_time() - begin) * 1e3

    registrations = [
        timed(lambda i=i: registry.register(
            f"s{i * 7919 % services}.scale.example", "eu",
            Endpoint(IPv4Address(0x0AFF0000 + i))))
        for i in range(CHANGES)
    ]
    health = []
    for i in range(CHANGES):
        s = i // 2 * 7919 % services
        ref = EndpointRef(f"s{s}.scale.example.", "us", IPv4Address(0x0B000000 + s * 16))
        health.append(timed(lambda ref=ref, up=i % 2 == 1: registry.set_probe_state(
            ref, up, "benchmark")))

    server = DnsServer(lambda: registry.snapshot)
    source = ("127.0.0.1", 53)

    def subnets(offset: int) -> list[bytes]:
        return [
            query(f"s{i % services}.scale.example",
                  f"{(i * 2654435761 + offset) >> 16 & 255}.{i >> 8 & 255}.{i & 255}.0", i & 0xFFFF)
            for i in range(QUERIES)
        ]

    def run(queries: list[bytes]) -> float:
        begin = time.process_time()
        for data in queries:
            server.respond(data, source, False)
        return (time.process_time() - begin) / len(queries) * 1e6

    first_us = run(subnets(0))  # every service's first queries: its rings are built here
    queries = subnets(1 << 20)  # other subnets: the per-subnet cost alone
    cold_us = run(queries)
    hot_us = run(queries)
    registry.register("s0.scale.example", "eu", Endpoint(IPv4Address("10.254.0.1")))
    after_change_us = run(queries)  # the cache is empty again; rings kept or rebuilt
    answered = rss_mb()
    return (f"| {services:,} | {services * 10:,} | {loaded - before:.1f} | {answered:.1f} | "
            f"{_ms(registrations)} | {_ms(health)} | "
            f"{first_us:.1f} | {cold_us:.1f} | {hot_us:.2f} | {after_change_us:.1f} |")


def registrations(services: int, count: int) -> None:
    """Load ``services`` services and make ``count`` registrations: nothing else."""
    from gslb.config import load_zone_text
    from gslb.model import Endpoint
    from gslb.registry import Registry

    logging.disable(logging.WARNING)
    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(services), "scale.yaml")])
    for i in range(count):
        registry.register(f"s{i * 7919 % services}.scale.example", "eu",
                          Endpoint(IPv4Address(0x0AFF0000 + i)))


def _ms(figures: list[float]) -> str:
    return f"{statistics.median(figures):.2f} / {max(figures):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="run one size in this process")
    parser.add_argument("--baseline", type=Path,
                        help="also run each size with the gslb package found in this directory")
    parser.add_argument("--register", type=int,
                        help="with --size: only load and make this many registrations")
    args = parser.parse_args()
    if args.size and args.register is not None:
        registrations(args.size, args.register)
        return
    if args.size:
        print(one_size(args.size))
        return
    print("| gslb | services | endpoints | MB to load | RSS after answering, MB "
          "| register, ms (median / max) | health change, ms (median / max) "
          "| first pass µs/answer (builds rings) | new subnets µs/answer | cached µs/answer "
          "| first pass after a change µs/answer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = [("this", None)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for size in SIZES:
        for label, where in runs:
            env = dict(os.environ)
            if where is not None:
                env["PYTHONPATH"] = str(where)
            result = subprocess.run([sys.executable, __file__, "--size", str(size)], env=env,
                                    capture_output=True, text=True, timeout=900, check=True)
            print(f"| {label} {result.stdout.strip()}")


if __name__ == "__main__":
    main()
