"""The UDP listeners: bursts, datagrams without replies and rate-limited replies in the
middle of a batch, IPv6 senders; the batched and the per-datagram listener alike."""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Iterator

import dns.edns
import dns.message
import dns.rdatatype
import pytest
from dnsfixtures import APEX, ServerThread, make_snapshot

from gslb.dns.rrl import ResponseRateLimiter
from gslb.dns.udp import BatchedUdp

WWW = "www." + APEX
NAMES = [WWW, "mail." + APEX, "alias." + APEX, "nothing." + APEX, APEX, "example.org."]
MODES = [pytest.param(True, id="batched"), pytest.param(False, id="per-datagram")]


def query_bytes(qid: int, name: str, subnet: str | None = None) -> bytes:
    options = [dns.edns.ECSOption.from_text(subnet)] if subnet else []
    message = dns.message.make_query(name, "A", use_edns=0 if subnet else None, options=options)
    message.id = qid
    return message.to_wire()


def hold_loop(server: ServerThread, seconds: float) -> None:
    """Keep the server's event loop busy, so that datagrams sent meanwhile wait in the
    socket and are read together."""
    server._loop.call_soon_threadsafe(time.sleep, seconds)
    time.sleep(0.02)  # the loop has taken the sleep


def receive_all(sock: socket.socket, expected: int, timeout: float = 3.0) -> list[bytes]:
    replies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(replies) < expected and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            replies.append(sock.recv(65535))
        except TimeoutError:
            break
    return replies


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[bool, ServerThread]]:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, udp_batch=True) as batched, \
            ServerThread(lambda: snapshot, udp_batch=False) as single:
        yield {True: batched, False: single}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="recvmmsg is Linux's")
def test_linux_listens_in_batches(servers: dict[bool, ServerThread]) -> None:
    assert isinstance(servers[True].server._udp, BatchedUdp)
    assert not isinstance(servers[False].server._udp, BatchedUdp)


def test_both_listeners_give_the_same_bytes(servers: dict[bool, ServerThread]) -> None:
    rng = random.Random(7)
    for qid in range(200):
        name = rng.choice(NAMES)
        subnet = rng.choice([None, f"198.51.{rng.randrange(256)}.0/24", "2001:db8:7::/48"])
        data = query_bytes(qid, name, subnet)
        replies = []
        for batched in (True, False):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(data, ("127.0.0.1", servers[batched].port))
                replies.append(sock.recv(65535))
        assert replies[0] == replies[1], (name, subnet)


@pytest.mark.parametrize("batched", MODES)
def test_a_burst_from_many_senders_is_answered_to_each(
    servers: dict[bool, ServerThread], batched: bool
) -> None:
    """More datagrams than a batch, from several sockets at once, while the loop is
    busy: every one is answered once, to the socket that asked, with its own ID."""
    server = servers[batched]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    try:
        for sock in senders:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        hold_loop(server, 0.2)
        sent: dict[int, dict[int, str]] = {}
        for round_ in range(25):  # 150 datagrams: over two batches, within the socket buffer
            for index, sock in enumerate(senders):
                qid = index * 1000 + round_
                name = NAMES[qid % len(NAMES)]
                sent.setdefault(index, {})[qid] = name
                sock.sendto(query_bytes(qid, name), ("127.0.0.1", server.port))
        for index, sock in enumerate(senders):
            replies = [dns.message.from_wire(data) for data in receive_all(sock, 25)]
            assert sorted(reply.id for reply in replies) == sorted(sent[index])
            for reply in replies:
                assert reply.question[0].name.to_text() == sent[index][reply.id]
    finally:
        for sock in senders:
            sock.close()


@pytest.mark.parametrize("batched", MODES)
def test_datagrams_without_reply_amid_a_batch(
    servers: dict[bool, ServerThread], batched: bool
) -> None:
    """Garbage and responses (which get no reply) between queries read in one batch:
    the queries after them are answered all the same, and nothing answers the rest."""
    server = servers[batched]
    address = ("127.0.0.1", server.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        hold_loop(server, 0.2)
        expected = set()
        for qid in range(40):
            if qid % 3 == 1:
                other.sendto(b"\x00\x01junk", address)  # too short to be DNS
            elif qid % 3 == 2:  # a response (QR set): never answered
                data = bytearray(query_bytes(qid, WWW))
                data[2] |= 0x80
                other.sendto(bytes(data), address)
            else:
                expected.add(qid)
                sock.sendto(query_bytes(qid, WWW, "198.51.100.0/24"), address)
        replies = [dns.message.from_wire(data) for data in receive_all(sock, len(expected) + 1, 0.5)]
        assert receive_all(other, 1, 0.1) == []
    assert sorted(reply.id for reply in replies) == sorted(expected)
    assert all(reply.answer and reply.answer[0].rdtype == dns.rdatatype.A for reply in replies)


@pytest.mark.parametrize("batched", MODES)
def test_rate_limited_replies_amid_a_batch(batched: bool) -> None:
    snapshot = make_snapshot()
    rrl = ResponseRateLimiter(10, slip=0)
    with ServerThread(lambda: snapshot, udp_batch=batched, rrl=rrl) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        hold_loop(server, 0.2)
        for qid in range(30):
            sock.sendto(query_bytes(qid, WWW), ("127.0.0.1", server.port))
        replies = receive_all(sock, 11, 0.5)
        assert len(replies) == 10
        assert server.server.stats.dropped["rate limit"] == 20


@pytest.mark.parametrize("batched", MODES)
def test_ipv6_senders(batched: bool) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot, host="::1", udp_batch=batched) as server, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        hold_loop(server, 0.1)
        for qid in range(20):
            sock.sendto(query_bytes(qid, WWW), ("::1", server.port))
        replies = [dns.message.from_wire(data) for data in receive_all(sock, 20)]
        assert sorted(reply.id for reply in replies) == list(range(20))


@pytest.mark.parametrize("batched", MODES)
def test_a_sender_gone_before_its_reply(servers: dict[bool, ServerThread], batched: bool) -> None:
    """Replies to a closed port (ICMP port unreachable comes back) stop nothing."""
    server = servers[batched]
    hold_loop(server, 0.1)
    for qid in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.sendto(query_bytes(qid, WWW), ("127.0.0.1", server.port))
    time.sleep(0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(query_bytes(99, WWW), ("127.0.0.1", server.port))
        assert dns.message.from_wire(sock.recv(65535)).id == 99
