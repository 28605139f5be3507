"""Routing properties of the answer engine, measured on many client subnets.

Ring stability and shares, the same answer from every instance and process, geo order
and failover with the bundled GeoIP database (``data/gslb-geo.mmdb``, built from
``data/geo.csv``), the ECS scope of answers, each policy, ``all_down``, and the trace.
Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from gslb.config import load_zone_text
from gslb.engine.answer import Answer, Rcode, answer
from gslb.engine.context import Client, client_bucket, member_id
from gslb.engine.ring import hash_key, make_ring
from gslb.engine.select import member_weights
from gslb.geoip import BUNDLED_DATABASE, GeoDatabase
from gslb.model import AddressData, Endpoint, EndpointRef, IPAddress, RType
from gslb.registry import Registry

APEX = "gslb.example.com."
WWW = f"www.{APEX}"
SUBNETS = 100_000
SEED = 20240601  # every random sample here is random.Random(SEED)
REPO = Path(__file__).resolve().parent.parent

# --- zones ----------------------------------------------------------------------------

# Five regions. Tier 1: eu, us, ap (with country/continent rules) and sa (a location
# only); tier 2: af, which has a country rule for ZA. Endpoints are 10.<region>.0.<n>.
Region = tuple[int, tuple[str, ...], tuple[str, ...], tuple[float, float], int]
REGIONS: dict[str, Region] = {  # name: (second octet, countries, continents, location, priority)
    "eu": (1, ("DE", "GB", "IE"), ("EU",), (50.1109, 8.6821), 1),  # Frankfurt
    "us": (2, (), ("NA",), (39.0438, -77.4874), 1),  # Ashburn
    "ap": (3, (), ("AS", "OC"), (1.3521, 103.8198), 1),  # Singapore
    "sa": (4, (), (), (-23.5505, -46.6333), 1),  # São Paulo: a location, no rules
    "af": (5, ("ZA",), (), (-26.2041, 28.0473), 2),  # Johannesburg, tier 2
}
POOL_OF_OCTET = {region[0]: name for name, region in REGIONS.items()}


def geo_pools(per_pool: int) -> str:
    out = ["pools:"]
    for name, (octet, countries, continents, (lat, lon), priority) in REGIONS.items():
        out.append(f"  {name}:")
        out.append(f"    priority: {priority}")
        if countries:
            out.append(f"    countries: [{', '.join(countries)}]")
        if continents:
            out.append(f"    continents: [{', '.join(continents)}]")
        out.append(f"    location: {{lat: {lat}, lon: {lon}}}")
        out.append(f"    endpoints: [{', '.join(f'10.{octet}.0.{n}' for n in range(1, per_pool + 1))}]")
    return "\n".join(out)


def zone_text(services: dict[str, str]) -> str:
    """A zone with one static record and the given services (name: YAML body)."""
    text = textwrap.dedent("""\
        zone: gslb.example.com
        nameservers: {ns1: [127.0.0.1]}
        soa: {minimum: 30}
        records:
          mail: {A: 192.0.2.25}
        services:
        """)
    for name, body in services.items():
        text += f"  {name}:\n" + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    ")
    return text


GEO_ZONE = zone_text({
    "www": "answers: 1\ncheck: {type: none}\n" + geo_pools(2),  # sticky within the pool
    "one": "answers: 1\ncheck: {type: none}\n" + geo_pools(1),  # geo alone decides
    "wt": "answers: 1\npolicy: weighted\ncheck: {type: none}\n" + geo_pools(2),
})


def single_pool(policy: str, endpoints: Sequence[str], answers: int = 1) -> str:
    listed = "\n".join(f"      - {e}" for e in endpoints) if endpoints else "      []"
    return (
        f"answers: {answers}\npolicy: {policy}\ncheck: {{type: none}}\n"
        f"pools:\n  p:\n    endpoints:\n{listed}\n"
    )


# --- helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def geodb() -> Iterator[GeoDatabase]:
    database = GeoDatabase.open(BUNDLED_DATABASE)
    yield database
    database.close()


def make_registry(text: str, locator: GeoDatabase | None = None) -> Registry:
    registry = Registry(clock=lambda: 1_000_000.0)
    registry.load_zones([load_zone_text(text, "test.yaml")])
    if locator is not None:
        registry.set_locator(locator)
    return registry


def ask(registry: Registry, client: Client, name: str = WWW, qtype: RType = RType.A) -> Answer:
    return answer(registry.snapshot, name, qtype, client)


def addresses(registry: Registry, client: Client, name: str = WWW) -> list[str]:
    result = ask(registry, client, name)
    assert result.rcode is Rcode.NOERROR, result
    out = []
    for record in result.answer:
        assert isinstance(record.data, AddressData)
        out.append(str(record.data.address))
    return out


def answered(result: Answer) -> set[str]:
    assert result.rcode is Rcode.NOERROR
    return {str(r.data.address) for r in result.answer if isinstance(r.data, AddressData)}


def first(registry: Registry, client: Client, name: str = WWW) -> str:
    return addresses(registry, client, name)[0]


def pool_of(address: str) -> str:
    return POOL_OF_OCTET[int(address.split(".")[1])]


@functools.cache
def random_subnets(seed: int, count: int = SUBNETS) -> tuple[IPv4Address, ...]:
    """``count`` distinct random IPv4 /24 client subnets (a random host in each)."""
    rng = random.Random(seed)
    return tuple(
        IPv4Address((s << 8) | rng.randrange(1, 255)) for s in rng.sample(range(1 << 24), count)
    )


@functools.cache
def subnet_keys(seed: int, count: int = SUBNETS) -> tuple[int, ...]:
    """Where each of ``random_subnets(seed, count)`` lands on a ring: the sticky policy's key
    (the packed /24 and its length, as ``client_bucket`` makes it; checked on a sample)."""
    subnets = random_subnets(seed, count)
    for a in subnets[:200]:
        assert client_bucket(Client(a)) == ((int(a) & ~0xFF).to_bytes(4, "big") + b"\x18", 24)
    return tuple(hash_key((int(a) & ~0xFF).to_bytes(4, "big") + b"\x18") for a in subnets)


def ring_members(registry: Registry, name: str = WWW) -> tuple[tuple[str, float], ...]:
    """The (member id, weight) pairs the sticky policy builds its ring from (one tier)."""
    service = registry.snapshot.service(name)
    assert service is not None
    views = [v for v in service.endpoints if v.health.serving]
    return tuple(zip((member_id(v) for v in views), member_weights(views), strict=True))


def ring_owners(members: tuple[tuple[str, float], ...], keys: Sequence[int]) -> list[str]:
    """The first endpoint address for each key on the ring of ``members``."""
    ring = make_ring(members)
    address = [m.split("|")[1] for m, _ in members]
    return [address[ring.pick(key, 1)[0]] for key in keys]


def set_pool(registry: Registry, pool: str, up: bool, name: str = WWW) -> None:
    service = registry.snapshot.service(name)
    assert service is not None
    for view in service.endpoints:
        if view.pool.name == pool:
            ref = EndpointRef(name, pool, view.endpoint.address, view.endpoint.port)
            registry.set_probe_state(ref, up, "test")


def ref(service: str, address: str, pool: str = "p") -> EndpointRef:
    return EndpointRef(f"{service}.{APEX}", pool, ip_address(address))


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """An independent great-circle distance, to check the engine's figures."""
    (lat1, lon1), (lat2, lon2) = a, b
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(
        math.radians(lon2 - lon1) / 2
    ) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


