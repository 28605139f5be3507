"""Memory and answer time as the configuration grows, in-process.

    .venv/bin/python benchmarks/scale.py

For 1, 100 and 1,000 services of 10 endpoints each (10, 1,000 and 10,000 endpoints;
three geo pools per service, the bundled GeoIP database), each size in its own child
process so that its memory is its own, prints: resident memory after loading and after
answering, the time of one change (a registration: a new snapshot), and the DNS path's
cost per answer, cold (a new ECS subnet each time, spread over the services) and from
the response cache. The first pass over the services builds their hash rings (once per
service and pool set); the cold figure is a second pass from other subnets. Bounded:
20,000 queries per pass.
"""

from __future__ import annotations

import argparse
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
    from gslb.model import Endpoint
    from gslb.registry import Registry

    before = rss_mb()
    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(services), "scale.yaml")])
    registry.set_locator(GeoDatabase.open(ROOT / "data" / "gslb-geo.mmdb"))
    loaded = rss_mb()
    start = time.perf_counter()
    registry.register("s0.scale.example", "eu", Endpoint(IPv4Address("10.255.0.1")))
    change_ms = (time.perf_counter() - start) * 1e3

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
    answered = rss_mb()
    return (f"| {services:,} | {services * 10:,} | {loaded - before:.1f} | {answered:.1f} | "
            f"{change_ms:.1f} | {first_us:.1f} | {cold_us:.1f} | {hot_us:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="run one size in this process")
    args = parser.parse_args()
    if args.size:
        print(one_size(args.size))
        return
    print("| services | endpoints | MB to load | RSS after 60,000 answers, MB | one change, ms "
          "| first pass µs/answer (builds rings) | new subnets µs/answer | cached µs/answer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        result = subprocess.run([sys.executable, __file__, "--size", str(size)],
                                capture_output=True, text=True, timeout=600, check=True)
        print(result.stdout.strip())


if __name__ == "__main__":
    main()
