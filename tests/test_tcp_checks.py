"""TCP connect checks (``gslb.health.tcp``) against real sockets on loopback: success,
refusal, timeout, abandoning, IPv6, sockets reused from one check to the next (whatever
the last one found), no descriptor and no TIME_WAIT socket left behind, and no check
ever reaching the endpoint's application."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from gslb.config import load_zone_text
from gslb.health import tcp
from gslb.health.prober import check_tcp
from gslb.health.sweep import RESOLUTION
from gslb.health.thread import HealthThread
from gslb.model import EndpointRef
from gslb.registry import Registry

HOST = "127.0.0.43"

Outcome = BaseException | None
ZONE = """
zone: gslb.example.com
nameservers: {ns1: [127.0.0.1]}
services:
  tcp:
    check: {type: tcp, interval: 0.1, timeout: 0.1, rise: 1, fall: 1}
    pools:
      main:
        endpoints: ENDPOINTS
"""


def listener(host: str = HOST, backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def refusing(host: str = HOST) -> socket.socket:
    """A socket bound on ``host`` that never listens: connections to its port are refused
    while it is open, and no other socket can take the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


def assert_nothing_to_accept(listening: socket.socket) -> None:
    """No connection waits in ``listening``'s accept queue (a TCP check never gets one
    there: its handshake ends in a reset before the last ACK)."""
    listening.setblocking(False)
    try:
        reached, _ = listening.accept()
    except BlockingIOError:
        return
    reached.close()
    pytest.fail("a check's connection reached the endpoint's accept queue")