# --- 1. ring stability ------------------------------------------------------------------

TEN = [f"10.9.0.{i}" for i in range(1, 11)]


def test_adding_an_endpoint_moves_only_its_share_to_it() -> None:
    registry = make_registry(zone_text({"www": single_pool("sticky", TEN)}))
    subnets = random_subnets(SEED)
    keys = subnet_keys(SEED)
    before = ring_owners(ring_members(registry), keys)

    registry.register(WWW, "p", Endpoint(ip_address("10.9.0.11")))
    members = ring_members(registry)
    assert len(members) == 11
    after = ring_owners(members, keys)
    moved = [i for i in range(SUBNETS) if before[i] != after[i]]
    fraction = len(moved) / SUBNETS
    print(f"\nadd 11th endpoint: {fraction:.4f} of {SUBNETS} subnets moved "
          f"(ideal 1/11 = {1 / 11:.4f}, bound 1.5/11 = {1.5 / 11:.4f})")
    assert fraction <= 1.5 / 11
    assert fraction >= 0.5 / 11  # the new endpoint does take a share
    assert {after[i] for i in moved} == {"10.9.0.11"}
    for i in range(0, SUBNETS, 50):  # the engine answers as the ring says
        assert first(registry, Client(subnets[i])) == after[i]


def test_removing_an_endpoint_moves_only_the_subnets_that_were_on_it() -> None:
    registry = make_registry(zone_text({"www": single_pool("sticky", TEN)}))
    subnets = random_subnets(SEED)
    keys = subnet_keys(SEED)
    before = ring_owners(ring_members(registry), keys)

    registry.set_probe_state(ref("www", "10.9.0.4"), False, "test")
    after = ring_owners(ring_members(registry), keys)
    moved = {i for i in range(SUBNETS) if before[i] != after[i]}
    on_it = {i for i in range(SUBNETS) if before[i] == "10.9.0.4"}
    print(f"\nremove 1 of 10 endpoints: {len(moved) / SUBNETS:.4f} of subnets moved, "
          f"{len(on_it) / SUBNETS:.4f} were on it (ideal 0.1000)")
    assert moved == on_it
    spread_to = Counter(after[i] for i in moved)
    print(f"  its subnets went to {len(spread_to)} endpoints: {sorted(spread_to.values())}")
    assert len(spread_to) == 9  # spread over the others, not dumped on a neighbour
    for i in range(0, SUBNETS, 50):
        assert first(registry, Client(subnets[i])) == after[i]


def test_unequal_weights_removing_an_endpoint_moves_only_its_subnets() -> None:
    endpoints = [f"{{address: 10.9.0.{w}, weight: {w}}}" for w in (1, 2, 3, 4)]
    registry = make_registry(zone_text({"www": single_pool("sticky", endpoints)}))
    keys = subnet_keys(SEED)
    before = ring_owners(ring_members(registry), keys)
    registry.set_probe_state(ref("www", "10.9.0.4"), False, "test")
    after = ring_owners(ring_members(registry), keys)
    moved = [i for i in range(SUBNETS) if before[i] != after[i]]
    needless = [i for i in moved if before[i] != "10.9.0.4"]
    print(f"\nweights 1,2,3,4, remove the 4: {len(moved) / SUBNETS:.4f} moved (ideal 0.4000), "
          f"{len(needless) / SUBNETS:.4f} between endpoints that stayed")
    registry.register(WWW, "p", Endpoint(ip_address("10.9.0.9"), weight=1))
    added = ring_owners(ring_members(registry), keys)
    moved_add = [i for i in range(SUBNETS) if after[i] != added[i]]
    needless_add = [i for i in moved_add if added[i] != "10.9.0.9"]
    print(f"weights 1,2,3 + a 1: {len(moved_add) / SUBNETS:.4f} moved (ideal {1 / 7:.4f}), "
          f"{len(needless_add) / SUBNETS:.4f} not to the new endpoint")
    assert not needless
    assert not needless_add


