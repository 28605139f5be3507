"""The DNS path's engine call (no trace; per-location plans remembered on the service
view) gives every client exactly the explained answer, for sticky services in every
state that changes the walk: loads at and over caps, every endpoint full, an address
held in two pools, one to four answers, weights of zero, ECS of any prefix, private
ECS, IPv6 and no ECS.
"""

from __future__ import annotations

import dataclasses
import textwrap
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.config import load_zone_text
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.geoip import BUNDLED_DATABASE, GeoDatabase
from gslb.model import IPAddress, RType
from gslb.registry import Registry

APEX = "gslb.example.com."
ZONE = textwrap.dedent("""\
    zone: gslb.example.com
    nameservers: {ns1: [127.0.0.1]}
    services:
    """)
SERVICE = textwrap.indent(textwrap.dedent("""\
    s{answers}:
      answers: {answers}
      check: {{type: none}}
      pools:
        europe:
          countries: [DE]
          continents: [EU]
          location: {{lat: 50.11, lon: 8.68}}
          endpoints:
            - {{address: 192.0.2.1, cap: 0.8}}
            - {{address: 192.0.2.2, cap: 0.5}}
            - {{address: 192.0.2.3, weight: 300, cap: 0.95}}
            - {{address: "2001:db8::1", cap: 0.9}}
            - {{address: "2001:db8::2", weight: 0}}
        america:
          continents: [NA]
          location: {{lat: 39.04, lon: -77.49}}
          endpoints:
            - {{address: 192.0.2.1, port: 8080, cap: 0.7}}
            - {{address: 198.51.100.1, cap: 0.6}}
            - {{address: "2001:db8::1", port: 8080}}
    """), "  ")
ANSWERS = (1, 2, 3, 4)
GEODB = GeoDatabase.open(BUNDLED_DATABASE)  # shared: its lookup cache changes no answer
HEARTBEATS = [("europe", "192.0.2.1", None), ("europe", "192.0.2.2", None), ("europe", "192.0.2.3", None),
              ("europe", "2001:db8::1", None), ("america", "192.0.2.1", 8080),
              ("america", "198.51.100.1", None)]

ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(IPv4Address),
    st.sampled_from(["127.0.1.9", "127.0.2.1", "127.0.7.4", "198.51.100.3", "10.1.2.3"]).map(ip_address),
    st.integers(0, 2**16 - 1).map(lambda n: IPv6Address((0x20010DB8 << 96) | (n << 80))),
)
LOADS = st.lists(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0])),
                 min_size=len(HEARTBEATS), max_size=len(HEARTBEATS))


def _registry(loads: list[float | None]) -> Registry:
    registry = Registry()
    text = ZONE + "".join(SERVICE.format(answers=n) for n in ANSWERS)
    registry.load_zones([load_zone_text(text, "fast.yaml")])
    registry.set_locator(GEODB)
    for n in ANSWERS:
        for (pool, address, port), load in zip(HEARTBEATS, loads, strict=True):
            registry.heartbeat(f"s{n}.{APEX}", pool, ip_address(address), port, draining=False, load=load)
    return registry


def _client(address: IPAddress, prefix: int | None, nonce: int) -> Client:
    if prefix is None:
        return Client(address, nonce=nonce)
    prefix = min(prefix, address.max_prefixlen)
    network = ip_network((address, min(prefix, 24 if address.version == 4 else 56)), strict=False)
    return Client(network.network_address, prefix, IPv4Address("192.0.2.200"), nonce)


@given(
    loads=LOADS,
    asks=st.lists(st.tuples(st.sampled_from(ANSWERS), st.sampled_from([RType.A, RType.AAAA]), ADDRESSES,
                            st.one_of(st.none(), st.integers(0, 128)), st.integers(0, 0xFFFF)),
                  min_size=1, max_size=30),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_sticky_answers_equal_explained_ones(
    loads: list[float | None], asks: list[tuple[int, RType, IPAddress, int | None, int]]
) -> None:
    snapshot = _registry(loads).snapshot
    for answers, rtype, address, prefix, nonce in asks:
        client = _client(address, prefix, nonce)
        qname = f"s{answers}.{APEX}"
        fast = answer(snapshot, qname, rtype, client, explain=False)
        again = answer(snapshot, qname, rtype, client, explain=False)  # from the remembered plan
        full = answer(snapshot, qname, rtype, client)
        assert dataclasses.replace(fast, trace=()) == dataclasses.replace(full, trace=()), (qname, client)
        assert again == fast


def test_the_walk_skips_full_endpoints_and_takes_all_when_all_are_full() -> None:
    """The plan's shortcut for one answer still skips a full first owner."""
    open_ = _registry([0.1] * len(HEARTBEATS)).snapshot
    full = _registry([1.0] * len(HEARTBEATS)).snapshot
    one_full = _registry([0.95, 0.1, 0.1, 0.1, 0.95, 0.1]).snapshot  # 192.0.2.1 at its caps (both pools)
    name = f"s1.{APEX}"
    moved = 0
    for i in range(300):
        client = Client(IPv4Address(0x51000000 | i << 8), 24, IPv4Address("192.0.2.200"))  # 81.0.i.0/24
        first = answer(open_, name, RType.A, client, explain=False).answer
        assert answer(full, name, RType.A, client, explain=False).answer == first  # all full: as if none
        skipped = answer(one_full, name, RType.A, client, explain=False).answer
        assert str(skipped[0].data.address) != "192.0.2.1"  # type: ignore[union-attr]
        moved += skipped != first
    assert moved > 0
