"""``gslb serve --workers N``: DNS in worker processes fed by the control process.

Real processes on free ports: the real ``gslb serve``, dnspython and ``dig`` as clients,
signals sent to the real worker processes. One test drives a worker process directly
over its socket pair to show that a half-received snapshot is never answered from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from test_e2e import GSLB, ROOT, Process, dig, start_gslb
from test_metrics import scrape, value

from gslb.config import load_zone_text
from gslb.model import Endpoint
from gslb.registry import Registry
from gslb.snapshot import Snapshot
from gslb.workers import channel
from gslb.workers.pool import WorkerError, WorkerPool, WorkerSettings, bind_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

WWW = "www.workers.test"
ZONE = """\
zone: workers.test
nameservers: {ns1: [127.0.0.1]}
records:
  static: {A: 192.0.2.200}
services:
  www:
    answers: 16
    policy: fill
    check: {type: none}
    pools:
      one: {allow: [192.0.2.0/24], endpoints: [192.0.2.1]}
"""
SPREAD = 40  # queries from as many source ports: all on one of 2 workers has odds 2^-39


def write_zones(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "workers.yaml").write_text(ZONE)
    return directory


def serve(tmp_path: Path, workers: int = 2, *flags: str) -> tuple[Process, int, int]:
    return start_gslb(tmp_path / "state.sqlite", write_zones(tmp_path / "zones"),
                      "--geoip", "none", "--workers", str(workers), *flags)


def api(port: int, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data,
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def addresses(port: int, tcp: bool = False, timeout: float = 2) -> set[str]:
    """The A answer of the service, from a fresh socket (a new source port)."""
    query = dns.message.make_query(WWW, "A")
    ask = dns.query.tcp if tcp else dns.query.udp
    reply = ask(query, "127.0.0.1", port=port, timeout=timeout)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    return {r.address for rrset in reply.answer for r in rrset}


def worker_pids(api_port: int) -> list[int]:
    return [w["pid"] for w in api(api_port, "/healthz")["workers"]]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_two_workers_answer_udp_and_tcp_and_metrics_sum_them(tmp_path: Path) -> None:
    proc, dns_port, api_port = serve(tmp_path)
    try:
        health = api(api_port, "/healthz")
        assert health["status"] == "ok"
        assert [(w["worker"], w["state"]) for w in health["workers"]] == [(1, "serving"), (2, "serving")]
        pids = worker_pids(api_port)
        assert len(set(pids)) == 2 and proc.popen.pid not in pids
        before = scrape(api_port)
        for _ in range(SPREAD):
            assert addresses(dns_port) == {"192.0.2.1"}
        for _ in range(5):
            assert addresses(dns_port, tcp=True) == {"192.0.2.1"}
        result = dig(dns_port, "static.workers.test", "A")
        assert "aa" in result.flags and result.rrs("ANSWER", "A")[0][4] == "192.0.2.200"
        result = dig(dns_port, "+tcp", "nothing.workers.test", "A")
        assert result.status == "NXDOMAIN"
        after = scrape(api_port)
        sent = SPREAD + 5 + 1
        assert value(after, "gslb_dns_queries_total", qtype="A", rcode="NOERROR") - value(
            before, "gslb_dns_queries_total", qtype="A", rcode="NOERROR") == sent
        assert value(after, "gslb_dns_queries_total", qtype="A", rcode="NXDOMAIN") == 1
        # replies computed in full are timed, cache hits are not
        assert value(after, "gslb_dns_response_seconds_count") - value(
            before, "gslb_dns_response_seconds_count") == value(
            after, "gslb_dns_cache_misses_total") - value(before, "gslb_dns_cache_misses_total")
        assert value(after, "gslb_dns_cache_hits_total") + value(
            after, "gslb_dns_cache_misses_total") - value(before, "gslb_dns_cache_hits_total") - value(
            before, "gslb_dns_cache_misses_total") == sent + 1
        # answers by endpoint, summed over the workers
        assert value(after, "gslb_endpoint_answers_total", service="www.workers.test",
                     pool="one", endpoint="192.0.2.1") - value(
            before, "gslb_endpoint_answers_total", service="www.workers.test", pool="one",
            endpoint="192.0.2.1") == SPREAD + 5
        # each worker's response cache answered the repeats
        assert value(after, "gslb_dns_cache_hits_total") - value(
            before, "gslb_dns_cache_hits_total") >= SPREAD - 2
    finally:
        proc.stop()
    assert proc.popen.returncode == 0, "\n".join(proc.lines[-20:])
    assert all(gone(pid) for pid in pids)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_no_udp_batch_reaches_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``--no-udp-batch`` (or ``GSLB_UDP_BATCH=off``) is passed on to every worker, which
    answers all the same."""
    if how == "environment":
        monkeypatch.setenv("GSLB_UDP_BATCH", " Off")
    proc, dns_port, api_port = serve(tmp_path, 1, *(["--no-udp-batch"] if how == "flag" else []))
    try:
        (pid,) = worker_pids(api_port)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--no-udp-batch" in command
        for _ in range(5):
            assert addresses(dns_port) == {"192.0.2.1"}
    finally:
        proc.stop()


