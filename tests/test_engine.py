"""The answer engine and its selection chain, on registries built from zone text."""

from __future__ import annotations

import dataclasses
import textwrap
from ipaddress import IPv4Address, ip_address

from gslb.config import load_zone_text
from gslb.engine.answer import Rcode, answer
from gslb.engine.context import Client
from gslb.engine.ring import make_ring
from gslb.model import (
    AddressData,
    AdminState,
    Endpoint,
    EndpointRef,
    Health,
    NameData,
    Record,
    RType,
)
from gslb.registry import Registry

ZONE = textwrap.dedent("""\
    zone: gslb.example.com
    nameservers: {ns1: [127.0.0.1]}
    services:
      www:
        answers: 1
        check: {type: none}
        pools:
          eu: {priority: 1, endpoints: [192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4]}
          us: {priority: 2, endpoints: [198.51.100.1, "2001:db8::1"]}
    """)
WWW = "www.gslb.example.com."
EU = {f"192.0.2.{i}" for i in range(1, 5)}


def make_registry(text: str = ZONE) -> Registry:
    registry = Registry()
    registry.load_zones([load_zone_text(text, "test.yaml")])
    return registry


def client(i: int) -> Client:
    """The i-th distinct /24 client."""
    return Client(IPv4Address(0x0A000000 + (i << 8) + 7))


def addresses(registry: Registry, c: Client, qtype: RType = RType.A) -> list[str]:
    result = answer(registry.snapshot, WWW, qtype, c)
    assert result.rcode is Rcode.NOERROR
    out = []
    for record in result.answer:
        assert isinstance(record.data, AddressData)
        out.append(str(record.data.address))
    return out


def set_down(registry: Registry, pool: str, address: str) -> None:
    registry.set_probe_state(EndpointRef(WWW, pool, ip_address(address)), False, "test")


def test_same_subnet_same_endpoint_and_hashing_on_the_subnet() -> None:
    registry = make_registry()
    first = addresses(registry, Client(ip_address("10.1.2.3")))
    assert first == addresses(registry, Client(ip_address("10.1.2.250")))  # same /24
    assert all(addresses(registry, client(i)) == addresses(registry, client(i)) for i in range(50))
    ecs = Client(ip_address("81.2.3.0"), 24, ip_address("127.0.0.1"))
    assert answer(registry.snapshot, WWW, RType.A, ecs).scope == 24
    ecs16 = Client(ip_address("81.2.0.0"), 16, ip_address("127.0.0.1"))
    assert answer(registry.snapshot, WWW, RType.A, ecs16).scope == 16  # hashed: the /16 given
    private = Client(ip_address("10.1.2.0"), 24, ip_address("81.2.3.4"))
    result = answer(registry.snapshot, WWW, RType.A, private)
    assert result.scope == 0  # private ECS: the resolver's address decided
    assert addresses(registry, private) == addresses(registry, Client(ip_address("81.2.3.4")))


def test_load_spreads_over_endpoints() -> None:
    registry = make_registry()
    counts = {a: 0 for a in EU}
    for i in range(4000):
        counts[addresses(registry, client(i))[0]] += 1
    assert all(700 < n < 1300 for n in counts.values()), counts


def test_removing_an_endpoint_moves_only_its_share() -> None:
    registry = make_registry()
    before = {i: addresses(registry, client(i))[0] for i in range(2000)}
    set_down(registry, "eu", "192.0.2.3")
    after = {i: addresses(registry, client(i))[0] for i in range(2000)}
    moved = [i for i in before if before[i] != after[i]]
    assert all(before[i] == "192.0.2.3" for i in moved)
    assert "192.0.2.3" not in after.values()


def test_weights_shape_the_shares() -> None:
    ring = make_ring((("a", 300.0), ("b", 100.0)))
    from gslb.engine.ring import hash_key, spread

    counts = spread(ring, [hash_key(i.to_bytes(4, "big")) for i in range(20000)])
    assert 0.70 < counts[0] / 20000 < 0.80, counts


def test_failover_to_next_priority_tier_and_back() -> None:
    registry = make_registry()
    for a in EU:
        set_down(registry, "eu", a)
    assert {a for i in range(100) for a in addresses(registry, client(i))} == {"198.51.100.1"}
    registry.set_probe_state(EndpointRef(WWW, "eu", ip_address("192.0.2.2")), True, "test")
    assert {a for i in range(100) for a in addresses(registry, client(i))} == {"192.0.2.2"}


