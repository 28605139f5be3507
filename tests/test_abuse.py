"""Abuse of the DNS side: slow and silent TCP clients, response rate limiting, amplification.

Real servers on port 0; raw sockets and dnspython as clients.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from ipaddress import IPv4Address, IPv6Address

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnsfixtures import APEX, ServerThread, make_snapshot, raw_udp, recv_frame, tcp_frame

from gslb.dns.rrl import ResponseRateLimiter, truncate
from gslb.dns.server import DnsServer

HOST = "127.0.0.1"
WWW = "www." + APEX
SOA_QUERY = dns.message.make_query(APEX, "SOA")


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), waiting up to its timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def tcp_ask(port: int, timeout: float = 2.0) -> dns.message.Message:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(tcp_frame(SOA_QUERY.to_wire()))
        return dns.message.from_wire(recv_frame(sock))


# --- TCP -----------------------------------------------------------------------------


@pytest.mark.parametrize("message", [b"", b"\x12\x34", b"x" * 11])
def test_tcp_message_without_header_closes(message: bytes) -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot) as server, \
            socket.create_connection((HOST, server.port), timeout=3) as sock:
        sock.sendall(tcp_frame(message) + tcp_frame(SOA_QUERY.to_wire()))
        assert closed_by_server(sock)
        assert tcp_ask(server.port).answer


def test_stalled_partial_message_closed_after_read_timeout() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, tcp_read_timeout=0.3) as server, \
            socket.create_connection((HOST, server.port), timeout=3) as sock:
        frame = tcp_frame(SOA_QUERY.to_wire())
        sock.sendall(frame[:5])  # the length and a little: then nothing
        start = time.monotonic()
        assert closed_by_server(sock)
        took = time.monotonic() - start
        assert 0.25 <= took < 2.0, took


def test_byte_at_a_time_closed_but_idle_between_messages_allowed() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, tcp_read_timeout=0.3, tcp_idle_timeout=5) as server:
        frame = tcp_frame(SOA_QUERY.to_wire())
        with socket.create_connection((HOST, server.port), timeout=3) as sock:
            sent = 0
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for byte in frame:  # slowloris: one byte every 0.1 s
                    sock.send(bytes([byte]))
                    sent += 1
                    time.sleep(0.1)
            assert sent < len(frame)  # the server hung up before the message was whole
            assert closed_by_server(sock)
        with socket.create_connection((HOST, server.port), timeout=3) as sock:
            for _ in range(2):  # a pause of more than the read timeout between whole messages
                sock.sendall(frame)
                assert dns.message.from_wire(recv_frame(sock)).answer
                time.sleep(0.5)


def test_silent_connections_cannot_keep_others_out() -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, max_tcp_connections=20, tcp_read_timeout=0.3) as server, \
            contextlib.ExitStack() as stack:
        silent = [stack.enter_context(socket.create_connection((HOST, server.port), timeout=3))
                  for _ in range(20)]  # the whole limit, saying nothing
        time.sleep(0.5)
        frame = tcp_frame(SOA_QUERY.to_wire())
        for _ in range(10):  # newcomers get in, each in the place of a silent one
            sock = stack.enter_context(socket.create_connection((HOST, server.port), timeout=3))
            sock.sendall(frame)
            assert dns.message.from_wire(recv_frame(sock)).answer
        evicted = 0
        for sock in silent:
            sock.settimeout(0.05)
            evicted += closed_by_server(sock)
        assert evicted == 10


def test_slowloris_cannot_keep_others_out() -> None:
    snapshot = make_snapshot()
    limit = 16
    stop = threading.Event()
    with ServerThread(lambda: snapshot, max_tcp_connections=limit, tcp_read_timeout=0.3) as server:

        def attacker() -> None:
            deadline = time.monotonic() + 10  # bounded in time
            conns: list[socket.socket] = []
            sent: dict[socket.socket, int] = {}
            frame = tcp_frame(SOA_QUERY.to_wire())
            while not stop.is_set() and time.monotonic() < deadline:
                while len(conns) < limit:  # keep the limit full of dribbling connections
                    try:
                        conns.append(socket.create_connection((HOST, server.port), timeout=1))
                    except OSError:
                        break
                for sock in list(conns):
                    try:
                        sock.send(frame[sent.get(sock, 0) % len(frame):][:1])  # a byte a time
                        sent[sock] = sent.get(sock, 0) + 1
                    except OSError:
                        conns.remove(sock)
                        sock.close()
                time.sleep(0.05)
            for sock in conns:
                sock.close()

        thread = threading.Thread(target=attacker)
        thread.start()
        try:
            time.sleep(0.5)
            answered = 0
            for _ in range(20):
                with contextlib.suppress(OSError):
                    answered += bool(tcp_ask(server.port, timeout=1).answer)
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(15)
        assert answered >= 18, answered


# --- response rate limiting ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def replies() -> dict[str, bytes]:
    server = DnsServer(make_snapshot)
    source = ("192.0.2.1", 5300)

    def reply(name: str, rdtype: str = "A") -> bytes:
        data = server.respond(dns.message.make_query(name, rdtype).to_wire(), source, False)
        assert data is not None
        return data

    return {
        "www": reply(WWW), "WWW": reply(WWW.upper()), "mail": reply("mail." + APEX),
        "nx1": reply("one." + APEX), "nx2": reply("two." + APEX),
        "refused": reply("example.org."), "huge": reply("huge." + APEX, "TXT"),
    }


def run(rrl: ResponseRateLimiter, reply: bytes, client: str, count: int) -> tuple[int, int, int]:
    """(sent whole, sent truncated, dropped) of ``count`` identical replies."""
    whole = truncated = dropped = 0
    for _ in range(count):
        out = rrl.limit(reply, IPv4Address(client) if "." in client else IPv6Address(client))
        if out is None:
            dropped += 1
        elif out == reply:
            whole += 1
        else:
            assert out == truncate(reply)
            truncated += 1
    return whole, truncated, dropped


def test_rrl_rate_and_slip(replies: dict[str, bytes]) -> None:
    clock = Clock()
    rrl = ResponseRateLimiter(10, slip=2, clock=clock)
    assert run(rrl, replies["www"], "198.51.100.1", 30) == (10, 10, 10)
    clock.now += 0.5  # half a second refills five
    assert run(rrl, replies["www"], "198.51.100.7", 10) == (5, 2, 3)  # the same /24
    clock.now += 10  # never more than a second's worth saved up
    assert run(rrl, replies["www"], "198.51.100.1", 20)[0] == 10


def test_rrl_keys(replies: dict[str, bytes]) -> None:
    clock = Clock()
    rrl = ResponseRateLimiter(5, slip=0, clock=clock)
    assert run(rrl, replies["www"], "198.51.100.1", 5) == (5, 0, 0)
    assert run(rrl, replies["WWW"], "198.51.100.1", 1) == (0, 0, 1)  # case does not matter
    assert run(rrl, replies["www"], "198.51.101.1", 5) == (5, 0, 0)  # another /24
    assert run(rrl, replies["mail"], "198.51.100.1", 5) == (5, 0, 0)  # another question
    # NXDOMAIN: one bucket per network whatever the name (random names do not escape)
    assert run(rrl, replies["nx1"], "198.51.100.1", 3) == (3, 0, 0)
    assert run(rrl, replies["nx2"], "198.51.100.1", 3) == (2, 0, 1)
    assert run(rrl, replies["refused"], "198.51.100.1", 6) == (5, 0, 1)  # errors alike
    # IPv6: per /56
    assert run(rrl, replies["www"], "2001:db8:0:1::1", 5) == (5, 0, 0)
    assert run(rrl, replies["www"], "2001:db8:0:ff::2", 1) == (0, 0, 1)
    assert run(rrl, replies["www"], "2001:db8:0:100::1", 1) == (1, 0, 0)


def test_rrl_slip_one_truncates_all(replies: dict[str, bytes]) -> None:
    rrl = ResponseRateLimiter(1, slip=1, clock=Clock())
    assert run(rrl, replies["mail"], "192.0.2.1", 5) == (1, 4, 0)
    small = dns.message.from_wire(truncate(replies["www"]))
    assert small.flags & dns.flags.TC and small.flags & dns.flags.AA
    assert not small.answer and not small.authority and not small.additional
    assert small.question[0].name.to_text() == WWW


def test_rrl_table_is_bounded(replies: dict[str, bytes]) -> None:
    clock = Clock()
    rrl = ResponseRateLimiter(5, table_size=1000, clock=clock)
    for index in range(20_000):  # a spray of spoofed networks
        rrl.limit(replies["www"], IPv4Address(0x0A000000 + (index << 8)))
        clock.now += 0.00001
    assert len(rrl._buckets) <= 1000


def test_rrl_on_the_running_server() -> None:
    snapshot = make_snapshot()
    rrl = ResponseRateLimiter(20, slip=2)
    with ServerThread(lambda: snapshot, rrl=rrl) as server:
        wire = SOA_QUERY.to_wire()
        whole = truncated = dropped = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            start = time.monotonic()
            for _ in range(100):
                sock.sendto(wire, (HOST, server.port))
                try:
                    reply = dns.message.from_wire(sock.recv(2048))
                except TimeoutError:
                    dropped += 1
                    continue
                assert reply.id == SOA_QUERY.id
                if reply.flags & dns.flags.TC:
                    truncated += 1
                else:
                    whole += 1
            took = time.monotonic() - start
        allowed = 20 + 20 * took  # the burst, and the refill while we asked
        assert 20 <= whole <= allowed + 1
        assert truncated >= 1 and dropped >= 1
        assert abs(truncated - dropped) <= 2  # slip 2: every other limited one is sent
        # the truncated reply sends the resolver to TCP, which is never limited
        for _ in range(30):
            assert dns.query.tcp(SOA_QUERY, HOST, port=server.port, timeout=2).answer
        # another network is not limited (127.0.1.0/24 is loopback too on Linux)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.1.1", 0))
            other.settimeout(2)
            other.sendto(wire, (HOST, server.port))
            assert not dns.message.from_wire(other.recv(2048)).flags & dns.flags.TC


def test_rrl_off_by_default() -> None:
    assert DnsServer(make_snapshot).rrl is None
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot) as server:
        wire = SOA_QUERY.to_wire()
        for _ in range(300):
            reply = raw_udp(server.port, wire)
            assert reply is not None and not struct.unpack("!H", reply[2:4])[0] & 0x0200


# --- amplification -------------------------------------------------------------------


@pytest.mark.parametrize("name,rdtype", [(APEX, "ANY"), (WWW, "ANY"), ("huge." + APEX, "TXT"),
                                         (APEX, "NS"), ("big." + APEX, "TXT")])
def test_no_amplification(name: str, rdtype: str) -> None:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot) as server:
        query = dns.message.make_query(name, rdtype)
        reply = raw_udp(server.port, query.to_wire())
        assert reply is not None and len(reply) <= 512
        message = dns.message.from_wire(reply)
        if rdtype == "ANY":
            assert sum(len(rrset) for rrset in message.answer) <= 1
        edns = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
        reply = raw_udp(server.port, edns.to_wire())
        assert reply is not None and len(reply) <= 1232
