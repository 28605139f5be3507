"""Fuzzing the datagram-to-reply path: a hypothesis property over ``DnsServer.respond``,
the same inputs through a live server, and the atheris target fuzz/respond.py run for
a bounded number of inputs.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from dnsfixtures import APEX, ServerThread, make_snapshot, recv_frame, tcp_frame
from dnsmutations import datagrams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.dns.server import DnsServer

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SOURCE = ("127.0.0.1", 40000)  # the live server sees the same /24
EXAMPLES = int(os.environ.get("GSLB_FUZZ_EXAMPLES", "3000"))
ATHERIS_RUNS = int(os.environ.get("GSLB_FUZZ_RUNS", "200000"))


class _Errors(logging.Handler):
    """Collects what the DNS front logs at ERROR: an input that escaped as SERVFAIL."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[DnsServer, int, socket.socket, socket.socket]]:
    snapshot = make_snapshot()
    with ServerThread(lambda: snapshot) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.create_connection((HOST, server.port), timeout=5) as tcp:
        udp.settimeout(5)
        udp.connect((HOST, server.port))
        yield DnsServer(lambda: snapshot), server.port, udp, tcp


def check_reply(data: bytes, reply: bytes | None, tcp: bool) -> None:
    """What every reply to any datagram must be."""
    if reply is None:  # silence only for what has no header or is itself a response
        assert len(data) < 12 or data[2] & 0x80
        return
    assert len(data) >= 12 and not data[2] & 0x80
    message = dns.message.from_wire(reply)  # parses; raises otherwise
    assert message.id == struct.unpack("!H", data[:2])[0]
    assert message.flags & 0x8000
    assert message.opcode() == (data[2] >> 3) & 0xF
    if not tcp:
        assert len(reply) <= (1232 if message.edns >= 0 else 512)
    if message.question:
        assert len(message.question) == 1
    if message.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.REFUSED):
        assert not message.answer and not message.authority


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=datagrams, tcp=st.booleans())
def test_respond_property(
    live: tuple[DnsServer, int, socket.socket, socket.socket], data: bytes, tcp: bool
) -> None:
    server, _, udp, conn = live
    errors = _Errors()
    logging.getLogger("gslb.dns").addHandler(errors)
    try:
        reply = server.respond(data, SOURCE, tcp=tcp)
    finally:
        logging.getLogger("gslb.dns").removeHandler(errors)
    assert not errors.records, errors.records[0].getMessage()
    check_reply(data, reply, tcp)
    if reply is None:
        return
    # the running server gives the same reply over its transport (the client differs only
    # in port, which no answer depends on)
    if tcp:
        conn.sendall(tcp_frame(data))
        assert recv_frame(conn) == reply
    else:
        udp.send(data)
        assert udp.recv(65535) == reply


def test_live_server_survived(live: tuple[DnsServer, int, socket.socket, socket.socket]) -> None:
    _, port, _, conn = live
    query = dns.message.make_query(APEX, "SOA")
    assert dns.query.udp(query, HOST, port=port, timeout=2).answer
    conn.sendall(tcp_frame(query.to_wire()))  # the fuzzed TCP connection still serves
    assert dns.message.from_wire(recv_frame(conn)).answer


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_atheris_fuzz_target(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "respond.py"), f"-runs={ATHERIS_RUNS}",
         "-max_total_time=600", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=800, cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done, output[-4000:]
    runs, seconds = int(done.group(1)), int(done.group(2))
    print(f"\natheris: {runs} inputs in {seconds} s through DnsServer.respond")
    assert runs >= min(ATHERIS_RUNS, 100_000)
