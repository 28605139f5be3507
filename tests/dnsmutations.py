"""Hypothesis strategies for hostile DNS datagrams: valid queries and the ways to break them.

Shared by the property test (tests/test_fuzz.py) and the seed corpus of the atheris
target (fuzz/respond.py).
"""

from __future__ import annotations

import struct

import dns.edns
import dns.message
from hypothesis import strategies as st

APEX = "gslb.example.com."
NAMES = [APEX, "www." + APEX, "huge." + APEX, "big." + APEX, "b." + APEX, "a.b." + APEX,
         "alias." + APEX, "nothing." + APEX, "example.org.", ".", "WwW.GsLb.ExAmPlE.cOm."]
TYPES = ["A", "AAAA", "SOA", "NS", "MX", "TXT", "CNAME", "ANY", "SRV", "AXFR", "OPT", "TYPE65280"]


def seed_queries() -> list[bytes]:
    """A spread of well-formed queries: every name and type, with and without EDNS and ECS."""
    seeds = []
    for index, name in enumerate(NAMES):
        for rdtype in TYPES:
            seeds.append(dns.message.make_query(name, rdtype).to_wire())
        ecs = (dns.edns.ECSOption("198.51.100.0", 16 + index) if index % 2
               else dns.edns.ECSOption("2001:db8::", 40 + index))
        seeds.append(dns.message.make_query(
            name, "A", use_edns=index % 2, payload=512 + 300 * index, want_dnssec=bool(index % 3),
            options=[ecs]).to_wire())
    return seeds


_SEEDS = seed_queries()
_COUNTS = st.sampled_from([0, 1, 2, 3, 255, 0xFFFF])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(
            ["truncate", "counts", "pointer", "labels", "opt", "ecs", "flip", "append"]))
        if kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "counts" and len(data) >= 12:
            field = draw(st.integers(2, 5))
            data[field * 2 : field * 2 + 2] = struct.pack("!H", draw(_COUNTS))
        elif kind == "pointer" and len(data) > 12:
            # a compression pointer anywhere: to itself, forwards, past the end, into a loop
            at = draw(st.integers(12, len(data) - 1))
            target = draw(st.one_of(st.just(at), st.integers(0, 0x3FFF)))
            data[at : at + 2] = struct.pack("!H", 0xC000 | target)
        elif kind == "labels":
            count = draw(st.integers(60, 300))
            label = bytes([draw(st.integers(0, 63))]) + b"x" * draw(st.integers(0, 3))
            at = draw(st.integers(12, max(12, len(data))))
            data[at:at] = label * count
        elif kind == "opt":
            options = draw(st.binary(max_size=40))
            length = draw(st.one_of(st.just(len(options)), st.integers(0, 0xFFFF)))
            opt = b"\0" + struct.pack("!HHIH", 41, draw(st.integers(0, 0xFFFF)),
                                      draw(st.integers(0, 0xFFFFFFFF)), length) + options
            data += opt
            _count_one_more_additional(data)
        elif kind == "ecs":
            family = draw(st.sampled_from([0, 1, 2, 3]))
            source = draw(st.integers(0, 255))
            address = draw(st.binary(max_size=20))
            body = struct.pack("!HBB", family, source, draw(st.integers(0, 255))) + address
            length = draw(st.one_of(st.just(len(body)), st.integers(0, 40)))
            options = struct.pack("!HH", 8, length) + body
            data += b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(options)) + options
            _count_one_more_additional(data)
        elif kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


def _count_one_more_additional(data: bytearray) -> None:
    if len(data) >= 12:
        data[10:12] = struct.pack("!H", (struct.unpack("!H", data[10:12])[0] + 1) & 0xFFFF)


datagrams = st.one_of(st.binary(max_size=600), _mutated())
"""Random bytes, or a valid query broken in one to four ways."""