# --- 2. shares --------------------------------------------------------------------------

SHARE_CASES = {
    "equal": ({"www": single_pool("sticky", TEN)}, {a: 0.1 for a in TEN}),
    "weights 1,2,3,4": (
        {"www": single_pool("sticky", [f"{{address: 10.9.0.{w}, weight: {w}}}" for w in (1, 2, 3, 4)])},
        {f"10.9.0.{w}": w / 10 for w in (1, 2, 3, 4)},
    ),
    "pools 100:300": (
        {"www": """\
            check: {type: none}
            pools:
              small: {weight: 100, endpoints: [10.7.0.1, 10.7.0.2]}
              big: {weight: 300, endpoints: [10.8.0.1, 10.8.0.2]}
            """},
        {"10.7.0.1": 0.125, "10.7.0.2": 0.125, "10.8.0.1": 0.375, "10.8.0.2": 0.375},
    ),
}


@functools.cache
def measure_shares(case: str) -> float:
    services, expected = SHARE_CASES[case]
    registry = make_registry(zone_text(services))
    subnets = random_subnets(SEED)
    owners = ring_owners(ring_members(registry), subnet_keys(SEED))
    for i in range(0, SUBNETS, 100):  # the engine merges the pools of one tier as the ring does
        assert first(registry, Client(subnets[i])) == owners[i]
    counts = Counter(owners)
    deviation = {a: counts[a] / SUBNETS / share - 1 for a, share in expected.items()}
    worst = max(abs(d) for d in deviation.values())
    print(f"\nshares, {case}: max deviation {worst:+.3f}; "
          + ", ".join(f"{a} {counts[a] / SUBNETS:.4f} (want {expected[a]:.4f})" for a in expected))
    return worst



@pytest.mark.parametrize("case", [
    "equal",
    "weights 1,2,3,4",
    "pools 100:300",
])
def test_shares_follow_weights_within_ten_percent(case: str) -> None:
    assert measure_shares(case) <= 0.10


@pytest.mark.parametrize("case", list(SHARE_CASES))
def test_shares_follow_weights_within_twenty_five_percent(case: str) -> None:
    """What the ring gives today: no endpoint is far off its weight."""
    assert measure_shares(case) <= 0.25


# --- 3. the same answer from every instance and process ---------------------------------

MAPPED = [f"127.0.{n}.9" for n in range(1, 11)] + ["198.51.100.9", "203.0.113.9", "192.0.2.9"]
MAPPED_V6 = [f"2001:db8:{n:x}::9" for n in range(0, 11)] + ["2001:db8:ffff::9"]


def determinism_clients() -> list[tuple[str, int | None, str | None, int]]:
    """~2,000 clients: random subnets (some with ECS) and every mapped range."""
    rng = random.Random(SEED)
    clients: list[tuple[str, int | None, str | None, int]] = []
    for i, a in enumerate(random_subnets(SEED)[:2000]):
        if i % 4 == 0:
            clients.append((str(IPv4Address(int(a) & ~0xFF)), 24, "192.0.2.53", rng.randrange(65536)))
        else:
            clients.append((str(a), None, None, rng.randrange(65536)))
    clients += [(a, None, None, rng.randrange(65536)) for a in MAPPED + MAPPED_V6]
    return clients


def answers_for(clients: list[tuple[str, int | None, str | None, int]], reverse: bool = False) -> list[Any]:
    """What a freshly built GSLB answers each client for www (sticky), wt (weighted) and one;
    also run in a subprocess. ``reverse`` lists every pool's endpoints the other way round."""
    text = GEO_ZONE
    if reverse:
        for octet in POOL_OF_OCTET:
            text = text.replace(f"[10.{octet}.0.1, 10.{octet}.0.2]", f"[10.{octet}.0.2, 10.{octet}.0.1]")
        assert text != GEO_ZONE
    make_ring.cache_clear()  # no ring survives from another registry
    database = GeoDatabase.open(BUNDLED_DATABASE)
    try:
        registry = make_registry(text, database)
        extra = ["10.1.0.9", "10.1.0.8", "10.3.0.9"]
        for a in reversed(extra) if reverse else extra:
            pool = pool_of(a)
            registry.register(WWW, pool, Endpoint(ip_address(a)))
            registry.register(f"wt.{APEX}", pool, Endpoint(ip_address(a)))
        out = []
        for address, prefix, resolver, nonce in clients:
            client = Client(
                ip_address(address), prefix, ip_address(resolver) if resolver else None, nonce
            )
            row = []
            for name in (WWW, f"wt.{APEX}", f"one.{APEX}"):
                result = ask(registry, client, name)
                row.append([str(r.data.address) for r in result.answer if isinstance(r.data, AddressData)]
                           + [result.scope])
            out.append(row)
        return out
    finally:
        database.close()


SUBPROCESS = """\
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("routing_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({"hash": hash("gslb routing"), "answers": module.answers_for(json.load(sys.stdin))}))
"""


def test_two_instances_built_independently_answer_alike() -> None:
    clients = determinism_clients()
    one = answers_for(clients)
    two = answers_for(clients, reverse=True)  # endpoints listed and registered in another order
    assert one == two
    pools = Counter(pool_of(row[0][0]) for row in one)
    print(f"\ntwo instances: {len(clients)} clients, identical answers; www pools: {dict(pools)}")
    assert set(pools) == {"eu", "us", "ap", "sa", "af"}
    assert pools["af"] == 2  # tier 2: only its ZA clients (127.0.6.9, 2001:db8:6::9)


