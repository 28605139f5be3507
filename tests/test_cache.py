"""The response cache gives exactly the bytes the full path gives.

Two servers read the same registry: one with the cache, one without. Every query
goes to both, and the replies must be identical byte for byte (the cache patches the
ID and the question's letter case, so they are compared too). Hypothesis draws the
queries: names of every kind (static, services of every policy, CNAMEs to services,
missing names, other zones), types, IDs, letter case, flags, EDNS with and without
Client Subnet options of both families and any prefix, UDP sizes that force
truncation, TCP, and resolvers in several subnets of both families.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import dns.edns
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.config import load_zone_text
from gslb.dns.server import DnsServer
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.geoip import BUNDLED_DATABASE, GeoDatabase
from gslb.model import Endpoint, EndpointRef, GeoInfo, IPAddress, RType
from gslb.registry import Registry

APEX = "gslb.example.com."

POLICIES = ("sticky", "weighted", "round_robin", "least_loaded", "fastest", "fill")


def _service(policy: str) -> str:
    return textwrap.dedent(f"""\
        {policy.replace("_", "-")}:
          ttl: 20
          answers: 2
          policy: {policy}
          check: {{type: none}}
          pools:
            eu:
              countries: [DE, GB]
              continents: [EU]
              location: {{lat: 50.1, lon: 8.7}}
              endpoints: [10.1.0.1, 10.1.0.2, 10.1.0.3, "2001:db8:e::1", "2001:db8:e::2"]
            us:
              continents: [NA, SA]
              location: {{lat: 39.0, lon: -77.5}}
              endpoints: [10.2.0.1, 10.2.0.2, {{address: 10.2.0.3, cap: 0.5}}]
            ap:
              priority: 2
              continents: [AS, OC]
              location: {{lat: 1.35, lon: 103.8}}
              endpoints: [10.3.0.1, 10.3.0.2]
        """)


ZONE = (
    textwrap.dedent("""\
    zone: gslb.example.com
    soa: {minimum: 30}
    nameservers: {ns1: [192.0.2.53], ns2: [192.0.2.54, "2001:db8::54"]}
    records:
      "@": {TXT: "v=spf1 -all", MX: "10 mail"}
      mail: {A: 192.0.2.25, AAAA: "2001:db8::25"}
      app: {CNAME: sticky}
      far: {CNAME: docs.example.org.}
      big: {TXT: [""" + ", ".join(f'"big-{i:02d}-' + "x" * 40 + '"' for i in range(16)) + """]}
    services:
    """)
    + textwrap.indent("".join(_service(p) for p in POLICIES), "  ")
    + textwrap.indent(textwrap.dedent("""\
        single:
          policy: fill
          check: {type: none}
          pools: {only: {endpoints: [10.9.0.1]}}
        """), "  ")
)

NAMES = (
    [f"{p.replace('_', '-')}.{APEX}" for p in POLICIES]
    + [f"{n}.{APEX}" for n in ("single", "mail", "app", "far", "big", "nothere", "a.b")]
    + [APEX, "example.org.", "Sticky.GSLB.example.com."]
)
TYPES = ("A", "AAAA", "TXT", "MX", "NS", "SOA", "CNAME", "ANY", "TYPE99")
SOURCES = (
    "127.0.0.1", "127.0.0.77", "127.0.1.5", "127.0.2.9", "127.0.3.1", "127.0.4.200",
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "10.0.0.1",
    "::1", "2001:db8:1::5", "2001:db8:1:0:ff::1", "2001:db8:3::1", "::ffff:127.0.1.9",
)  # fmt: skip
ECS_ADDRESSES = (
    "198.51.100.0", "203.0.113.0", "192.0.2.0", "127.0.1.0", "127.0.3.0", "10.0.0.0",
    "127.0.0.0", "81.2.69.0", "2001:db8:1::", "2001:db8:3::", "2001:db8:a::", "::1",
)  # fmt: skip


def _registry(locator: object | None = None) -> Registry:
    registry = Registry()
    registry.load_zones([load_zone_text(ZONE, "cache-test.yaml")])
    registry.set_locator(locator or GeoDatabase.open(BUNDLED_DATABASE))  # type: ignore[arg-type]
    return registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return _registry()


@dataclass
class Pair:
    """A server with the cache and one without, reading the same registry."""

    cached: DnsServer
    plain: DnsServer

    def check(self, data: bytes, source: tuple[str, int], tcp: bool) -> bytes | None:
        expected = self.plain.respond(data, source, tcp)
        got = self.cached.respond(data, source, tcp)
        assert got == expected, (data.hex(), source, tcp)
        return got

    def assert_same_counts(self) -> None:
        """Replies from the cache count exactly as the full path's: type, rcode, pool
        and endpoint."""
        cached, plain = self.cached.stats.summary(), self.plain.stats.summary()
        assert cached.replies == plain.replies
        assert cached.answers == plain.answers
        assert cached.answered == plain.answered


@pytest.fixture
def pair(registry: Registry) -> Pair:
    return Pair(
        DnsServer(lambda: registry.snapshot),
        DnsServer(lambda: registry.snapshot, cache_size=0),
    )


def _spell(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


@st.composite
def queries(draw: st.DrawFn) -> tuple[bytes, tuple[str, int], bool]:
    name = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        name = _spell(name, random.Random(draw(st.integers(0, 2**16))))
    rdtype = dns.rdatatype.from_text(draw(st.sampled_from(TYPES)))
    edns = draw(st.sampled_from([-1, 0, 0, 0]))
    options = []
    if edns == 0 and draw(st.booleans()):
        address = draw(st.sampled_from(ECS_ADDRESSES))
        bits = 32 if ":" not in address else 128
        prefix = draw(st.integers(0, bits))
        options.append(dns.edns.ECSOption(address, prefix))
    q = dns.message.make_query(
        name,
        rdtype,
        use_edns=edns,
        options=options or None,
        payload=draw(st.sampled_from([512, 1232, 4096])),
        want_dnssec=draw(st.booleans()),
    )
    q.id = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        q.flags &= ~dns.flags.RD
    if draw(st.booleans()):
        q.flags |= dns.flags.CD | dns.flags.AD
    data = q.to_wire()
    return data, (draw(st.sampled_from(SOURCES)), 5353), draw(st.booleans())


@given(st.lists(queries(), min_size=1, max_size=12), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cached_reply_is_the_full_paths_reply(
    pair: Pair, batch: list[tuple[bytes, tuple[str, int], bool]], data: st.DataObject
) -> None:
    for query, source, tcp in batch:
        pair.check(query, source, tcp)
        # the same question again: now from the cache when it may be cached
        pair.check(query, source, tcp)
        # another ID, another resolver in the same /24 or /56, another letter case
        other_id = data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        pair.check(other_id + query[2:], source, tcp)
        neighbour = _neighbour(source[0])
        pair.check(query, (neighbour, 5353), tcp)
        pair.check(query[:12] + _swap_case(query[12:], data), source, tcp)
    pair.assert_same_counts()


@pytest.mark.parametrize("wire_name", [
    b"\x06STICKY\x04Gslb\x07example\x03com\x00",  # plain: another spelling is patched in
    b"\x03a\x00B\x04GSLB\x07example\x03com\x00",  # a zero byte inside a label
    b"\x03a\x00B\x07Example\x03ORG\x00",  # the same, outside our zones (REFUSED)
    b"\x03WWW\xc0\x04",  # compressed: points at QDCOUNT's high byte, the root
    b"\x06Sticky\xc0\x04",
])
def test_unusual_question_names_get_the_full_paths_reply(pair: Pair, wire_name: bytes) -> None:
    """The cache keys a name up to its first zero byte; names that end elsewhere (a zero
    byte in a label, compression) must still get the full path's reply, in any case."""
    for tcp in (False, True):
        head = wire_name[:3]  # up to the first zero byte in the labels above
        for spelling in (wire_name, wire_name.swapcase(), wire_name.lower(), head.upper() + wire_name[3:]):
            for qid in (b"\x12\x34", b"\xab\xcd"):
                query = qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + spelling + b"\x00\x01\x00\x01"
                pair.check(query, ("127.0.0.1", 5353), tcp)
    pair.assert_same_counts()


