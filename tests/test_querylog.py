"""The sampled query log of a real ``gslb serve``: one query in N, who asked what and
what they got, as text or JSON lines."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from test_e2e import Process, dig, start_gslb

pytestmark = pytest.mark.timeout(60)

GEO = "geo.gslb.example.com."


def ask(port: int, name: str, rdtype: str = "A", ecs: str | None = None) -> dns.message.Message:
    options = [dns.edns.ECSOption(ecs, 24)] if ecs else None
    query = dns.message.make_query(name, rdtype, use_edns=0 if ecs else False, options=options)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)


def logged(proc: Process) -> list[str]:
    """The query log's lines, text or JSON."""
    return [line for line in proc.lines
            if " gslb.query: " in line or '"logger": "gslb.query"' in line]


def query_lines(proc: Process, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(logged(proc)) < count:
        time.sleep(0.05)
    return logged(proc)


def test_one_query_in_n_as_json(tmp_path: Path) -> None:
    proc, dns_port, _ = start_gslb(tmp_path / "state.sqlite", *_zones(),
                                   "--query-log", "3", "--log-format", "json")
    try:
        replies = [ask(dns_port, GEO.upper(), ecs="198.51.100.0") for _ in range(3)]  # 1st logged
        replies += [ask(dns_port, "mail.gslb.example.com.") for _ in range(3)]  # 4th
        replies += [ask(dns_port, "nothing.gslb.example.com.", "AAAA") for _ in range(3)]  # 7th
        query_lines(proc, 3)
        time.sleep(0.3)  # and no more come
        lines = logged(proc)
    finally:
        proc.stop(signal.SIGKILL)
    assert len(lines) == 3, lines
    geo, mail, missing = (json.loads(line) for line in lines)

    assert geo["qname"] == GEO and geo["qtype"] == "A" and geo["transport"] == "udp"
    assert geo["client"].startswith("127.0.0.1 port ")
    assert geo["ecs"] == "198.51.100.0/24" and geo["scope"] == 24
    assert geo["rcode"] == "NOERROR"
    assert geo["service"] == GEO and geo["pools"] == ["europe"]  # Frankfurt
    # the log says what the client got: the sampled reply is the same as the others
    assert geo["addresses"] == [rr.address for rr in replies[0].answer[0]]
    assert all(r.answer[0] == replies[0].answer[0] for r in replies[:3])
    assert isinstance(geo["micros"], int) and geo["micros"] >= 0

    assert mail["qname"] == "mail.gslb.example.com." and mail["rcode"] == "NOERROR"
    assert "service" not in mail and mail["addresses"] == []
    assert missing["qtype"] == "AAAA" and missing["rcode"] == "NXDOMAIN"
    assert all(r.rcode() == dns.rcode.NXDOMAIN for r in replies[6:])


def test_every_query_as_text_with_dig(tmp_path: Path) -> None:
    proc, dns_port, _ = start_gslb(tmp_path / "state.sqlite", *_zones(), "--query-log", "1")
    try:
        answer = dig(dns_port, "geo.gslb.example.com", "A", "+subnet=203.0.113.0/24")
        addresses = [rr[4] for rr in answer.rrs("ANSWER", "A")]
        (line,) = query_lines(proc, 1)
    finally:
        proc.stop(signal.SIGKILL)
    # Tokyo's ECS goes to the asia pool
    assert f"udp {GEO} A ecs 203.0.113.0/24 -> NOERROR {addresses[0]} " \
           f"service {GEO} pool asia scope /24 " in line, line


def test_query_log_is_off_by_default(tmp_path: Path) -> None:
    proc, dns_port, _ = start_gslb(tmp_path / "state.sqlite", *_zones())
    try:
        ask(dns_port, GEO)
        time.sleep(0.3)
    finally:
        proc.stop(signal.SIGKILL)
    assert not logged(proc)


def _zones() -> tuple[Path]:
    return (Path(__file__).resolve().parent.parent / "zones",)


def test_workers_log_their_queries(tmp_path: Path) -> None:
    proc, dns_port, _ = start_gslb(tmp_path / "state.sqlite", *_zones(),
                                   "--workers", "2", "--query-log", "1")
    try:
        for _ in range(4):
            ask(dns_port, GEO, ecs="203.0.113.0")
        lines = query_lines(proc, 4)
    finally:
        proc.stop(signal.SIGKILL)
    assert len(lines) == 4, lines
    assert all(f" {GEO} A ecs 203.0.113.0/24 -> NOERROR " in line for line in lines), lines