def test_a_restarted_process_with_another_hash_seed_answers_alike() -> None:
    clients = determinism_clients()
    here = answers_for(clients)
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    run = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, __file__],
        input=json.dumps(clients), capture_output=True, text=True, env=env, cwd=REPO, timeout=50,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    there = json.loads(run.stdout)
    assert there["hash"] != hash("gslb routing")  # the other process really hashes differently
    assert [[list(x) for x in row] for row in here] == there["answers"]
    print(f"\nsubprocess with PYTHONHASHSEED={seed}: {len(clients)} clients x 3 services, "
          "identical answers")


# --- 4. geo order and failover with the bundled database ---------------------------------


@functools.cache
def geo_csv() -> list[tuple[Any, str, str, tuple[float, float]]]:
    """data/geo.csv's rows, read here independently of the database and the engine."""
    rows = []
    for line in (REPO / "data" / "geo.csv").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("network,"):
            continue
        network, country, continent, lat, lon = line.split(",")[:5]
        rows.append((ip_network(network), country, continent, (float(lat), float(lon))))
    return rows


def documented_order(address: str) -> list[tuple[str, str]]:
    """The pools in the order geo.py's docstring documents, as (pool, why): rule (country,
    continent, none), then priority tier, then great-circle distance, then file order."""
    ip = ip_address(address)
    row = next((r for r in geo_csv() if ip in r[0]), None)
    assert row is not None, f"{address} is not in data/geo.csv"
    _, country, continent, where = row
    ranked = []
    for index, (name, (_, countries, continents, location, priority)) in enumerate(REGIONS.items()):
        rule = 0 if country in countries else 1 if continent in continents else 2
        distance = haversine_km(where, location)
        why = ("country rule", "continent rule", f"{distance:.0f} km")[rule]
        ranked.append(((rule, priority, distance, index), name, why))
    return [(name, why) for _, name, why in sorted(ranked)]


# client, first pool, next pool when the first is down (worked out from the docstring's
# order: rule, tier, distance; the comments give the deciding figures from geo.csv).
GEO_CASES = [
    ("198.51.100.7", "eu", "us"),  # DE: country rule; then us 6549 km < sa 9829 < ap 10258
    ("192.0.2.7", "eu", "us"),  # GB (London): country rule; then us 5917 km
    ("127.0.1.7", "eu", "us"),  # DE (Frankfurt)
    ("127.0.7.7", "eu", "us"),  # IE (Dublin): country rule; then us 5461 km
    ("2001:db8:1::7", "eu", "us"),  # DE over IPv6
    ("127.0.2.7", "us", "eu"),  # US: continent NA; then eu 6549 km < sa 7665
    ("2001:db8::7", "us", "eu"),  # US over IPv6
    ("127.0.8.7", "us", "eu"),  # CA: continent NA; then eu 6333 km < sa 8186
    ("203.0.113.7", "ap", "eu"),  # JP: continent AS; then eu 9331 km < us 10874
    ("127.0.3.7", "ap", "eu"),  # JP (Tokyo)
    ("127.0.9.7", "ap", "eu"),  # IN: continent AS; then eu 6564 km (af 6983 km is tier 2)
    ("127.0.10.7", "ap", "eu"),  # SG: continent AS; then eu 10258 km (af 8659 km is tier 2)
    ("127.0.5.7", "ap", "sa"),  # AU: continent OC; then sa 13357 km < us 15674 (af 11041: tier 2)
    ("127.0.4.7", "sa", "us"),  # BR: no rule, sa 0 km; then us 7665 km (af 7429 km is tier 2)
    ("2001:db8:4::7", "sa", "us"),  # BR over IPv6
    ("127.0.6.7", "af", "sa"),  # ZA: a country rule beats tier 1; then sa 7429 km < ap 8659
]
UNKNOWN = ["127.0.0.7", "10.1.2.3", "8.8.8.8", "127.0.11.7", "172.16.5.5", "2001:db8:ffff::7"]
TIER_1 = {"eu", "us", "ap", "sa"}


@pytest.mark.parametrize(("address", "primary", "fallback"), GEO_CASES)
def test_documented_ranges_route_to_their_pool_and_fail_over_in_order(
    geodb: GeoDatabase, address: str, primary: str, fallback: str
) -> None:
    order = documented_order(address)
    assert [name for name, _ in order[:2]] == [primary, fallback]
    registry = make_registry(GEO_ZONE, geodb)
    host = ip_address(address)
    clients = [Client(host + k) for k in range(0, 200, 40)]  # hosts of the same network
    seen: list[str] = []
    for name, _ in order:
        pools = {pool_of(first(registry, c)) for c in clients}
        assert pools == {name}, (address, seen, pools)
        seen.append(name)
        set_pool(registry, name, False)
    # every pool down: all_down is open, so the first pool in the order answers again
    assert {pool_of(first(registry, c)) for c in clients} == {order[0][0]}
    print(f"\n{address}: " + " -> ".join(f"{n} ({why})" for n, why in order))