def _neighbour(host: str) -> str:
    address = ip_address(host)
    if isinstance(address, IPv4Address):
        return str(IPv4Address(int(address) ^ 0x3F))
    return str(IPv6Address(int(address) ^ 0xFFFF))


def _swap_case(rest: bytes, data: st.DataObject) -> bytes:
    """The question name with some letters' case flipped (the name ends at the first 0)."""
    out = bytearray(rest)
    i = 0
    while out[i]:
        for j in range(i + 1, i + 1 + out[i]):
            if chr(out[j]).isalpha() and data.draw(st.booleans()):
                out[j] ^= 0x20
        i += out[i] + 1
    return bytes(out)


def test_hits_are_counted_and_most_queries_hit(pair: Pair) -> None:
    rng = random.Random(5)
    names = [n for n in NAMES if "weighted" not in n and "round-robin" not in n]
    for _ in range(2000):
        q = dns.message.make_query(
            rng.choice(names), rng.choice(["A", "AAAA"]), use_edns=0,
            options=[dns.edns.ECSOption(rng.choice(ECS_ADDRESSES[:6]), 24)],
        )
        pair.check(q.to_wire(), (rng.choice(SOURCES), 53), False)
    cache = pair.cached.cache
    assert cache is not None
    assert cache.hits > 1700  # some 200 distinct questions (more per resolver), then hits
    pair.assert_same_counts()
    assert sum(pair.cached.stats.summary().replies.values()) == 2000