def closed_port(host: str = HOST) -> int:
    """A port with nothing listening on ``host`` (connections to it are refused)."""
    with refusing(host) as sock:
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose connects never finish: a listener with a full accept queue drops
    every further SYN (the connect would only finish after the SYN's retransmission)."""
    sock = listener(backlog=0)
    port = sock.getsockname()[1]
    filler = socket.create_connection((HOST, port), timeout=1)  # fills the queue of one
    try:
        yield port
    finally:
        filler.close()
        sock.close()


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def time_waits(port: int) -> int:
    """TIME_WAIT sockets to or from ``port`` on this machine."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            ports = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
            if state == "06" and port in ports:
                count += 1
    return count


async def one(checker: tcp.TcpChecker, host: str, port: int, timeout: float = 1.0) -> Outcome:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Outcome] = loop.create_future()
    family, where = tcp.sockaddr(ip_address(host), port)
    checker.connect(family, where, timeout, outcome.set_result)
    return await outcome


async def accepting(host: str = HOST) -> asyncio.Server:
    """An endpoint that would accept every connection made to it."""
    return await asyncio.start_server(lambda r, w: w.close(), host, 0, backlog=4096)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def test_success_refused_and_timeout(blackhole: int) -> None:
    async def go() -> tuple[Outcome, Outcome, Outcome, float]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        server = await accepting()
        try:
            opened = await one(checker, HOST, port_of(server))
            refused = await one(checker, HOST, closed_port())
            started = time.monotonic()
            timed_out = await one(checker, HOST, blackhole, timeout=0.2)
            return opened, refused, timed_out, time.monotonic() - started
        finally:
            checker.close()
            server.close()
            await server.wait_closed()

    opened, refused, timed_out, waited = asyncio.run(go())
    assert opened is None
    assert isinstance(refused, ConnectionRefusedError)
    assert isinstance(timed_out, TimeoutError)
    assert 0.2 <= waited < 0.2 + 0.15  # the timeout, late by at most a sweep and the loop


@pytest.mark.parametrize("host", ["127.0.0.43", "::1"])
def test_a_check_never_reaches_the_endpoints_application(host: str) -> None:
    """A check is SYN, SYN-ACK, reset: the endpoint's kernel drops the half-made
    connection, so its application has nothing to accept, a check after check, on fresh
    sockets and on sockets kept from the check before."""
    if ":" in host and not have_ipv6():
        pytest.skip("no IPv6 loopback")

    async def go(port: int) -> list[Outcome]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        try:
            first = await asyncio.gather(*(one(checker, host, port) for _ in range(20)))
            return first + [await one(checker, host, port) for _ in range(20)]
        finally:
            checker.close()

    with listener(host) as endpoint:
        outcomes = asyncio.run(go(endpoint.getsockname()[1]))
        assert outcomes == [None] * 40
        assert_nothing_to_accept(endpoint)
        assert time_waits(endpoint.getsockname()[1]) == 0


def test_check_results_say_what_happened(blackhole: int) -> None:
    async def go() -> list[str]:
        server = await accepting()
        try:
            return [(await check_tcp(ip_address(HOST), port, 0.2)).result
                    for port in (port_of(server), closed_port(), blackhole)]
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(go()) == ["connected", "connection refused", "timeout after 0.2s"]


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv6() -> None:
    async def go() -> tuple[Outcome, Outcome, Outcome]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        server = await accepting("::1")
        try:
            # the IPv4 sockets kept by the first check are no use for the next
            return (await one(checker, HOST, closed_port()),
                    await one(checker, "::1", port_of(server)),
                    await one(checker, "::1", closed_port("::1")))
        finally:
            checker.close()
            server.close()
            await server.wait_closed()

    refused4, opened, refused = asyncio.run(go())
    assert isinstance(refused4, ConnectionRefusedError)
    assert opened is None
    assert isinstance(refused, ConnectionRefusedError)


def test_sockets_reused_whatever_the_last_check_found(blackhole: int) -> None:
    """Each check's socket is reused by the next: a refusal, a timeout or a success
    must not colour the result of the check that follows on the same socket."""
    async def go() -> list[Outcome]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        server = await accepting()
        dead = closed_port()
        try:
            outcomes = []
            for port in [port_of(server), dead, port_of(server), port_of(server), dead, dead,
                         blackhole, port_of(server), dead, port_of(server)]:
                outcomes.append(await one(checker, HOST, port, timeout=0.1))
            return outcomes
        finally:
            checker.close()
            server.close()
            await server.wait_closed()

    kinds = [type(o).__name__ if o is not None else "ok" for o in asyncio.run(go())]
    assert kinds == ["ok", "ConnectionRefusedError", "ok", "ok", "ConnectionRefusedError",
                     "ConnectionRefusedError", "TimeoutError", "ok", "ConnectionRefusedError",
                     "ok"]


def test_abandoned_check_never_reports_and_leaves_nothing(blackhole: int) -> None:
    async def go() -> tuple[list[Outcome], int, int]:
        loop = asyncio.get_running_loop()
        checker = tcp.TcpChecker(loop)
        heard: list[Outcome] = []
        family, where = tcp.sockaddr(ip_address(HOST), blackhole)
        server = await accepting()
        _, opened = tcp.sockaddr(ip_address(HOST), port_of(server))
        try:
            abandons = [checker.connect(family, where, 0.1, heard.append),
                        checker.connect(family, opened, 0.1, heard.append)]
            under_way = len(checker)
            for abandon in abandons:
                abandon()
                abandon()  # twice: harmless
            await asyncio.sleep(0.3)  # past the timeout: nothing more is heard
            return heard, under_way, len(checker)
        finally:
            checker.close()
            server.close()
            await server.wait_closed()

    before = open_fds()
    heard, under_way, after = asyncio.run(go())
    assert heard == []
    assert (under_way, after) == (2, 0)
    assert open_fds() == before


def test_many_checks_leave_no_descriptor_and_no_time_wait(blackhole: int) -> None:
    """Thousands of checks, many at once, of every outcome: afterwards the process has
    the descriptors it had before, and no TIME_WAIT socket is left on either side."""
    async def go() -> tuple[dict[str, int], int, int]:
        loop = asyncio.get_running_loop()
        checker = tcp.TcpChecker(loop)
        server = await accepting()
        dead = closed_port()
        counts = {"ok": 0, "ConnectionRefusedError": 0, "TimeoutError": 0}
        most = 0
        try:
            for _ in range(10):
                # the black hole's checks time out; the others have time to spare on a
                # busy machine
                batch = [one(checker, HOST, port, timeout=0.2 if port == blackhole else 5)
                         for port in [port_of(server)] * 200 + [dead] * 100 + [blackhole] * 5]
                for outcome in await asyncio.gather(*batch):
                    counts[type(outcome).__name__ if outcome is not None else "ok"] += 1
                most = max(most, open_fds())
            return counts, most, time_waits(port_of(server))
        finally:
            checker.close()
            server.close()
            await server.wait_closed()

    before = open_fds()
    counts, most, waits = asyncio.run(go())
    assert counts == {"ok": 2000, "ConnectionRefusedError": 1000, "TimeoutError": 50}
    assert most < before + 2 * tcp.IDLE  # sockets kept for reuse, not one per check
    assert open_fds() == before
    assert waits == 0


def test_closing_the_checker_abandons_what_is_under_way(blackhole: int) -> None:
    async def go() -> tuple[list[Outcome], int]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        heard: list[Outcome] = []
        family, where = tcp.sockaddr(ip_address(HOST), blackhole)
        for _ in range(3):
            checker.connect(family, where, 0.1, heard.append)
        checker.close()
        await asyncio.sleep(0.2)
        return heard, len(checker)

    before = open_fds()
    assert asyncio.run(go()) == ([], 0)
    assert open_fds() == before


def test_bad_arguments_raise_at_once() -> None:
    async def go() -> None:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        try:
            family, where = tcp.sockaddr(ip_address(HOST), 70000)
            with pytest.raises(OverflowError):
                checker.connect(family, where, 1.0, lambda outcome: None)
            assert len(checker) == 0
        finally:
            checker.close()

    before = open_fds()
    asyncio.run(go())
    assert open_fds() == before


def test_the_prober_leaves_no_descriptor_behind() -> None:
    """Forty endpoints (half listening, half refusing) checked every 0.1 s by the health
    thread: results as expected, and once it stops, the descriptors it had before."""
    listening = [listener(backlog=4096) for _ in range(20)]  # never accepted: resets queue up
    # held open for the test: twenty distinct ports (ports closed one by one may repeat)
    dead = [refusing() for _ in range(20)]
    ports = [sock.getsockname()[1] for sock in listening + dead]
    endpoints = ", ".join(f"{{address: {HOST}, port: {port}}}" for port in ports)
    text = ZONE.replace("ENDPOINTS", f"[{endpoints}]")
    refs = [EndpointRef("tcp.gslb.example.com.", "main", ip_address(HOST), port) for port in ports]
    try:
        registry = Registry()
        registry.load_zones([load_zone_text(text, "z.yaml")])
        with HealthThread(Registry()):
            pass  # the process's first uvloop loop opens a pipe it keeps for good
        before = open_fds()
        with HealthThread(registry):
            time.sleep(1.0)  # about ten checks each
            notes = [registry.check_note(ref) for ref in refs]
        assert open_fds() == before
        assert [n.result if n else None for n in notes] == (
            ["connected"] * 20 + ["connection refused"] * 20)
    finally:
        for sock in listening + dead:
            sock.close()


def test_a_timeout_below_the_sweep_resolution_fires_at_the_next_sweep(blackhole: int) -> None:
    async def go() -> tuple[Outcome, float]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        try:
            started = time.monotonic()
            outcome = await one(checker, HOST, blackhole, timeout=0.001)
            return outcome, time.monotonic() - started
        finally:
            checker.close()

    outcome, waited = asyncio.run(go())
    assert isinstance(outcome, TimeoutError)
    assert waited < 2 * RESOLUTION + 0.1


def test_a_timeout_of_zero_or_less_fires_at_the_next_sweep(blackhole: int) -> None:
    async def go() -> list[tuple[Outcome, float]]:
        checker = tcp.TcpChecker(asyncio.get_running_loop())
        try:
            found = []
            for timeout in (0.0, -5.0):
                started = time.monotonic()
                outcome = await one(checker, HOST, blackhole, timeout=timeout)
                found.append((outcome, time.monotonic() - started))
            return found
        finally:
            checker.close()

    for outcome, waited in asyncio.run(go()):
        assert isinstance(outcome, TimeoutError)
        assert waited < 2 * RESOLUTION + 0.1