def test_unknown_clients_get_the_default_tier_order(geodb: GeoDatabase) -> None:
    registry = make_registry(GEO_ZONE, geodb)
    for address in UNKNOWN:
        assert not geodb.locate(ip_address(address)).found
        assert pool_of(first(registry, Client(ip_address(address)))) in TIER_1
    subnets = [a for a in random_subnets(SEED)[:2000] if not geodb.locate(a).found]
    counts = Counter(pool_of(first(registry, Client(a))) for a in subnets)
    print(f"\nunknown clients ({len(subnets)} subnets): tier-1 pools shared by pool weight: {dict(counts)}")
    assert set(counts) == TIER_1  # the pools of the best tier together, never tier 2
    assert all(0.75 < n / len(subnets) / 0.25 < 1.25 for n in counts.values())
    for pool in TIER_1:
        set_pool(registry, pool, False)
    for address in [*UNKNOWN, "198.51.100.7", "127.0.4.7"]:
        assert pool_of(first(registry, Client(ip_address(address)))) == "af"


# --- 5. ECS scope -------------------------------------------------------------------------

RESOLVER_JP = ip_address("203.0.113.53")


def ecs(address: str, prefix: int, resolver: IPAddress = RESOLVER_JP, nonce: int = 0) -> Client:
    return Client(ip_address(address), prefix, resolver, nonce)


@pytest.mark.parametrize(("service", "client", "pool", "scope"), [
    # one endpoint per pool: the geo decision alone sets the scope (the database network)
    ("one", ecs("198.51.100.0", 24), "eu", 24),
    ("one", ecs("198.51.100.0", 32), "eu", 24),  # more bits than the database used
    ("one", ecs("2001:db8:1::", 56), "eu", 48),  # the IPv6 rows are /48
    # a source prefix shorter than the network decided on: the scope says so (longer than
    # the source, RFC 7871 section 7.2.1), so that resolvers may send more bits
    ("one", ecs("2001:db8::", 40), "us", 48),  # 2001:db8::/48 is US
    ("wt", ecs("8.8.8.0", 24), None, 2),  # unmapped: the empty network 0.0.0.0/2; weighted hashes nothing
    ("wt", ecs("198.51.0.0", 16), None, 18),  # unmapped 198.51.0.0/18, longer than the /16
    # sticky within the pool: the /24 (/56) bucket as well
    ("www", ecs("198.51.100.0", 24), "eu", 24),
    ("www", ecs("198.51.0.0", 16), None, 18),  # the /16 bucket, the /18 network
    ("www", ecs("2001:db8:1::", 64), "eu", 56),
    ("www", ecs("8.8.8.0", 24), None, 24),
    # private or loopback ECS: unmapped ones stand for the resolver (JP), mapped ones are used
    ("www", ecs("10.1.2.0", 24), "ap", 0),
    ("www", ecs("127.0.0.0", 24), "ap", 0),
    ("www", ecs("100.64.1.0", 24), "ap", 0),  # shared address space (CGNAT)
    ("www", ecs("0.0.0.0", 0), "ap", 0),  # source /0: the client asks not to be located
    ("www", ecs("127.0.1.0", 24), "eu", 24),  # loopback, but the bundled database maps it (DE)
    ("www", ecs("127.0.4.0", 24), "sa", 24),
    ("www", Client(ip_address("198.51.100.7")), "eu", 0),  # no ECS: no scope to give
])
def test_ecs_scope(geodb: GeoDatabase, service: str, client: Client, pool: str | None, scope: int) -> None:
    registry = make_registry(GEO_ZONE, geodb)
    result = ask(registry, client, f"{service}.{APEX}")
    assert result.rcode is Rcode.NOERROR and result.answer
    if pool is not None:
        assert {pool_of(a) for a in answered(result)} == {pool}
    assert result.scope == scope, result.trace


def test_private_ecs_uses_the_resolver(geodb: GeoDatabase) -> None:
    registry = make_registry(GEO_ZONE, geodb)
    for resolver in ("203.0.113.53", "198.51.100.53", "127.0.2.53"):
        private = ecs("10.1.2.0", 24, ip_address(resolver))
        result = ask(registry, private)
        assert addresses(registry, private) == addresses(registry, Client(ip_address(resolver)))
        assert result.scope == 0
        assert any(f"ECS 10.1.2.0 is private and unmapped; using resolver {resolver}" in line
                   for line in result.trace), result.trace


def test_sticky_hashing_scope_without_geo(geodb: GeoDatabase) -> None:
    registry = make_registry(zone_text({"www": single_pool("sticky", TEN)}), geodb)
    for client, scope in [
        (ecs("81.2.3.0", 24), 24),
        (ecs("81.2.3.0", 32), 24),  # hashing keys on the /24 however much the client gives
        (ecs("81.2.0.0", 16), 16),
        (ecs("2a00:1:2:300::", 56), 56),
        (ecs("2a00:1:2:300::", 64), 56),
        (ecs("2a00:1:2::", 48), 48),
    ]:
        assert ask(registry, client).scope == scope, client
    # a single pool asks no GeoIP question: the /24 is all the answer depends on
    same = {first(registry, ecs(f"81.2.3.{i}", 32)) for i in range(0, 256, 17)}
    assert len(same) == 1
    assert len({first(registry, ecs(f"81.2.{i}.0", 16)) for i in range(0, 256, 17)}) == 1


def test_static_records_and_negative_answers_have_scope_zero(geodb: GeoDatabase) -> None:
    registry = make_registry(GEO_ZONE, geodb)
    client = ecs("198.51.100.0", 24)
    static = ask(registry, client, f"mail.{APEX}")
    assert static.rcode is Rcode.NOERROR and static.answer and static.scope == 0
    nxdomain = ask(registry, client, f"nothing.{APEX}")
    assert nxdomain.rcode is Rcode.NXDOMAIN and nxdomain.scope == 0
    nodata = ask(registry, client, WWW, RType.AAAA)  # the service has no IPv6 endpoints
    assert nodata.rcode is Rcode.NOERROR and not nodata.answer and nodata.scope == 0
    assert nodata.authority and nodata.authority[0].rtype is RType.SOA