def test_counts_survive_new_snapshots_and_a_full_cache() -> None:
    """Hits are counted on cache entries; entries dropped (a new snapshot, the cache
    full) keep their counts, and a cache nobody reads keeps a bounded list of them."""
    registry = _registry()
    small = Pair(DnsServer(lambda: registry.snapshot, cache_size=8),
                 DnsServer(lambda: registry.snapshot, cache_size=0))
    rng = random.Random(7)
    names = [n for n in NAMES if "weighted" not in n and "round-robin" not in n]
    for round_ in range(6):
        for _ in range(300):
            q = dns.message.make_query(rng.choice(names), rng.choice(["A", "AAAA", "MX"]),
                                       use_edns=0,
                                       options=[dns.edns.ECSOption(rng.choice(ECS_ADDRESSES), 24)])
            small.check(q.to_wire(), (rng.choice(SOURCES), 53), False)
        # a new snapshot: the cache empties at the next query
        registry.register(f"single.{APEX}", "only", Endpoint(ip_address(f"10.9.1.{round_}")))
        assert small.cached.cache is not None
        assert len(small.cached.cache._touched) <= 8
    small.assert_same_counts()
    summary = small.cached.stats.summary()
    assert sum(summary.replies.values()) == 1800
    assert summary.cache_hits > 0


def _addresses(reply: bytes | None) -> list[str]:
    assert reply is not None
    return [r.address for rrset in dns.message.from_wire(reply).answer for r in rrset]


@pytest.mark.parametrize("policy", ["weighted", "round_robin"])
def test_query_id_policies_are_not_frozen(pair: Pair, policy: str) -> None:
    """weighted and round_robin draw on the query ID: the cache must not pin one answer."""
    name = f"{policy.replace('_', '-')}.{APEX}"
    seen = set()
    for qid in range(64):
        q = dns.message.make_query(name, "A")
        q.id = qid
        seen.add(tuple(_addresses(pair.check(q.to_wire(), ("127.0.1.1", 53), False))))
    assert len(seen) > 1
    cache = pair.cached.cache
    assert cache is not None and cache.hits == 0


def test_resolver_subnets_get_their_own_answers(pair: Pair) -> None:
    """Without ECS the resolver is the client: Frankfurt and Tokyo resolvers differ,
    and two resolvers of one /24 share an entry."""
    q = dns.message.make_query(f"sticky.{APEX}", "A").to_wire()
    frankfurt = _addresses(pair.check(q, ("127.0.1.1", 53), False))
    tokyo = _addresses(pair.check(q, ("127.0.3.1", 53), False))
    assert all(a.startswith("10.1.") for a in frankfurt)
    assert all(a.startswith("10.3.") for a in tokyo)  # AS: the tier-2 pool by its rule
    cache = pair.cached.cache
    assert cache is not None
    hits = cache.hits
    assert _addresses(pair.check(q, ("127.0.1.200", 53), False)) == frankfurt
    assert cache.hits == hits + 1


class NarrowLocator:
    """Places every IPv4 address by its /28: narrower than a resolver subnet."""

    def locate(self, address: IPAddress) -> GeoInfo:
        if int(address) & 0x10:
            return GeoInfo("DE", "EU", None, 28, True)
        return GeoInfo("US", "NA", None, 28, True)


def test_answer_depending_on_more_than_the_resolver_subnet_is_not_kept() -> None:
    registry = _registry(NarrowLocator())
    pair = Pair(DnsServer(lambda: registry.snapshot), DnsServer(lambda: registry.snapshot, cache_size=0))
    q = dns.message.make_query(f"sticky.{APEX}", "A").to_wire()
    first = _addresses(pair.check(q, ("192.0.2.17", 53), False))  # DE: eu pool
    second = _addresses(pair.check(q, ("192.0.2.1", 53), False))  # US: us pool, same /24
    assert first[0].startswith("10.1.") and second[0].startswith("10.2.")
    cache = pair.cached.cache
    assert cache is not None and cache.hits == 0