def test_a_bad_udp_batch_variable_is_refused(tmp_path: Path) -> None:
    """A GSLB_UDP_BATCH that is neither on nor off stops the start with a clear error,
    rather than meaning on."""
    done = subprocess.run(
        [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--state", str(tmp_path / "state.sqlite"), "--zones", str(write_zones(tmp_path / "zones"))],
        capture_output=True, text=True, timeout=30, env={**os.environ, "GSLB_UDP_BATCH": "sideways"},
    )
    assert (done.returncode, done.stderr) == (2, "gslb: GSLB_UDP_BATCH is 'sideways'; give on or off\n")


def test_workers_route_by_their_own_geoip_database(tmp_path: Path) -> None:
    """The bundled zone and GeoIP database: the README's routing examples, from workers."""
    proc, dns_port, _ = start_gslb(tmp_path / "state.sqlite", ROOT / "zones", "--workers", "2")
    try:
        for _ in range(8):  # dig uses a new source port each time: both workers
            assert dig(dns_port, "geo.gslb.example.com", "A", "+subnet=203.0.113.0/24").rrs(
                "ANSWER", "A")[0][4] == "203.0.113.10"
            assert dig(dns_port, "geo.gslb.example.com", "A", "+subnet=198.51.100.0/24").rrs(
                "ANSWER", "A")[0][4] == "192.0.2.10"
    finally:
        proc.stop()


def test_a_geoip_reload_reaches_the_workers(tmp_path: Path) -> None:
    """The control process reloads the database (POST /reload); every worker reopens it."""
    from gslb import geodb

    csv = (ROOT / "data" / "geo.csv").read_text()
    database = tmp_path / "geo.mmdb"
    geodb.build(ROOT / "data" / "geo.csv", database)
    proc, dns_port, api_port = start_gslb(tmp_path / "state.sqlite", ROOT / "zones",
                                          "--workers", "2", "--geoip", str(database))
    try:
        def answer() -> str:
            result = dig(dns_port, "geo.gslb.example.com", "A", "+subnet=203.0.113.0/24")
            return str(result.rrs("ANSWER", "A")[0][4])

        assert {answer() for _ in range(8)} == {"203.0.113.10"}  # Tokyo: the asia pool
        moved = tmp_path / "moved.csv"  # Tokyo's test network moves to Frankfurt
        moved.write_text(csv.replace("203.0.113.0/24,JP,AS,35.6762,139.6503",
                                     "203.0.113.0/24,DE,EU,50.1109,8.6821"))
        geodb.build(moved, tmp_path / "next.mmdb")
        (tmp_path / "next.mmdb").replace(database)
        api(api_port, "/reload", {})
        assert {answer() for _ in range(8)} <= {"192.0.2.10", "192.0.2.11"}  # europe, everywhere
        for n in (1, 2):  # each worker said so
            assert any(f"worker {n}: geoip reloaded" in line for line in proc.lines), proc.lines
    finally:
        proc.stop()


def test_a_registration_reaches_every_worker_before_the_api_answers(tmp_path: Path) -> None:
    proc, dns_port, api_port = serve(tmp_path)
    clients = []
    try:
        for _ in range(16):  # fixed source ports: each one's queries go to one worker
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            clients.append(sock)
        query = dns.message.make_query(WWW, "A")

        def seen() -> list[set[str]]:
            return [{r.address for rrset in dns.query.udp(
                query, "127.0.0.1", port=dns_port, timeout=2, sock=sock).answer for r in rrset}
                for sock in clients]

        assert seen() == [{"192.0.2.1"}] * 16  # every worker's cache holds the answer
        for n in range(2, 12):
            new = f"192.0.2.{n}"
            sent = time.monotonic()
            api(api_port, "/register", {"service": WWW, "pool": "one", "address": new})
            assert time.monotonic() - sent < 1.0
            assert all(new in answer for answer in seen())  # the very next answers
            health = api(api_port, "/healthz")
            assert {w["generation"] for w in health["workers"]} == {health["generation"]}
    finally:
        for sock in clients:
            sock.close()
        proc.stop()


def test_a_killed_worker_is_replaced_and_answers_continue(tmp_path: Path) -> None:
    proc, dns_port, api_port = serve(tmp_path)
    try:
        first, second = worker_pids(api_port)
        os.kill(first, signal.SIGKILL)
        # the other worker answers at once; the dead one's queries wait in its socket
        answered = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            health = api(api_port, "/healthz")
            worker = health["workers"][0]
            if worker["pid"] != first and worker["state"] == "serving":
                break
            with contextlib.suppress(dns.exception.Timeout):
                answered += addresses(dns_port, timeout=0.3) == {"192.0.2.1"}
        else:
            raise AssertionError(f"worker 1 was not replaced: {health}")
        assert answered > 0
        assert worker["restarts"] == 1 and health["status"] == "ok"
        assert worker_pids(api_port)[1] == second
        for _ in range(SPREAD):
            assert addresses(dns_port) == {"192.0.2.1"}
        # a change after the restart reaches the new worker too
        api(api_port, "/register", {"service": WWW, "pool": "one", "address": "192.0.2.50"})
        for _ in range(SPREAD):
            assert "192.0.2.50" in addresses(dns_port)
        assert any(f"dns worker 1 (pid {first}) killed by SIGKILL; starting another" in line
                   for line in proc.lines)
    finally:
        proc.stop()
    assert proc.popen.returncode == 0


def test_sigint_stops_the_workers_and_then_the_control_process(tmp_path: Path) -> None:
    proc, _, api_port = serve(tmp_path)
    pids = worker_pids(api_port)
    proc.stop(signal.SIGINT)  # Ctrl-C: the control process stops the workers itself
    assert proc.popen.returncode == 0, "\n".join(proc.lines[-20:])
    assert all(gone(pid) for pid in pids)
    assert not any("starting another" in line for line in proc.lines)  # no restart while stopping


def test_sigkill_of_the_control_process_leaves_no_worker(tmp_path: Path) -> None:
    proc, dns_port, api_port = serve(tmp_path)
    pids = worker_pids(api_port)
    proc.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers left behind: {pids}"
        time.sleep(0.05)
    with pytest.raises(dns.exception.Timeout):
        addresses(dns_port, timeout=0.5)


def test_a_worker_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    registry = Registry()
    registry.load_zones([load_zone_text(ZONE, "workers.yaml")])

    async def start() -> None:
        pool = WorkerPool(WorkerSettings(2, geoip=tmp_path / "missing.mmdb"), lambda: registry.snapshot)
        await pool.start("127.0.0.1", 0)

    with pytest.raises(WorkerError) as error:
        asyncio.run(start())
    assert str(error.value) in (f"dns worker {n}: {tmp_path / 'missing.mmdb'}: no such file"
                                for n in (1, 2))


def test_a_burst_of_changes_is_coalesced(tmp_path: Path) -> None:
    registry = Registry()
    registry.load_zones([load_zone_text(ZONE, "workers.yaml")])
    burst = 300

    async def run() -> tuple[int, set[str]]:
        pool = WorkerPool(WorkerSettings(1), lambda: registry.snapshot)
        registry.on_change(pool.notify)
        port = await pool.start("127.0.0.1", 0)
        try:
            for n in range(burst):  # bursts of 50 changes, the feed running between them
                registry.register(WWW, "one", Endpoint(ip(n)))
                if n % 50 == 49:
                    await asyncio.sleep(0.02)
            deadline = time.monotonic() + 10
            while pool.status()[0]["generation"] != registry.generation:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            answer = await asyncio.to_thread(addresses, port)
            return pool.snapshots_sent, answer
        finally:
            await pool.stop()

    sent, answer = asyncio.run(run())
    assert len(answer) == 16 and answer <= {str(ip(n)) for n in range(burst)} | {"192.0.2.1"}
    assert 1 <= sent <= burst / 50 + 1, sent  # the latest of each burst, not each change


def test_unchanged_service_views_travel_as_names() -> None:
    text = ZONE + "".join(f"  s{n}:\n    check: {{type: none}}\n    pools:\n"
                          f"      one: {{endpoints: [192.0.2.{n}]}}\n" for n in range(1, 30))
    registry = Registry()
    registry.load_zones([load_zone_text(text, "workers.yaml")])
    held = channel.load_snapshot(channel.dump_snapshot(registry.snapshot, 0)[5:], Snapshot())[1]
    held.service("s1.workers.test.").memo["warm"] = True  # what queries filled in a worker
    full = channel.dump_snapshot(registry.snapshot, 0)
    registry.register(WWW, "one", Endpoint(ip(1)))
    delta = channel.dump_snapshot(registry.snapshot, 0, base=registry.snapshot)  # nothing changed
    assert len(delta) < len(full) / 4  # names only (the full one shares pools since 0.8)
    registry.register("s2.workers.test", "one", Endpoint(ip(2)))
    delta = channel.dump_snapshot(registry.snapshot, 0, base=held)
    _, got = channel.load_snapshot(delta[5:], held)
    assert got.generation == registry.snapshot.generation
    assert got.service("s1.workers.test.") is held.service("s1.workers.test.")  # kept, memo warm
    assert got.service("s1.workers.test.").memo == {"warm": True}
    assert got.service("s2.workers.test.") is not held.service("s2.workers.test.")
    assert got.service("s2.workers.test.") == registry.snapshot.service("s2.workers.test.")
    assert got.service("s2.workers.test.").memo == {}
    with pytest.raises(ValueError, match="against generation"):
        channel.load_snapshot(delta[5:], Snapshot(generation=held.generation + 1))


def ip(n: int) -> Any:
    from ipaddress import IPv4Address

    return IPv4Address(0x0A000000 + n)


def test_a_stuck_worker_is_replaced() -> None:
    """A worker that is alive but takes no snapshot (stopped here) would answer from
    stale state for ever: the watchdog kills it and a new one takes its sockets."""
    registry = Registry()
    registry.load_zones([load_zone_text(ZONE, "workers.yaml")])

    async def run() -> None:
        pool = WorkerPool(WorkerSettings(1, hang_timeout=1.0), lambda: registry.snapshot)
        registry.on_change(pool.notify)
        port = await pool.start("127.0.0.1", 0)
        try:
            stuck = pool.status()[0]["pid"]
            os.kill(stuck, signal.SIGSTOP)
            registry.register(WWW, "one", Endpoint(ip(7)))
            deadline = time.monotonic() + 10
            while not (pool.status()[0]["pid"] != stuck and pool.status()[0]["state"] == "serving"):
                assert time.monotonic() < deadline, pool.status()
                await asyncio.sleep(0.05)
            assert str(ip(7)) in await asyncio.to_thread(addresses, port)
            assert gone(stuck)
        finally:
            await pool.stop()

    asyncio.run(run())


def test_a_snapshot_is_applied_only_once_whole(tmp_path: Path) -> None:
    """Drive one worker process over its socket pair: half a frame changes nothing."""
    registry = Registry()
    registry.load_zones([load_zone_text(ZONE, "workers.yaml")])
    port, [(udp, tcp)] = bind_group("127.0.0.1", 0, 1)
    ours, theirs = socket.socketpair()
    worker = subprocess.Popen(
        [sys.executable, "-m", "gslb.workers.worker", "--index", "1", "--channel", str(theirs.fileno()),
         "--udp", str(udp.fileno()), "--tcp", str(tcp.fileno())],
        pass_fds=(theirs.fileno(), udp.fileno(), tcp.fileno()),
    )
    theirs.close()
    try:
        ours.sendall(channel.dump_snapshot(registry.snapshot, 0))
        ours.settimeout(15)
        assert ours.recv(channel.HEADER.size)[0] == channel.Kind.READY
        assert addresses(port) == {"192.0.2.1"}
        first = registry.snapshot
        registry.register(WWW, "one", Endpoint(ip(1)))
        frame = channel.dump_snapshot(registry.snapshot, 0, base=first)
        ours.sendall(frame[: len(frame) - 1])
        time.sleep(0.2)
        for _ in range(5):
            assert addresses(port) == {"192.0.2.1"}  # still the whole previous snapshot
        ours.sendall(frame[-1:])
        deadline = time.monotonic() + 5
        while addresses(port) != {"192.0.2.1", "10.0.0.1"}:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours.close()  # as if the control process died: the worker exits by itself
        assert worker.wait(timeout=5) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        udp.close()
        tcp.close()


_PICKLE_VALUES = """
import pickle, sys
from ipaddress import ip_address
from gslb.model import EndpointRef, GeoInfo, Location
values = [EndpointRef("www.gslb.example.com.", "eu-west", ip_address("192.0.2.10"), 8080),
          GeoInfo("DE", "EU", Location(52.5, 13.4), 24, True)]
if sys.argv[1] == "dump":
    sys.stdout.buffer.write(pickle.dumps(values))
else:
    received = pickle.loads(sys.stdin.buffer.read())
    assert received == values
    assert [hash(v) for v in received] == [hash(v) for v in values]
    assert all({v: 1}.get(r) == 1 for v, r in zip(values, received))
"""


def test_values_with_a_kept_hash_hash_alike_in_another_process() -> None:
    """EndpointRef and GeoInfo keep their hash (the DNS counters and the engine's plans
    key on them); a copy from another process, whose string hashes differ, must hash as
    this process's own values do (the workers' snapshots and counters travel pickled)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dumped = subprocess.run([sys.executable, "-c", _PICKLE_VALUES, "dump"], check=True,
                            capture_output=True, env={**env, "PYTHONHASHSEED": "1"}).stdout
    loaded = subprocess.run([sys.executable, "-c", _PICKLE_VALUES, "load"], input=dumped,
                            capture_output=True, env={**env, "PYTHONHASHSEED": "2"})
    assert loaded.returncode == 0, loaded.stderr.decode()