# --- 6. policies ------------------------------------------------------------------------

POLICY_ZONE = zone_text({
    "sticky": single_pool("sticky", []),  # endpoints register with heartbeats and caps
    "weighted": single_pool("weighted", [f"{{address: 10.9.2.{w}, weight: {w}}}" for w in (1, 2, 3, 4)]),
    "rr": single_pool("round_robin", [f"10.9.3.{i}" for i in (1, 2, 3, 4)], answers=2),
    "least": single_pool("least_loaded", [], answers=2),
    "fast": single_pool("fastest", [f"10.9.5.{i}" for i in (1, 2, 3, 4)], answers=4),
    # declared order is not address order
    "fill": single_pool("fill", [f"{{address: 10.9.6.{i}, cap: 0.8}}" for i in (3, 1, 2)]),
})


def fqdn(name: str) -> str:
    return f"{name}.{APEX}"


def beat(registry: Registry, name: str, address: str, load: float | None) -> None:
    registry.heartbeat(fqdn(name), "p", ip_address(address), None, draining=False, load=load)


def test_sticky_skips_endpoints_at_their_cap_and_takes_them_back() -> None:
    registry = make_registry(POLICY_ZONE)
    members = [f"10.9.1.{i}" for i in (1, 2, 3, 4)]
    for a in members:
        registry.register(fqdn("sticky"), "p", Endpoint(ip_address(a), heartbeat_timeout=30, cap=0.8))
        beat(registry, "sticky", a, 0.2)
    clients = [Client(a) for a in random_subnets(SEED)[:2000]]

    def mapping() -> list[str]:
        return [first(registry, c, fqdn("sticky")) for c in clients]

    before = mapping()
    assert mapping() == before  # stable per subnet
    assert set(before) == set(members)
    beat(registry, "sticky", "10.9.1.2", 0.95)
    full = mapping()
    moved = [i for i in range(len(clients)) if before[i] != full[i]]
    assert {before[i] for i in moved} == {"10.9.1.2"} and "10.9.1.2" not in full
    spread = Counter(full[i] for i in moved)
    print(f"\nsticky cap: 10.9.1.2 at load 0.95 >= cap 0.8: its {len(moved)} of {len(clients)} subnets "
          f"went to {dict(spread)}")
    assert len(spread) == 3  # spread over the others, not all onto one neighbour
    beat(registry, "sticky", "10.9.1.2", 0.8)  # at the cap counts as full
    assert mapping() == full
    beat(registry, "sticky", "10.9.1.2", 0.5)  # load falls: its subnets come back
    assert mapping() == before
    for a in members:
        beat(registry, "sticky", a, 0.95)
    assert mapping() == before  # all full: the plain sticky order stands


def test_weighted_follows_weights_and_the_same_nonce_gives_the_same_answer() -> None:
    registry = make_registry(POLICY_ZONE)
    members = ring_members(registry, fqdn("weighted"))
    ring = make_ring(members)
    ids = [m.split("|")[1] for m, _ in members]
    owners = [ids[ring.pick(hash_key(n.to_bytes(4, "big")), 1)[0]] for n in range(65536)]
    clients = [Client(a) for a in random_subnets(SEED)[:64]]
    for nonce in range(0, 65536, 61):  # the engine draws as the ring says, whoever asks
        c = clients[nonce % len(clients)]
        picked = {first(registry, Client(c.address, nonce=nonce), fqdn("weighted")),
                  first(registry, Client(clients[0].address, nonce=nonce), fqdn("weighted"))}
        assert picked == {owners[nonce]}
    counts = Counter(owners)
    shares = {f"10.9.2.{w}": counts[f"10.9.2.{w}"] / 65536 for w in (1, 2, 3, 4)}
    deviation = max(abs(shares[f"10.9.2.{w}"] / (w / 10) - 1) for w in (1, 2, 3, 4))
    print("\nweighted 1:2:3:4 over all 65536 query IDs: "
          + ", ".join(f"{a} {s:.4f}" for a, s in shares.items()) + f"; max deviation {deviation:+.3f}")
    assert deviation <= 0.10
    result = ask(registry, ecs("81.2.3.0", 24, nonce=7), fqdn("weighted"))
    assert result.scope == 0  # the draw does not depend on who asks


def test_round_robin_rotates_over_nonces() -> None:
    registry = make_registry(POLICY_ZONE)
    client = Client(ip_address("81.2.3.4"))
    answers = [addresses(registry, Client(client.address, nonce=n), fqdn("rr")) for n in range(400)]
    counts = Counter(a[0] for a in answers)
    print(f"\nround_robin over 400 query IDs: {dict(counts)}")
    assert counts == {f"10.9.3.{i}": 100 for i in (1, 2, 3, 4)}
    cycle = [answers[n][0] for n in range(4)]
    assert len(set(cycle)) == 4
    for n in range(399):
        assert answers[n][1] == answers[n + 1][0]  # each answer starts where the last moved on
        assert answers[n][0] == cycle[n % 4]
    other = Client(ip_address("203.0.113.9"), nonce=5)
    assert addresses(registry, other, fqdn("rr")) == answers[5]  # the ID decides, not the client


