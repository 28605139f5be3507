"""The DNS front, black-box: a real server on port 0; dnspython and raw sockets as clients."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.update
import pytest
from dnsfixtures import (
    APEX,
    BIG_TXT,
    HUGE_TXT,
    SERIAL,
    ServerThread,
    make_snapshot,
    raw_udp,
    recv_frame,
    tcp_frame,
)

from gslb.dns import wire
from gslb.dns.server import DnsServer
from gslb.engine.context import Client
from gslb.snapshot import Snapshot

HOST = "127.0.0.1"
WWW = "www." + APEX
UP_ENDPOINTS = {"192.0.2.10", "192.0.2.11"}
NEGATIVE_TTL = 30  # min(SOA TTL 3600, minimum 30)


@pytest.fixture(scope="module", params=[True, False], ids=["batched", "per-datagram"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server per UDP listener (``gslb.dns.udp``): every test here runs on both."""
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, udp_batch=request.param) as server:
        yield server.port


def udp(port: int, message: dns.message.Message) -> dns.message.Message:
    return dns.query.udp(message, HOST, port=port, timeout=2)


def tcp(port: int, message: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(message, HOST, port=port, timeout=2)


def query(
    port: int, name: str, rdtype: str | int = "A", **kwargs: object
) -> dns.message.Message:
    return udp(port, dns.message.make_query(name, rdtype, **kwargs))  # type: ignore[arg-type]


def rrset_texts(message: dns.message.Message, section: str = "answer") -> set[str]:
    return {
        f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
        for rrset in getattr(message, section)
        for rdata in rrset
    }


def assert_negative(response: dns.message.Message, rcode: int) -> None:
    assert response.rcode() == rcode
    assert response.flags & dns.flags.AA
    assert not response.answer
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name == dns.name.from_text(APEX)
    assert soa.ttl == NEGATIVE_TTL
    assert soa[0].serial == SERIAL


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def reply_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack("!HHHHHH", data[:12])


def assert_alive(port: int) -> None:
    response = query(port, APEX, "SOA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer


# --- zone semantics ------------------------------------------------------------------


def test_soa_is_authoritative(port: int) -> None:
    response = query(port, APEX, "SOA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert not response.flags & (dns.flags.RA | dns.flags.AD | dns.flags.TC)
    [soa] = response.answer
    assert soa[0].serial == SERIAL
    assert str(soa[0].mname) == "ns1." + APEX
    assert str(soa[0].rname) == "hostmaster.example.com."


def test_ns_has_glue(port: int) -> None:
    response = query(port, APEX, "NS")
    assert response.flags & dns.flags.AA
    assert rrset_texts(response) == {
        f"{APEX} NS ns1.{APEX}",
        f"{APEX} NS ns2.{APEX}",
    }
    assert rrset_texts(response, "additional") == {
        f"ns1.{APEX} A 192.0.2.53",
        f"ns2.{APEX} A 192.0.2.54",
        f"ns2.{APEX} AAAA 2001:db8::54",
    }


def test_mx_and_txt_at_apex(port: int) -> None:
    response = query(port, APEX, "MX")
    assert rrset_texts(response) == {f"{APEX} MX 10 mail.{APEX}"}
    assert rrset_texts(response, "additional") == {f"mail.{APEX} A 192.0.2.25"}
    response = query(port, APEX, "TXT")
    assert rrset_texts(response) == {f'{APEX} TXT "v=spf1 -all"'}


def test_refused_outside_zones(port: int) -> None:
    for name in ("example.org.", "example.com.", "."):
        response = query(port, name, "A")
        assert response.rcode() == dns.rcode.REFUSED
        assert not response.flags & dns.flags.AA
        assert not response.answer and not response.authority


def test_nxdomain(port: int) -> None:
    assert_negative(query(port, "nothing-here." + APEX, "A"), dns.rcode.NXDOMAIN)


def test_nodata(port: int) -> None:
    assert_negative(query(port, "mail." + APEX, "TXT"), dns.rcode.NOERROR)


def test_empty_non_terminal_is_nodata(port: int) -> None:
    assert rrset_texts(query(port, "a.b." + APEX, "A")) == {f"a.b.{APEX} A 192.0.2.99"}
    assert_negative(query(port, "b." + APEX, "A"), dns.rcode.NOERROR)
    assert_negative(query(port, "c.a.b." + APEX, "A"), dns.rcode.NXDOMAIN)


def test_cname_chased_within_zone(port: int) -> None:
    response = query(port, "alias." + APEX, "A")
    assert response.flags & dns.flags.AA
    assert rrset_texts(response) == {
        f"alias.{APEX} CNAME mail.{APEX}",
        f"mail.{APEX} A 192.0.2.25",
    }
    assert response.answer[0].rdtype == dns.rdatatype.CNAME  # the chain in order


def test_cname_to_service(port: int) -> None:
    response = query(port, "app." + APEX, "A")
    texts = rrset_texts(response)
    assert f"app.{APEX} CNAME {WWW}" in texts
    assert {text.split()[-1] for text in texts if " A " in text} == UP_ENDPOINTS


def test_cname_to_service_with_ecs_is_the_cname_alone(port: int) -> None:
    """RFC 7871 section 7.2.1: the resolver caches the alias once, for everyone, and
    asks for the service itself, whose answer comes with its own scope."""
    response = udp(port, ecs_query("app." + APEX, dns.edns.ECSOption("203.0.113.0", 24)))
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert rrset_texts(response) == {f"app.{APEX} CNAME {WWW}"}
    [option] = response.options
    assert isinstance(option, dns.edns.ECSOption) and option.scopelen == 0


def test_cname_not_chased_out_of_zone(port: int) -> None:
    response = query(port, "docs." + APEX, "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert rrset_texts(response) == {f"docs.{APEX} CNAME docs.example.org."}
    assert not response.authority


def test_cname_query_returns_the_cname(port: int) -> None:
    assert rrset_texts(query(port, "alias." + APEX, "CNAME")) == {
        f"alias.{APEX} CNAME mail.{APEX}"
    }


def test_service_answers_healthy_endpoints(port: int) -> None:
    response = query(port, WWW, "A")
    assert response.flags & dns.flags.AA
    [rrset] = response.answer
    assert rrset.ttl == 20
    assert {rdata.address for rdata in rrset} == UP_ENDPOINTS


def test_service_aaaa_without_ipv6_is_nodata(port: int) -> None:
    assert_negative(query(port, WWW, "AAAA"), dns.rcode.NOERROR)


def test_question_case_preserved(port: int) -> None:
    name = "wWw.GsLb.ExAmPlE.cOm."
    q = dns.message.make_query(name, "A")
    response = udp(port, q)
    assert response.question[0].name.labels == dns.name.from_text(name).labels
    [rrset] = response.answer
    assert rrset.name.labels == dns.name.from_text(name).labels  # the owner as asked
    assert {rdata.address for rdata in rrset} == UP_ENDPOINTS


def test_other_owner_names_as_in_zone(port: int) -> None:
    response = query(port, "GSLB.example.COM.", "NS")
    assert response.answer[0].name.labels == (b"GSLB", b"example", b"COM", b"")
    for rrset in response.additional:
        assert rrset.name.to_text() == rrset.name.to_text().lower()


def test_any_is_minimal(port: int) -> None:
    response = query(port, APEX, "ANY")
    assert response.rcode() == dns.rcode.NOERROR
    [rrset] = response.answer
    assert rrset.rdtype == dns.rdatatype.HINFO
    assert len(rrset) == 1
    assert rrset[0].cpu == b"RFC8482"
    assert_negative(query(port, "nothing." + APEX, "ANY"), dns.rcode.NXDOMAIN)
    # at an alias: its CNAME, nothing made up beside it (RFC 8482 section 4.2)
    assert rrset_texts(query(port, "alias." + APEX, "ANY")) == {f"alias.{APEX} CNAME mail.{APEX}"}


def test_unknown_types(port: int) -> None:
    assert_negative(query(port, "mail." + APEX, "SRV"), dns.rcode.NOERROR)
    assert_negative(query(port, WWW, "TYPE65280"), dns.rcode.NOERROR)
    assert_negative(query(port, "nothing." + APEX, "SRV"), dns.rcode.NXDOMAIN)
    assert query(port, "example.org.", "SRV").rcode() == dns.rcode.REFUSED
    response = query(port, "alias." + APEX, "SRV")  # the alias is followed, then NODATA
    assert rrset_texts(response) == {f"alias.{APEX} CNAME mail.{APEX}"}
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_zone_transfer_not_implemented(port: int) -> None:
    response = tcp(port, dns.message.make_query(APEX, "AXFR"))
    assert response.rcode() == dns.rcode.NOTIMP


def test_class_other_than_in_refused(port: int) -> None:
    response = query(port, "version.bind.", "TXT", rdclass=dns.rdataclass.CH)
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA
    response = query(port, WWW, "A", rdclass=dns.rdataclass.CH)
    assert response.rcode() == dns.rcode.REFUSED


def test_flags_copied(port: int) -> None:
    q = dns.message.make_query(WWW, "A")
    q.flags = dns.flags.CD  # RD clear, CD set
    response = udp(port, q)
    assert response.flags & dns.flags.CD
    assert not response.flags & dns.flags.RD
    q = dns.message.make_query(WWW, "A")  # RD set by default
    assert udp(port, q).flags & dns.flags.RD


# --- EDNS ----------------------------------------------------------------------------


def test_edns_echoed(port: int) -> None:
    q = dns.message.make_query(
        APEX, "SOA", use_edns=0, payload=4096, want_dnssec=True,
        options=[dns.edns.GenericOption(dns.edns.OptionType(65001), b"unknown")],
    )
    response = udp(port, q)
    assert response.edns == 0
    assert response.payload == 1232
    assert response.ednsflags & dns.flags.DO
    assert response.options == ()
    assert not response.flags & dns.flags.AD


def test_edns_do_not_set_when_not_asked(port: int) -> None:
    response = query(port, APEX, "SOA", use_edns=0)
    assert response.edns == 0
    assert not response.ednsflags & dns.flags.DO


def test_no_opt_without_edns(port: int) -> None:
    response = query(port, APEX, "SOA")
    assert response.edns == -1


def test_badvers(port: int) -> None:
    response = query(port, APEX, "SOA", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert not response.answer
    assert response.question[0].name == dns.name.from_text(APEX)


def test_two_opt_records_formerr(port: int) -> None:
    q = dns.message.make_query(APEX, "SOA", use_edns=0).to_wire()
    opt = q[-11:]  # dnspython writes the bare OPT record last
    qid, flags, qd, an, ns, ar = reply_header(q)
    data = header(qid, flags, qd, an, ns, ar + 1) + q[12:] + opt
    reply = raw_udp(port, data)
    assert reply is not None
    assert reply_header(reply)[1] & 0xF == dns.rcode.FORMERR
    assert_alive(port)


# --- size and truncation ------------------------------------------------------------


def test_big_answer_truncated_without_edns(port: int) -> None:
    q = dns.message.make_query("big." + APEX, "TXT")
    response = dns.query.udp(q, HOST, port=port, timeout=2, ignore_trailing=False)
    assert response.flags & dns.flags.TC
    assert not response.answer and not response.authority and not response.additional
    assert response.question[0].name == dns.name.from_text("big." + APEX)


def test_big_answer_truncated_at_edns_512(port: int) -> None:
    response = query(port, "big." + APEX, "TXT", use_edns=0, payload=512)
    assert response.flags & dns.flags.TC
    assert not response.answer
    assert response.edns == 0  # OPT kept


def test_big_answer_fits_edns_1232(port: int) -> None:
    response = query(port, "big." + APEX, "TXT", use_edns=0, payload=4096)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == len(BIG_TXT)


def test_huge_answer_capped_at_1232(port: int) -> None:
    q = dns.message.make_query("huge." + APEX, "TXT", use_edns=0, payload=65000)
    reply = raw_udp(port, q.to_wire())
    assert reply is not None and len(reply) <= 1232
    assert dns.message.from_wire(reply).flags & dns.flags.TC


def test_full_answer_over_tcp(port: int) -> None:
    response = tcp(port, dns.message.make_query("huge." + APEX, "TXT"))
    assert not response.flags & dns.flags.TC
    [rrset] = response.answer
    assert {b"".join(rdata.strings).decode() for rdata in rrset} == set(HUGE_TXT)


def test_tcp_pipelined_queries(port: int) -> None:
    queries = [
        dns.message.make_query(name, rdtype)
        for name, rdtype in ((APEX, "SOA"), (WWW, "A"), ("huge." + APEX, "TXT"), (APEX, "NS"))
    ]
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(b"".join(tcp_frame(q.to_wire()) for q in queries))
        responses = [dns.message.from_wire(recv_frame(sock)) for _ in queries]
        # and the connection stays usable
        again = dns.message.make_query(APEX, "MX")
        sock.sendall(tcp_frame(again.to_wire()))
        last = dns.message.from_wire(recv_frame(sock))
    for q, response in zip(queries, responses, strict=True):
        assert q.is_response(response)
        assert response.rcode() == dns.rcode.NOERROR and response.answer
    assert again.is_response(last)


def test_tcp_query_split_across_segments(port: int) -> None:
    frame = tcp_frame(dns.message.make_query(WWW, "A").to_wire())
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(frame)):
            sock.sendall(frame[i : i + 1])
        response = dns.message.from_wire(recv_frame(sock))
    assert response.answer


# --- malformed input -----------------------------------------------------------------


def test_opcode_notify_notimp(port: int) -> None:
    q = dns.message.make_query(APEX, "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    response = udp(port, q)
    assert response.rcode() == dns.rcode.NOTIMP
    assert response.opcode() == dns.opcode.NOTIFY
    assert not response.flags & dns.flags.AA
    assert not response.answer and not response.question


def test_opcode_update_notimp(port: int) -> None:
    update = dns.update.UpdateMessage(APEX)
    update.add("x", 300, "A", "192.0.2.1")
    response = udp(port, update)
    assert response.rcode() == dns.rcode.NOTIMP
    assert response.opcode() == dns.opcode.UPDATE
    assert_alive(port)


def test_garbage_after_header_formerr(port: int) -> None:
    reply = raw_udp(port, header(0x1234, 0x0100) + b"\xff" * 20)
    assert reply is not None
    qid, flags, qd, an, ns, ar = reply_header(reply)
    assert qid == 0x1234
    assert flags & 0x8000  # QR
    assert flags & 0x0100  # RD copied
    assert flags & 0xF == dns.rcode.FORMERR
    assert (qd, an, ns, ar) == (0, 0, 0, 0)
    assert_alive(port)


def test_trailing_bytes_formerr(port: int) -> None:
    q = dns.message.make_query(APEX, "SOA")
    reply = raw_udp(port, q.to_wire() + b"\0\0\0")
    assert reply is not None
    assert reply_header(reply)[1] & 0xF == dns.rcode.FORMERR


def test_two_questions_formerr(port: int) -> None:
    q = dns.message.make_query(APEX, "SOA")
    q.question.append(dns.message.make_query(WWW, "A").question[0])
    reply = raw_udp(port, q.to_wire())
    assert reply is not None
    qid, flags, qd, an, ns, ar = reply_header(reply)
    assert qid == q.id
    assert flags & 0xF == dns.rcode.FORMERR
    assert (qd, an, ns, ar) == (0, 0, 0, 0)
    assert_alive(port)


def test_no_questions_formerr(port: int) -> None:
    reply = raw_udp(port, header(7, 0, qd=0))
    assert reply is not None
    assert reply_header(reply)[1] & 0xF == dns.rcode.FORMERR


@pytest.mark.parametrize("data", [b"", b"\x12", b"\x12\x34" + b"\0" * 9])
def test_short_datagram_dropped(port: int, data: bytes) -> None:
    assert raw_udp(port, data, timeout=0.3) is None
    assert_alive(port)


def test_response_bit_dropped(port: int) -> None:
    q = dns.message.make_query(APEX, "SOA")
    q.flags |= dns.flags.QR
    assert raw_udp(port, q.to_wire(), timeout=0.3) is None
    assert_alive(port)


def test_compression_loop_formerr(port: int) -> None:
    # the question name is a pointer to itself
    data = header(9, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    reply = raw_udp(port, data)
    assert reply is not None
    assert reply_header(reply)[1] & 0xF == dns.rcode.FORMERR
    assert_alive(port)


# --- EDNS Client Subnet ---------------------------------------------------------------


def ecs_query(name: str, option: dns.edns.Option, rdtype: str = "A") -> dns.message.Message:
    return dns.message.make_query(name, rdtype, use_edns=0, options=[option])


@pytest.mark.parametrize(
    ("address", "source", "scope"),
    [("203.0.113.0", 24, 24), ("203.0.113.77", 32, 24), ("203.0.0.0", 16, 16), ("0.0.0.0", 0, 0)],
)
def test_ecs_echoed_with_scope(port: int, address: str, source: int, scope: int) -> None:
    response = udp(port, ecs_query(WWW, dns.edns.ECSOption(address, source)))
    assert response.rcode() == dns.rcode.NOERROR
    [option] = response.options
    assert isinstance(option, dns.edns.ECSOption)
    assert option.family == 1
    assert option.srclen == source
    assert option.scopelen == scope
    if source:
        assert option.address == address


def test_ecs_scope_zero_for_static_answer(port: int) -> None:
    response = udp(port, ecs_query("mail." + APEX, dns.edns.ECSOption("203.0.113.0", 24)))
    [option] = response.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.srclen, option.scopelen) == (24, 0)


def test_ecs_ipv6(port: int) -> None:
    response = udp(port, ecs_query(WWW, dns.edns.ECSOption("2001:db8:1234::", 48)))
    [option] = response.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.family, option.srclen) == (2, 48)
    assert option.scopelen == 48  # the sticky hash used all of the /48 (at most /56)


def test_ecs_sticky_per_subnet(port: int) -> None:
    def pick(address: str) -> list[str]:
        response = udp(port, ecs_query(WWW, dns.edns.ECSOption(address, 32)))
        return [rdata.address for rdata in response.answer[0]]

    # one /24 is one hashing bucket: the same answer, in the same order
    assert pick("203.0.113.1") == pick("203.0.113.200") == pick("203.0.113.1")


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("!HBB", 1, 20, 0) + bytes([192, 0, 15]),  # bits set beyond /20
        struct.pack("!HBB", 3, 8, 0) + bytes([10]),  # unknown family
        struct.pack("!HBB", 1, 16, 0) + bytes([192, 0, 2]),  # address longer than /16 needs
        struct.pack("!HBB", 1, 24, 0) + bytes([192, 0]),  # address shorter than /24 needs
        struct.pack("!HBB", 1, 33, 0) + bytes([192, 0, 2, 0, 0]),  # prefix beyond 32 bits
        struct.pack("!HBB", 2, 129, 0) + bytes(17),  # prefix beyond 128 bits
        struct.pack("!HB", 1, 24),  # too short to hold the fixed fields
    ],
)
def test_ecs_invalid_formerr(port: int, payload: bytes) -> None:
    q = ecs_query(WWW, dns.edns.GenericOption(dns.edns.ECS, payload))
    response = dns.message.from_wire(raw_udp(port, q.to_wire()) or b"")
    assert response.rcode() == dns.rcode.FORMERR
    assert not response.answer
    # with an OPT record, so that the resolver does not take us for a server without
    # EDNS (RFC 6891 section 7); the malformed option is not echoed
    assert response.edns == 0 and not response.options
    assert_alive(port)


def test_ecs_address_is_the_client() -> None:
    q = ecs_query(WWW, dns.edns.ECSOption("203.0.113.77", 32))
    parsed = wire.parse_query(q.to_wire())
    assert isinstance(parsed, wire.Query)
    assert parsed.client == Client(IPv4Address("203.0.113.0"), 24)  # at most /24 of it
    plain = wire.parse_query(dns.message.make_query(WWW, "A").to_wire())
    assert isinstance(plain, wire.Query)
    assert plain.client is None  # the server falls back to the transport's source


# --- the respond() boundary ----------------------------------------------------------


def test_unexpected_error_is_servfail_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("registry exploded")

    server = DnsServer(broken)
    q = dns.message.make_query(WWW, "A")
    with caplog.at_level(logging.ERROR, logger="gslb.dns"):
        reply = server.respond(q.to_wire(), ("192.0.2.1", 5353), tcp=False)
    assert reply is not None
    response = dns.message.from_wire(reply)
    assert response.id == q.id
    assert response.rcode() == dns.rcode.SERVFAIL
    assert len(caplog.records) == 1
    assert "registry exploded" in caplog.text


def test_snapshot_read_per_query() -> None:
    calls = []
    snapshot = make_snapshot()

    def current() -> Snapshot:
        calls.append(1)
        return snapshot if len(calls) == 1 else Snapshot()

    server = DnsServer(current)
    q = dns.message.make_query(WWW, "A").to_wire()
    first = dns.message.from_wire(server.respond(q, ("192.0.2.1", 53), tcp=False) or b"")
    second = dns.message.from_wire(server.respond(q, ("192.0.2.1", 53), tcp=False) or b"")
    assert first.rcode() == dns.rcode.NOERROR
    assert second.rcode() == dns.rcode.REFUSED


# --- transports ----------------------------------------------------------------------


def test_tcp_idle_timeout() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, tcp_idle_timeout=0.2) as server, socket.create_connection(
        (HOST, server.port), timeout=3
    ) as sock:
        assert sock.recv(1) == b""  # closed by the server, not by our timeout


def test_tcp_connection_cap() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, max_tcp_connections=2) as server:
        frame = tcp_frame(dns.message.make_query(APEX, "SOA").to_wire())
        with socket.create_connection((HOST, server.port), timeout=3) as one, \
                socket.create_connection((HOST, server.port), timeout=3) as two:
            for sock in (one, two):
                sock.sendall(frame)
                assert dns.message.from_wire(recv_frame(sock)).answer
            with (
                socket.create_connection((HOST, server.port), timeout=3) as three,
                contextlib.suppress(ConnectionResetError),  # aborted: maybe a reset
            ):
                assert three.recv(1) == b""
            one.sendall(frame)  # the admitted ones keep working
            assert dns.message.from_wire(recv_frame(one)).answer


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_listener() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, host="::1") as server:
        q = dns.message.make_query(WWW, "A")
        response = dns.query.udp(q, "::1", port=server.port, timeout=2)
        assert {rdata.address for rdata in response.answer[0]} == UP_ENDPOINTS
        response = dns.query.tcp(q, "::1", port=server.port, timeout=2)
        assert response.answer


def test_still_answers_after_bad_input(port: int) -> None:
    assert_alive(port)
    assert query(port, WWW, "A").answer