def test_change_is_in_the_next_answer(pair: Pair, registry: Registry) -> None:
    """A health change or a registration reaches the very next answer, cache hot."""
    q = dns.message.make_query(f"fill.{APEX}", "A", use_edns=0,
                               options=[dns.edns.ECSOption("127.0.2.0", 24)]).to_wire()
    for _ in range(3):
        before = _addresses(pair.check(q, ("127.0.0.1", 53), False))
    assert before == ["10.2.0.1", "10.2.0.2"]  # Ashburn: the us pool, in file order
    refs = [EndpointRef(f"fill.{APEX}", "us", IPv4Address(f"10.2.0.{n}"), None) for n in (1, 2)]
    registry.set_probe_state(refs[0], False, "test: down")
    try:
        assert _addresses(pair.check(q, ("127.0.0.1", 53), False)) == ["10.2.0.2", "10.2.0.3"]
        registry.set_probe_state(refs[1], False, "test: down")
        registry.register(f"fill.{APEX}", "us", Endpoint(IPv4Address("10.2.0.9")))
        assert _addresses(pair.check(q, ("127.0.0.1", 53), False)) == ["10.2.0.3", "10.2.0.9"]
    finally:
        for ref in refs:
            registry.set_probe_state(ref, True, "test: up")
        registry.deregister(f"fill.{APEX}", "us", IPv4Address("10.2.0.9"), None)
    assert _addresses(pair.check(q, ("127.0.0.1", 53), False)) == before


def test_cache_is_bounded(registry: Registry) -> None:
    server = DnsServer(lambda: registry.snapshot, cache_size=100)
    for i in range(1000):
        q = dns.message.make_query(f"sticky.{APEX}", "A", use_edns=0,
                                   options=[dns.edns.ECSOption(f"81.{i >> 8}.{i & 255}.0", 24)])
        server.respond(q.to_wire(), ("127.0.0.1", 53), False)
        assert server.cache is not None and len(server.cache) <= 100



CLIENT_ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(IPv4Address),
    st.sampled_from(["127.0.1.9", "127.0.2.1", "127.0.3.4", "127.0.4.1", "198.51.100.3",
                     "203.0.113.200", "10.1.2.3", "127.0.0.1"]).map(ip_address),
    st.integers(0, 2**16 - 1).map(lambda n: IPv6Address((0x20010DB8 << 96) | (n << 80))),
)


@given(st.lists(st.tuples(
    st.sampled_from([n for n in NAMES if n.endswith(APEX) or n == APEX]),
    st.sampled_from([RType.A, RType.AAAA]),
    CLIENT_ADDRESSES,
    st.one_of(st.none(), st.integers(0, 128)),
    st.integers(0, 0xFFFF),
), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_trace_less_answers_equal_explained_ones(
    registry: Registry, asks: list[tuple[str, RType, IPAddress, int | None, int]]
) -> None:
    """The DNS path's answer (no trace; outcomes remembered per location) equals the
    explained one (every step run) for every client, in any order of clients."""
    snapshot = registry.snapshot
    for name, rtype, address, prefix, nonce in asks:
        qname = name.lower()
        if prefix is None:
            client = Client(address, nonce=nonce)
        else:
            prefix = min(prefix, address.max_prefixlen)
            net = ip_network((address, min(prefix, 24 if address.version == 4 else 56)), strict=False)
            client = Client(net.network_address, prefix, IPv4Address("192.0.2.1"), nonce)
        fast = answer(snapshot, qname, rtype, client, explain=False)
        full = answer(snapshot, qname, rtype, client)
        assert replace(fast, trace=()) == replace(full, trace=()), (qname, client)


def test_remembered_outcome_keeps_each_clients_scope(registry: Registry) -> None:
    """Two ECS clients at one address and location, /16 then /24, in the database's
    unmapped 198.51.0.0/18: each answer's scope is its own, not the first one's.
    ``sticky`` hashes each client's bucket (/16, /24) and depends on the /18 network as
    well; ``fill`` depends on the network alone, two bits more than the /16 gave (the
    scope then says that the source prefix was too short, RFC 7871 section 7.2.1)."""
    at = IPv4Address("198.51.0.0")
    scopes = {}
    for policy in ("sticky", "fill"):
        name = f"{policy}.{APEX}"
        wide = answer(registry.snapshot, name, RType.A, Client(at, 16, at, 1), explain=False)
        narrow = answer(registry.snapshot, name, RType.A, Client(at, 24, at, 1), explain=False)
        scopes[policy] = (wide.scope, narrow.scope)
    assert scopes == {"sticky": (18, 24), "fill": (18, 18)}