def test_least_loaded_answers_the_lowest_load_first() -> None:
    registry = make_registry(POLICY_ZONE)
    loads = {"10.9.4.1": 0.5, "10.9.4.2": 0.2, "10.9.4.3": 0.7, "10.9.4.4": 0.9}
    for a, load in loads.items():
        registry.register(fqdn("least"), "p", Endpoint(ip_address(a), heartbeat_timeout=30))
        beat(registry, "least", a, load)
    clients = [Client(a) for a in random_subnets(SEED)[:200]]
    assert {tuple(addresses(registry, c, fqdn("least"))) for c in clients} == {("10.9.4.2", "10.9.4.1")}
    beat(registry, "least", "10.9.4.4", 0.1)
    assert {tuple(addresses(registry, c, fqdn("least"))) for c in clients} == {("10.9.4.4", "10.9.4.2")}
    for a in loads:
        beat(registry, "least", a, 0.3 if a in ("10.9.4.1", "10.9.4.3") else 0.9)
    tied = [addresses(registry, c, fqdn("least")) for c in clients]
    firsts = Counter(t[0] for t in tied)
    print(f"\nleast_loaded, two endpoints tied at 0.3 over {len(clients)} subnets: {dict(firsts)}")
    assert {tuple(sorted(t)) for t in tied} == {("10.9.4.1", "10.9.4.3")}
    assert set(firsts) == {"10.9.4.1", "10.9.4.3"}  # ties keep the sticky order ...
    assert tied == [addresses(registry, c, fqdn("least")) for c in clients]  # ... per subnet
    registry.register(fqdn("least"), "p", Endpoint(ip_address("10.9.4.5"), heartbeat_timeout=30))
    assert {addresses(registry, c, fqdn("least"))[0] for c in clients} == {"10.9.4.5"}  # no load: 0


def test_fastest_answers_the_lowest_rtt_first() -> None:
    registry = make_registry(POLICY_ZONE)

    def order() -> set[tuple[str, ...]]:
        return {tuple(addresses(registry, Client(a), fqdn("fast"))) for a in random_subnets(SEED)[:100]}

    for i, rtt in ((1, 0.050), (2, 0.020), (3, 0.090)):
        registry.note_check(ref("fast", f"10.9.5.{i}"), True, "HTTP 200", rtt)
    assert order() == {("10.9.5.2", "10.9.5.1", "10.9.5.3", "10.9.5.4")}  # unknown RTT last
    generation = registry.generation
    registry.note_check(ref("fast", "10.9.5.2"), True, "HTTP 200", 0.023)  # +15%: not published
    assert registry.generation == generation
    view = registry.snapshot.service(fqdn("fast"))
    assert view is not None
    assert [v.health.rtt for v in view.endpoints] == [0.050, 0.020, 0.090, None]
    registry.note_check(ref("fast", "10.9.5.1"), True, "HTTP 200", 0.010)  # -80%: published
    assert registry.generation > generation
    assert order() == {("10.9.5.1", "10.9.5.2", "10.9.5.3", "10.9.5.4")}
    registry.note_check(ref("fast", "10.9.5.3"), False, "HTTP 503", 0.001)  # failed checks: no RTT
    registry.note_check(ref("fast", "10.9.5.4"), True, "HTTP 200", 0.015)
    assert order() == {("10.9.5.1", "10.9.5.4", "10.9.5.2", "10.9.5.3")}


def test_fill_takes_endpoints_in_declared_order_up_to_their_cap() -> None:
    registry = make_registry(POLICY_ZONE)
    clients = [Client(a) for a in random_subnets(SEED)[:100]]

    def answered() -> set[str]:
        return {first(registry, c, fqdn("fill")) for c in clients}

    assert answered() == {"10.9.6.3"}  # no load reported yet
    for i in (3, 1, 2):
        beat(registry, "fill", f"10.9.6.{i}", 0.1)
    assert answered() == {"10.9.6.3"}
    beat(registry, "fill", "10.9.6.3", 0.85)
    assert answered() == {"10.9.6.1"}
    beat(registry, "fill", "10.9.6.1", 0.8)  # at the cap is full
    assert answered() == {"10.9.6.2"}
    beat(registry, "fill", "10.9.6.2", 0.99)
    assert answered() == {"10.9.6.3"}  # all full: declared order
    beat(registry, "fill", "10.9.6.1", 0.4)
    assert answered() == {"10.9.6.1"}



def test_answers_holds_that_many_distinct_addresses_when_there_are() -> None:
    shared = ["{address: 10.9.8.1, port: 8080}", "{address: 10.9.8.1, port: 8081}",
              "{address: 10.9.8.2, port: 8080}"]
    registry = make_registry(zone_text({"www": single_pool("sticky", shared, answers=2)}))
    sizes = Counter(len(addresses(registry, Client(a))) for a in random_subnets(SEED)[:500])
    print(f"\nanswers: 2 over 2 distinct addresses (3 endpoints): answer sizes {dict(sizes)}")
    assert sizes == {2: 500}

# --- 7. all_down ----------------------------------------------------------------------------

THREE = ["10.9.7.1", "10.9.7.2", "10.9.7.3"]


def all_down_zone(mode: str, check: str = "{type: http}") -> str:
    return zone_text({"svc": single_pool("sticky", THREE, answers=3).replace(
        "check: {type: none}", f"all_down: {mode}\ncheck: {check}")})


def verdict(registry: Registry, address: str, up: bool) -> None:
    registry.set_probe_state(ref("svc", address), up, "test")


def svc_answer(registry: Registry) -> Answer:
    return ask(registry, ecs("81.2.3.0", 24), fqdn("svc"))


def assert_nodata(result: Answer) -> None:
    assert result.rcode is Rcode.NOERROR and result.authoritative
    assert result.answer == ()
    assert [r.rtype for r in result.authority] == [RType.SOA]
    assert result.scope == 0


