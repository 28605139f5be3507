"""Server CPU per query of the whole datagram -> reply function, in-process, no sockets.

    .venv/bin/python bench/respond.py

Bounded: 20,000 queries per case. The baseline for the response cache to come.
"""

from __future__ import annotations

import time
from pathlib import Path

import dns.edns
import dns.message

from gslb.config import load_zones
from gslb.dns.server import DnsServer
from gslb.geoip import GeoDatabase
from gslb.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
COUNT = 20_000


def query(name: str, ecs: str | None = None) -> bytes:
    options = [dns.edns.ECSOption(ecs, 24)] if ecs else None
    return dns.message.make_query(name, "A", use_edns=0, options=options).to_wire()


def main() -> None:
    registry = Registry()
    registry.load_zones(load_zones(ROOT / "zones"))
    registry.set_locator(GeoDatabase.open(ROOT / "data" / "gslb-geo.mmdb"))
    server = DnsServer(lambda: registry.snapshot)
    cases = {
        "static A (mail)": [query("mail.gslb.example.com")] * COUNT,
        "service, ECS, same /24": [query("geo.gslb.example.com", "198.51.100.0")] * COUNT,
        "service, ECS, distinct /24s": [
            query("geo.gslb.example.com", f"81.{i >> 8 & 255}.{i & 255}.0") for i in range(COUNT)
        ],
    }
    source = ("127.0.0.1", 5000)
    for name, queries in cases.items():
        start = time.perf_counter()
        for data in queries:
            server.respond(data, source, False)
        print(f"{name}: {(time.perf_counter() - start) / len(queries) * 1e6:.1f} us/query")


if __name__ == "__main__":
    main()
