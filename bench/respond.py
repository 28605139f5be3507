"""Server CPU per query of the whole datagram -> reply function (no sockets), in-process.

    .venv/bin/python bench/respond.py

Bounded: 20,000 queries per case. A baseline for the response cache to come.
"""

import pathlib
import time

import dns.edns
import dns.message

from gslb.config import load_zones
from gslb.dns.server import DnsServer
from gslb.geoip import GeoDatabase
from gslb.registry import Registry

r = Registry(); r.load_zones(load_zones(pathlib.Path("zones"))); r.set_locator(GeoDatabase.open(pathlib.Path("data/gslb-geo.mmdb")))
srv = DnsServer(lambda: r.snapshot)
def q(name, ecs=None):
    m = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption(ecs, 24)] if ecs else None)
    return m.to_wire()
cases = {"static A (mail)": [q("mail.gslb.example.com")]*20000,
         "service, ECS, same /24": [q("geo.gslb.example.com", "198.51.100.0")]*20000,
         "service, ECS, 20000 distinct /24s": [q("geo.gslb.example.com", f"81.{i>>8 & 255}.{i & 255}.0") for i in range(20000)]}
src = ("127.0.0.1", 5000)
for name, qs in cases.items():
    t = time.perf_counter()
    for d in qs: srv.respond(d, src, False)
    print(f"{name}: {(time.perf_counter()-t)/len(qs)*1e6:.1f} us/query")
