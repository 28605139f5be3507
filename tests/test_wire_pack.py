"""Address answers packed by hand equal what the general packer (dnslib) writes.

``pack_answer`` packs answers of only A/AAAA records owned by the question name
itself; ``pack_reply`` is the general path. Hypothesis draws questions (any letter
case, long names), record counts that overflow 512 and 1232 bytes, TTLs, EDNS with
and without Client Subnet, DO, flags and TCP.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import dns.edns
import dns.flags
import dns.message
import dns.rdtypes.ANY.TXT
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.config import load_zone_text
from gslb.dns import wire
from gslb.engine.answer import Answer, Rcode
from gslb.model import AddressData, Record, RType

LABEL = st.text("abcXYZ019-", min_size=1, max_size=63)


@st.composite
def cases(draw: st.DrawFn) -> tuple[wire.Query, Answer, bool]:
    labels = draw(st.lists(LABEL, min_size=1, max_size=5))
    name = ".".join(labels) + "."
    if len(name) > 250:
        name = name[-200:].lstrip(".-") or "a."
        name = name if name.endswith(".") else name + "."
    family = draw(st.sampled_from(["A", "AAAA"]))
    options = []
    edns = draw(st.sampled_from([-1, 0]))
    if edns == 0 and draw(st.booleans()):
        options.append(dns.edns.ECSOption("198.51.100.0", draw(st.integers(0, 32))))
    message = dns.message.make_query(
        name, family, use_edns=edns, options=options or None,
        payload=draw(st.sampled_from([512, 1232, 4096])), want_dnssec=draw(st.booleans()),
    )
    message.id = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        message.flags |= dns.flags.CD
    query = wire.parse_query(message.to_wire())
    assert isinstance(query, wire.Query)
    rtype = RType.A if family == "A" else RType.AAAA
    ttl = draw(st.integers(0, 2**31 - 1))
    count = draw(st.integers(1, 90))
    owner = query.qname if draw(st.integers(0, 9)) else "other." + query.qname
    records = tuple(
        Record(owner, rtype, ttl, AddressData(
            IPv4Address(0x0A000000 + i) if rtype is RType.A else IPv6Address(0x20010DB8 << 96 | i)))
        for i in range(count)
    )
    answer = Answer(Rcode.NOERROR, draw(st.booleans()), records, scope=draw(st.integers(0, 24)))
    return query, answer, draw(st.booleans())


@given(cases())
@settings(max_examples=400, deadline=None)
def test_hand_packed_addresses_equal_the_general_packer(case: tuple[wire.Query, Answer, bool]) -> None:
    query, answer, tcp = case
    general = wire.pack_reply(
        query.id, query.flags, answer.rcode, query.question,
        authoritative=answer.authoritative,
        sections=(answer.answer, answer.authority, answer.additional),
        qname=query.qname, edns=query.edns, scope=answer.scope,
        limit=wire.MAX_TCP_MESSAGE if tcp else query.udp_limit,
    )
    assert wire.pack_answer(query, answer, tcp) == general


def test_long_txt_keeps_a_character_cut_at_the_255_byte_boundary() -> None:
    text = "x" * 254 + "\u00e9" + "\u20ac" * 100 + "y"  # é's two bytes straddle byte 255
    zone = load_zone_text(
        "zone: txt.example\nnameservers: {ns1: [127.0.0.1]}\n"
        f"records:\n  long: {{TXT: \"{text}\"}}\n", "txt.yaml")
    [record] = [r for r in zone.records if r.rtype is RType.TXT]
    query = wire.parse_query(dns.message.make_query("long.txt.example", "TXT").to_wire())
    assert isinstance(query, wire.Query)
    packed = wire.pack_reply(
        query.id, query.flags, Rcode.NOERROR, query.question, authoritative=True,
        sections=((record,), (), ()), qname=query.qname, limit=wire.MAX_TCP_MESSAGE,
    )
    [rrset] = dns.message.from_wire(packed).answer
    [rdata] = list(rrset)
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert [len(s) for s in rdata.strings] == [255, 255, 47]
    assert b"".join(rdata.strings).decode() == text
