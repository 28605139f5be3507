"""Protocol conformance, against the running server: the checks of ISC's EDNS compliance
tester (genreport) and RFC 8906, and the header hygiene Knot DNS and NSD keep.

Every reply is read with dnspython and must keep the query's ID and question.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from dnsfixtures import (
    APEX,
    HUGE_TXT,
    SERIAL,
    ServerThread,
    make_snapshot,
    make_zone,
    raw_udp,
    recv_frame,
    tcp_frame,
)

from gslb.config import load_zone_text
from gslb.snapshot import Snapshot, make_zone_view

HOST = "127.0.0.1"
WWW = "www." + APEX
UP_ENDPOINTS = {"192.0.2.10", "192.0.2.11"}

# A second zone whose SOA TTL is below its minimum: negative answers take the SOA TTL.
LOW = "low.example."
LOW_ZONE = """
zone: low.example
soa: {contact: hostmaster@low.example, ttl: 20, minimum: 300}
nameservers: {ns1.example.net.: []}
records:
  "@": {A: 192.0.2.200}
"""

Z_FLAG = 0x0040  # the reserved header bit
AD_FLAG = 0x0020


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    base = make_snapshot()
    low = load_zone_text(LOW_ZONE, "low.yaml")
    snapshot = Snapshot(
        generation=1, zones={**base.zones, low.apex: make_zone_view(low, 7, {})}
    )
    with ServerThread(lambda: snapshot) as server:
        yield server.port


def exchange(port: int, message: dns.message.Message | bytes, *, keep_question: bool = True,
             ignore_trailing: bool = False) -> dns.message.Message:
    """Send over UDP; the reply, which must parse, answer the ID and repeat the question."""
    wire = message if isinstance(message, bytes) else message.to_wire()
    data = raw_udp(port, wire)
    assert data is not None, "no reply"
    reply = dns.message.from_wire(data, ignore_trailing=ignore_trailing)
    assert reply.id == struct.unpack("!H", wire[:2])[0]
    assert reply.flags & dns.flags.QR
    assert not struct.unpack("!H", data[2:4])[0] & Z_FLAG
    if keep_question:
        asked = dns.message.from_wire(wire).question
        assert [(q.name.labels, q.rdtype, q.rdclass) for q in reply.question] == [
            (q.name.labels, q.rdtype, q.rdclass) for q in asked
        ]
    return reply


def make(name: str = APEX, rdtype: str | int = "SOA", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


def raw_query(name: str = APEX, rdtype: int = 6, *, qid: int = 0x1234, flags: int = 0,
              qdcount: int = 1, opt: bytes = b"", rdclass: int = 1) -> bytes:
    """A query written by hand, for what dnspython will not write."""
    qname = dns.name.from_text(name).to_wire()
    question = qname + struct.pack("!HH", rdtype, rdclass)
    return struct.pack("!HHHHHH", qid, flags, qdcount, 0, 0, 1 if opt else 0) + question + opt


def opt_record(payload: int = 1232, version: int = 0, flags: int = 0, options: bytes = b"") -> bytes:
    return b"\0" + struct.pack("!HHBBHH", 41, payload, 0, version, flags, len(options)) + options


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


# --- genreport / RFC 8906 ------------------------------------------------------------


def test_plain_query(port: int) -> None:
    reply = exchange(port, make(use_edns=False))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.edns == -1  # no OPT without one in the query
    assert reply.answer[0].rdtype == dns.rdatatype.SOA


def test_edns0(port: int) -> None:
    reply = exchange(port, make(use_edns=0, payload=4096))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == 0
    assert reply.payload == 1232
    assert reply.ednsflags == 0
    assert reply.options == ()
    assert reply.answer


def test_edns_version_1_is_badvers(port: int) -> None:
    reply = exchange(port, make(use_edns=1))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0  # we speak version 0, and say so
    assert not reply.answer and not reply.authority
    assert not reply.flags & dns.flags.AA


def test_unknown_option_ignored_not_echoed(port: int) -> None:
    unknown = dns.edns.GenericOption(dns.edns.OptionType(100), b"\x01\x02")
    reply = exchange(port, make(use_edns=0, options=[unknown]))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    assert reply.options == ()


def test_several_options_ignored(port: int) -> None:
    # genreport's optlist: NSID, ECS, EXPIRE, COOKIE, KEEPALIVE, PADDING at once
    opts = (option(3, b"") + option(8, b"\0\1\0\0") + option(9, b"") + option(10, b"01234567")
            + option(11, b"") + option(12, b"\0" * 8))
    reply = exchange(port, raw_query(opt=opt_record(options=opts)))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    assert [o.otype for o in reply.options] == [dns.edns.OptionType.ECS]  # only ECS echoed


def test_unknown_edns_flags_ignored_and_cleared(port: int) -> None:
    reply = exchange(port, raw_query(opt=opt_record(flags=0x7F7F)))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    assert reply.ednsflags == 0


def test_unknown_option_with_version_1(port: int) -> None:
    reply = exchange(port, raw_query(opt=opt_record(version=1, options=option(100, b"x"))))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.options == ()
    assert not reply.answer


def test_do_bit_answered_and_echoed(port: int) -> None:
    reply = exchange(port, make(use_edns=0, want_dnssec=True))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    assert reply.ednsflags == dns.flags.DO
    assert not reply.flags & dns.flags.AD  # nothing here is signed


def test_do_bit_with_unknown_flags(port: int) -> None:
    reply = exchange(port, raw_query(opt=opt_record(flags=0x8000 | 0x0100)))
    assert reply.ednsflags == dns.flags.DO


def test_small_udp_size_truncates_then_tcp_has_all(port: int) -> None:
    query = make("huge." + APEX, "TXT", use_edns=0, payload=512)
    reply = exchange(port, query)
    assert reply.flags & dns.flags.TC
    assert not reply.answer and not reply.authority and not reply.additional
    assert reply.edns == 0
    full = dns.query.tcp(query, HOST, port=port, timeout=3)
    assert not full.flags & dns.flags.TC
    assert sorted(s.decode() for rdata in full.answer[0] for s in rdata.strings) == sorted(
        HUGE_TXT
    )


def test_tcp_pipelined_queries_matched_by_id(port: int) -> None:
    names = [WWW, APEX, "mail." + APEX, "huge." + APEX, "nothing." + APEX, "example.org."]
    queries = {}
    for index, name in enumerate(names):
        query = make(name, "TXT" if name.startswith("huge") else "A")
        query.id = 1000 + index
        queries[query.id] = query
    with socket.create_connection((HOST, port), timeout=3) as sock:
        sock.sendall(b"".join(tcp_frame(q.to_wire()) for q in queries.values()))
        replies = [dns.message.from_wire(recv_frame(sock)) for _ in queries]
    assert sorted(r.id for r in replies) == sorted(queries)
    for reply in replies:
        asked = queries[reply.id]
        assert reply.question == asked.question
        assert not reply.flags & dns.flags.TC


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(port: int, qdcount: int) -> None:
    question = dns.name.from_text(APEX).to_wire() + struct.pack("!HH", 6, 1)
    data = struct.pack("!HHHHHH", 0x4242, 0x0100, qdcount, 0, 0, 0) + question * qdcount
    reply = exchange(port, data, keep_question=False)
    assert reply.rcode() == dns.rcode.FORMERR
    assert not reply.answer and not reply.authority
    assert not reply.flags & dns.flags.AA


@pytest.mark.parametrize("rdclass", [dns.rdataclass.CH, dns.rdataclass.HS, dns.rdataclass.ANY,
                                     dns.rdataclass.NONE, 1234])
def test_unknown_class_refused(port: int, rdclass: int) -> None:
    reply = exchange(port, raw_query(rdclass=rdclass))
    assert reply.rcode() == dns.rcode.REFUSED  # README, DNS behaviour: REFUSED
    assert not reply.flags & dns.flags.AA
    assert not reply.answer


def test_any_is_minimal(port: int) -> None:
    reply = exchange(port, make(APEX, "ANY"))
    assert reply.rcode() == dns.rcode.NOERROR
    [rrset] = reply.answer
    assert rrset.rdtype == dns.rdatatype.HINFO and len(rrset) == 1
    assert rrset[0].cpu == b"RFC8482"
    reply = exchange(port, make(WWW, "ANY"))
    assert sum(len(rrset) for rrset in reply.answer) <= 1  # never the whole zone


def test_qr_set_is_dropped(port: int) -> None:
    data = make().to_wire()
    data = data[:2] + struct.pack("!H", struct.unpack("!H", data[2:4])[0] | 0x8000) + data[4:]
    assert raw_udp(port, data, timeout=0.5) is None


def test_mixed_case_echoed(port: int) -> None:
    reply = exchange(port, make("WwW.gSlB.ExAmPle.CoM.", "A"))
    assert reply.question[0].name.labels[0] == b"WwW"
    assert {r.address for r in reply.answer[0]} == UP_ENDPOINTS


def test_maximum_label_and_name(port: int) -> None:
    apex_wire = len(dns.name.from_text(APEX).to_wire())
    room = 255 - apex_wire  # bytes left for labels in front of the apex
    labels = []
    while room > 1:
        size = min(63, room - 1)
        labels.append(random.Random(len(labels)).choice("abcXYZ") * size)
        room -= size + 1
    name = ".".join(labels) + "." + APEX
    assert len(dns.name.from_text(name).to_wire()) == 255
    reply = exchange(port, make(name, "A"))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    reply = exchange(port, make(name, "A", use_edns=0))
    assert reply.rcode() == dns.rcode.NXDOMAIN


def test_name_over_255_bytes_is_formerr(port: int) -> None:
    qname = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\0"  # 257 bytes
    data = struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    reply = exchange(port, data, keep_question=False)
    assert reply.rcode() == dns.rcode.FORMERR


def test_root(port: int) -> None:
    for rdtype in ("SOA", "NS", "A"):
        reply = exchange(port, make(".", rdtype))
        assert reply.rcode() == dns.rcode.REFUSED  # not ours
        assert not reply.flags & dns.flags.AA


# --- header hygiene ------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0, 0x0100, 0x0010, 0x0110, Z_FLAG, Z_FLAG | 0x0110,
                                   AD_FLAG, 0x0400 | 0x0200 | 0x0080])
@pytest.mark.parametrize("name", [WWW, "nothing." + APEX, "example.org."])
def test_header_flags(port: int, flags: int, name: str) -> None:
    reply = exchange(port, raw_query(name, 1, flags=flags))
    assert bool(reply.flags & dns.flags.RD) == bool(flags & 0x0100)  # RD copied
    assert bool(reply.flags & dns.flags.CD) == bool(flags & 0x0010)  # CD copied
    assert not reply.flags & dns.flags.AD  # AD only with AD or DO asked, and we sign nothing
    assert not reply.flags & dns.flags.RA  # no recursion here
    assert not reply.flags & dns.flags.TC
    assert bool(reply.flags & dns.flags.AA) == (name != "example.org.")


@pytest.mark.parametrize("body", [b"", b"\x03abc"])  # no question; a cut-off one
def test_cd_copied_on_errors(port: int, body: bytes) -> None:
    data = struct.pack("!HHHHHH", 9, 0x0110, 1 if body else 0, 0, 0, 0) + body
    reply = exchange(port, data, keep_question=False)
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.flags & dns.flags.CD and reply.flags & dns.flags.RD


@pytest.mark.parametrize("opcode", [1, 3, 6, 7, 15])
@pytest.mark.parametrize("edns", [False, True])
def test_unknown_opcode_notimp_with_empty_sections(port: int, opcode: int, edns: bool) -> None:
    data = raw_query(flags=opcode << 11, opt=opt_record() if edns else b"")
    reply_data = raw_udp(port, data)
    assert reply_data is not None
    reply = dns.message.from_wire(reply_data)
    assert reply.id == 0x1234
    assert reply.opcode() == opcode
    assert reply.rcode() == dns.rcode.NOTIMP
    assert not reply.question and not reply.answer and not reply.authority
    assert not reply.flags & dns.flags.AA
    assert reply.edns == (0 if edns else -1)


def test_two_opt_records_formerr(port: int) -> None:
    data = raw_query(opt=opt_record())
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    data = struct.pack("!HHHHHH", qid, flags, qd, an, ns, 2) + data[12:] + opt_record()
    reply_data = raw_udp(port, data)
    assert reply_data is not None
    assert struct.unpack("!H", reply_data[:2])[0] == qid
    assert reply_data[3] & 0xF == dns.rcode.FORMERR


def test_our_udp_size_is_1232(port: int) -> None:
    big = exchange(port, make("big." + APEX, "TXT", use_edns=0, payload=4096))
    assert big.payload == 1232 and big.answer and not big.flags & dns.flags.TC
    huge = exchange(port, make("huge." + APEX, "TXT", use_edns=0, payload=65535))
    assert huge.flags & dns.flags.TC
    assert not huge.answer  # never a partial RRset


def test_no_amplification_without_edns(port: int) -> None:
    for name, rdtype in [("big." + APEX, "TXT"), ("huge." + APEX, "TXT"), (APEX, "NS"),
                         (APEX, "ANY"), (WWW, "A"), (APEX, "MX")]:
        data = raw_udp(port, make(name, rdtype).to_wire())
        assert data is not None and len(data) <= 512


def test_negative_soa_ttl_is_min_of_ttl_and_minimum(port: int) -> None:
    reply = exchange(port, make("nothing." + APEX, "A"))  # SOA TTL 3600, minimum 30
    assert reply.rcode() == dns.rcode.NXDOMAIN
    [soa] = reply.authority
    assert soa.ttl == 30 and soa[0].serial == SERIAL
    reply = exchange(port, make("nothing." + LOW, "A"))  # SOA TTL 20, minimum 300
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].ttl == 20
    reply = exchange(port, make(LOW, "TXT"))  # NODATA, the same SOA
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert reply.authority[0].ttl == 20


def test_empty_non_terminal_is_nodata(port: int) -> None:
    reply = exchange(port, make("b." + APEX, "A"))  # a.b exists; b is empty
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.answer
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_answer_after_all_of_the_above(port: int) -> None:
    reply = exchange(port, make(WWW, "A"))
    assert {r.address for r in reply.answer[0]} == UP_ENDPOINTS
    assert make_zone().apex == APEX