def test_fail_open_when_everything_is_down() -> None:
    registry = make_registry()
    for a in EU:
        set_down(registry, "eu", a)
    set_down(registry, "us", "198.51.100.1")
    seen = {a for i in range(200) for a in addresses(registry, client(i))}
    assert seen == EU  # all down: the best tier is answered rather than nothing
    result = answer(registry.snapshot, WWW, RType.A, client(1))
    assert any("failing open" in line for line in result.trace)


def test_draining_and_disabled_endpoints_get_no_new_answers() -> None:
    registry = make_registry()
    registry.register(WWW, "eu", Endpoint(ip_address("192.0.2.9"), heartbeat_timeout=30))
    registry.heartbeat(WWW, "eu", ip_address("192.0.2.9"), None, draining=True, load=None)
    seen = {a for i in range(300) for a in addresses(registry, client(i))}
    assert seen == EU


def test_answers_count_and_address_family() -> None:
    registry = make_registry(ZONE.replace("answers: 1", "answers: 3"))
    assert len(addresses(registry, client(1))) == 3
    assert len(set(addresses(registry, client(1)))) == 3
    for a in EU:
        set_down(registry, "eu", a)
    assert addresses(registry, client(1), RType.AAAA) == ["2001:db8::1"]


def test_aaaa_without_ipv6_endpoints_is_nodata() -> None:
    registry = make_registry(ZONE.replace(', "2001:db8::1"', ""))
    result = answer(registry.snapshot, WWW, RType.AAAA, client(1))
    assert result.rcode is Rcode.NOERROR and result.answer == ()
    assert result.authority[0].rtype is RType.SOA


def test_registration_is_visible_in_the_next_answer() -> None:
    registry = make_registry(ZONE.replace("answers: 1", "answers: 10"))
    generation = registry.generation
    registry.register(WWW, "eu", Endpoint(ip_address("192.0.2.77")))
    assert registry.generation > generation
    assert "192.0.2.77" in addresses(registry, client(1))
    registry.deregister(WWW, "eu", ip_address("192.0.2.77"), None)
    assert "192.0.2.77" not in addresses(registry, client(1))


def test_serial_grows_on_configuration_changes_not_on_health() -> None:
    registry = make_registry()
    zone = registry.snapshot.zones["gslb.example.com."]

    def serial() -> int:
        soa = registry.snapshot.zones["gslb.example.com."].soa.data
        return soa.serial  # type: ignore[union-attr]

    first = serial()
    set_down(registry, "eu", "192.0.2.1")
    assert serial() == first
    registry.register(WWW, "eu", Endpoint(ip_address("192.0.2.50")))
    assert serial() > first
    assert zone.apex == "gslb.example.com."


def test_health_default_is_documented_state() -> None:
    health = Health()
    assert health.up and health.serving
    assert not Health(admin=AdminState.DISABLED).serving


def test_a_cname_loop_is_answered_with_each_link_once() -> None:
    """``gslb check`` refuses loops; a zone built another way still answers each
    record once (RFC 2181 section 5), not the chain repeated up to its length limit."""
    zone = load_zone_text(ZONE, "test.yaml")
    l1, l2 = "l1.gslb.example.com.", "l2.gslb.example.com."
    links = (Record(l1, RType.CNAME, 60, NameData(l2)), Record(l2, RType.CNAME, 60, NameData(l1)))
    registry = Registry()
    registry.load_zones([dataclasses.replace(zone, records=zone.records + links)])
    result = answer(registry.snapshot, l1, RType.A, Client(ip_address("192.0.2.77")))
    assert result.rcode is Rcode.NOERROR
    assert result.answer == links


def test_any_at_an_alias_is_its_cname() -> None:
    """RFC 8482 section 4.2: no synthesised HINFO beside a CNAME."""
    zone = load_zone_text(ZONE, "test.yaml")
    alias = Record("app.gslb.example.com.", RType.CNAME, 60, NameData(WWW))
    registry = Registry()
    registry.load_zones([dataclasses.replace(zone, records=(*zone.records, alias))])
    result = answer(registry.snapshot, alias.name, RType.ANY, Client(ip_address("192.0.2.77")))
    assert (result.rcode, result.answer) == (Rcode.NOERROR, (alias,))
