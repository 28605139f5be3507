"""The lean query reader agrees with the full parser on every query it accepts.

``wire.parse_query`` reads the common query shape (one question, at most an OPT with a
Client Subnet and other options) with ``_parse_common`` and everything else with
``_parse_full``. Hypothesis draws hostile datagrams (tests/dnsmutations.py) and
well-formed common queries: whatever the lean reader accepts, the full parser must
give the same Query for; it must accept every common query; and it must decline the
shapes it leaves to the full parser (whose decisions the conformance suite pins).
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import pytest
from dnsmutations import datagrams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.dns import wire

PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in b".\\")  # written as themselves in text
LABEL = st.one_of(st.binary(min_size=1, max_size=63), st.binary(min_size=1, max_size=63).map(
    lambda label: bytes(PLAIN[c % len(PLAIN)] for c in label)))
PLAIN_LABEL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*",
                      min_size=1, max_size=63)
TYPES = st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 255, 65, 64, 99, 65280])


@st.composite
def common_queries(draw: st.DrawFn) -> bytes:
    """A query as resolvers send it: any letter case, EDNS or not, ECS of any prefix, a cookie."""
    labels = draw(st.lists(PLAIN_LABEL, min_size=1, max_size=6))
    name = ".".join(labels)[:250].strip(".") or "a"
    options: list[dns.edns.Option] = []
    use_edns = draw(st.booleans())
    if use_edns and draw(st.booleans()):
        if draw(st.booleans()):
            options.append(dns.edns.ECSOption(
                draw(st.sampled_from(["198.51.100.0", "10.0.0.0", "0.0.0.0", "203.0.113.128"])),
                draw(st.integers(0, 32))))
        else:
            options.append(dns.edns.ECSOption(
                draw(st.sampled_from(["2001:db8::", "::", "fe80::"])), draw(st.integers(0, 128))))
    if use_edns and draw(st.booleans()):
        options.insert(draw(st.integers(0, len(options))),
                       dns.edns.GenericOption(10, draw(st.binary(min_size=8, max_size=40))))  # cookie
    if use_edns and draw(st.booleans()):
        options.append(dns.edns.GenericOption(65001, draw(st.binary(max_size=10))))  # unknown
    message = dns.message.make_query(
        name, draw(TYPES), use_edns=0 if use_edns else -1, options=options or None,
        payload=draw(st.sampled_from([512, 1232, 4096, 65535, 0])), want_dnssec=draw(st.booleans()),
    )
    message.id = draw(st.integers(0, 0xFFFF))
    message.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.RD | dns.flags.CD, dns.flags.AD]))
    return message.to_wire()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(datagrams, common_queries()))
def test_lean_reader_agrees_with_the_full_parser(data: bytes) -> None:
    lean = wire._parse_common(data)
    full = wire._parse_full(data)
    if lean is not None:
        assert isinstance(full, wire.Query)
        assert lean == full
    assert wire.parse_query(data) == full


@settings(max_examples=800, deadline=None)
@given(data=common_queries())
def test_lean_reader_accepts_every_common_query(data: bytes) -> None:
    lean = wire._parse_common(data)
    assert lean is not None
    assert lean == wire._parse_full(data)


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(LABEL, min_size=1, max_size=4), qtype=TYPES)
def test_names_with_any_plain_bytes(labels: list[bytes], qtype: int) -> None:
    data = struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"".join(
        bytes((len(label),)) + label for label in labels) + b"\0" + struct.pack("!HH", qtype, 1)
    full = wire._parse_full(data)
    lean = wire._parse_common(data)
    if len(data) - 16 > 255:  # longer than a name may be
        assert lean is None and not isinstance(full, wire.Query)
        return
    assert isinstance(full, wire.Query)
    if all(not label.translate(None, PLAIN) for label in labels):
        assert lean == full
    else:
        assert lean is None  # escapes in text: left to the full parser


def _query(name: str = "www.example.com", rdtype: str = "A", **kwargs: object) -> bytearray:
    return bytearray(dns.message.make_query(name, rdtype, **kwargs).to_wire())  # type: ignore[arg-type]


def _with_opt(options: bytes, ttl: int = 0, payload: int = 1232) -> bytes:
    data = _query()
    data[10:12] = b"\0\1"
    return bytes(data) + b"\0" + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def _ecs(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    body = struct.pack("!HBB", family, source, scope) + address
    return struct.pack("!HH", 8, len(body)) + body


def _escaped_label() -> bytes:
    data = _query()
    data[13] = ord(" ")  # "w w.example.com": a label byte written as \032 in text
    return bytes(data)


def _compressed() -> bytes:
    data = _query("www.example.com")
    # the question's name as "www" + a pointer to itself at offset 12 is a loop; point
    # instead into a second copy placed after the question (forward: FORMERR)
    return bytes(data[:12]) + b"\xc0\x0c" + bytes(data[-4:])


DECLINED = {
    "the root name": bytes(_query(".")),
    "a label byte that needs an escape": _escaped_label(),
    "a compressed question name": _compressed(),
    "two Client Subnet options": _with_opt(_ecs(1, 24, b"\xc6\x33\x64") * 2),
    "a malformed Client Subnet (address bits beyond the prefix)": _with_opt(_ecs(1, 20, b"\xc6\x33\x6f")),
    "a Client Subnet of family 3": _with_opt(_ecs(3, 0, b"")),
    "a Client Subnet address too long": _with_opt(_ecs(1, 8, b"\xc6\x33")),
    "EDNS version 1": _with_opt(b"", ttl=1 << 16),
    "a truncated option": _with_opt(b"\0\x0a\0\x08abc"),
    "trailing bytes": bytes(_query()) + b"\0",
    "type AXFR": bytes(_query(rdtype="AXFR")),
    "type OPT": bytes(_query(rdtype="OPT")),
    "class CH": bytes(dns.message.make_query("version.bind", "TXT", rdclass="CH").to_wire()),
    "a response": bytes([0, 1, 0x80]) + bytes(_query())[3:],
    "opcode NOTIFY": bytes(dns.message.make_query("www.example.com", "SOA").to_wire()[:2]) + b"\x20\0"
    + bytes(_query("www.example.com", "SOA"))[4:],
    "two questions": bytes(_query()[:4]) + b"\0\2" + bytes(_query()[6:]) + bytes(_query()[12:]),
    "an answer record": bytes(_query()[:6]) + b"\0\1" + bytes(_query()[8:]) + b"\xc0\x0c" + struct.pack(
        "!HHIH", 1, 1, 0, 4) + b"\1\2\3\4",
    "too short": b"\0\1\0\0\0\1\0\0\0\0\0\0\0",
}


@pytest.mark.parametrize("name", list(DECLINED))
def test_lean_reader_declines_what_the_full_parser_decides(name: str) -> None:
    data = DECLINED[name]
    assert wire._parse_common(data) is None
    assert wire.parse_query(data) == wire._parse_full(data)


def test_declined_valid_queries_are_still_answered() -> None:
    for name in ("the root name", "a label byte that needs an escape"):
        assert isinstance(wire.parse_query(DECLINED[name]), wire.Query), name


def test_unknown_options_are_ignored_on_the_lean_path() -> None:
    options = (struct.pack("!HH", 65001, 3) + b"xyz" + _ecs(1, 24, b"\xc6\x33\x64")
               + struct.pack("!HH", 10, 8) + b"c" * 8)
    query = wire._parse_common(_with_opt(options))
    assert query is not None and query.client is not None
    assert str(query.client.address) == "198.51.100.0" and query.client.source_prefix == 24