def test_all_down_open_answers_every_enabled_endpoint() -> None:
    registry = make_registry(all_down_zone("open"))
    for a in THREE:
        verdict(registry, a, False)
    result = svc_answer(registry)
    assert answered(result) == set(THREE)
    assert "healthy: none serving, failing open to 3 enabled endpoints" in result.trace


def test_all_down_closed_is_nodata() -> None:
    registry = make_registry(all_down_zone("closed"))
    for a in THREE:
        verdict(registry, a, True)
    assert answered(svc_answer(registry)) == set(THREE)
    for a in THREE:
        verdict(registry, a, False)
    result = svc_answer(registry)
    assert_nodata(result)
    assert "healthy: none serving; all_down is closed: no answer" in result.trace
    verdict(registry, "10.9.7.2", True)
    assert answered(svc_answer(registry)) == {"10.9.7.2"}


def test_all_down_closed_before_the_first_verdict_answers_only_confirmed_endpoints() -> None:
    registry = make_registry(all_down_zone("closed"))
    view = registry.snapshot.service(fqdn("svc"))
    assert view is not None and not any(v.health.confirmed for v in view.endpoints)
    assert_nodata(svc_answer(registry))  # up but unconfirmed: not answered under closed
    verdict(registry, "10.9.7.3", True)
    assert answered(svc_answer(registry)) == {"10.9.7.3"}
    registry.register(fqdn("svc"), "p", Endpoint(ip_address("10.9.7.9"), heartbeat_timeout=30))
    assert answered(svc_answer(registry)) == {"10.9.7.3"}  # registered, not yet heard from
    beat(registry, "svc", "10.9.7.9", None)  # a heartbeat confirms it
    assert answered(svc_answer(registry)) == {"10.9.7.3", "10.9.7.9"}


def test_all_down_last_good_answers_the_endpoints_healthy_last() -> None:
    registry = make_registry(all_down_zone("last_good"))
    for a in THREE:
        verdict(registry, a, True)
    verdict(registry, "10.9.7.1", False)
    verdict(registry, "10.9.7.3", False)
    assert answered(svc_answer(registry)) == {"10.9.7.2"}
    verdict(registry, "10.9.7.2", False)
    result = svc_answer(registry)
    assert answered(result) == {"10.9.7.2"}
    assert "healthy: none serving; answering the 1 last good" in result.trace
    verdict(registry, "10.9.7.1", True)
    assert answered(svc_answer(registry)) == {"10.9.7.1"}


def test_all_down_last_good_before_the_first_verdict() -> None:
    registry = make_registry(all_down_zone("last_good"))
    result = svc_answer(registry)  # nothing was ever good: documented to fail open
    assert answered(result) == set(THREE)
    assert any("failing open" in line for line in result.trace)
    verdict(registry, "10.9.7.1", True)
    assert answered(svc_answer(registry)) == {"10.9.7.1"}  # unconfirmed ones are held back
    verdict(registry, "10.9.7.1", False)
    assert answered(svc_answer(registry)) == {"10.9.7.1"}  # the one that was good last


def test_all_down_closed_with_check_none_answers_once_the_prober_runs() -> None:
    from gslb.health.prober import Prober

    registry = make_registry(all_down_zone("closed", "{type: none}"))

    async def run_prober_briefly() -> None:
        task = asyncio.create_task(Prober(registry, rng=random.Random(SEED)).run())
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_prober_briefly())
    assert answered(svc_answer(registry)) == set(THREE)  # "never probed, always up"


# --- 8. the trace ---------------------------------------------------------------------------


def geo_line(trace: Sequence[str]) -> str:
    lines = [line for line in trace if line.startswith("geo: ")]
    assert len(lines) == 1, trace
    return lines[0]


def test_trace_explains_location_order_skipped_pools_and_choice(geodb: GeoDatabase) -> None:
    registry = make_registry(GEO_ZONE, geodb)
    set_pool(registry, "eu", False)
    client = Client(ip_address("198.51.100.7"))
    result = ask(registry, client)
    print("\n" + "\n".join(result.trace))
    chosen = first(registry, client)
    order = ", ".join(f"{name} ({why})" for name, why in documented_order("198.51.100.7"))
    assert geo_line(result.trace) == (
        f"geo: client 198.51.100.7 in DE/EU at 50.11,8.68 (/24); order: {order}"
    )
    assert "healthy: 8 of 10 serving" in result.trace
    assert "failover: pool us (skipped, no healthy endpoint: eu)" in result.trace
    assert f"select: sticky for 198.51.100.7 picked {chosen}" in result.trace
    assert pool_of(chosen) == "us"

    jp = ask(registry, Client(ip_address("203.0.113.7")))
    assert "order: ap (continent rule), eu (9331 km)" in geo_line(jp.trace)
    assert "failover: pool ap" in jp.trace

    unknown = ask(registry, Client(ip_address("8.8.8.8")))
    assert geo_line(unknown.trace) == (
        "geo: client 8.8.8.8 in unknown location (/2); order: "
        "eu (tier 1), us (tier 1), ap (tier 1), sa (tier 1), af (tier 2)"
    )
    assert "failover: pool ap, sa, us" in unknown.trace  # one tier, taken together


def test_trace_without_a_geoip_database() -> None:
    registry = make_registry(GEO_ZONE)
    result = ask(registry, Client(ip_address("198.51.100.7")))
    assert "geo: no GeoIP database; pools in tier order" in result.trace
    assert "failover: pool ap, eu, sa, us" in result.trace
