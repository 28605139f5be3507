"""10,000 endpoints probed every second: the prober's CPU, rate and timing, on loopback.

    .venv/bin/python benchmarks/probes.py [--endpoints 10000] [--seconds 15] [--kind http tcp]
                                          [--code DIR] [--floor] [--defer-accept] [--common]
                                          [--apart]

``--code`` measures another version of the package side by side, e.g. the one before
kept connections: ``git archive 3aac5ff gslb | tar -x -C /tmp/before`` then
``--code /tmp/before``.

A fleet of real endpoints runs in a child process (uvloop, one listening socket per
endpoint on 127.0.50.1-127.0.50.40, answering ``GET /health`` with 200 over HTTP/1.1,
keep-alive unless asked to close). A registry holds the endpoints as 100 services of
100 (one pool each), every endpoint checked each second (rise 2, fall 2, timeout 1 s).
The real ``HealthThread`` probes them for ``--seconds`` (after a warm-up of 6 s, which is
not counted) and the script prints, per check kind:

- checks completed per second, failures (should be 0), transitions (should be 0) and
  snapshots published (what DNS answers would have to pick up);
- the health thread's CPU time per wall second (with the check metrics that ``gslb
  serve`` keeps) (from /proc/self/task/TID/stat: user +
  system) and the whole process's (the target: <= 50 % of one core for 10,000 endpoints
  a second), and CPU microseconds per check;
- the gap between two checks of one endpoint: p50, p99, max (1 s ± 5 % is the plan);
- the fleet's CPU per wall second (on loopback the endpoints share the 2 cores), and the
  machine's TCP counters over the run (``/proc/net/snmp``, ``/proc/net/netstat``):
  connections opened, listen-queue overflows and retransmitted segments (nonzero: the
  fleet did not accept fast enough, and a connect waited for a SYN retransmission);
- the process's garbage collections by generation over the run (objects that outlive a
  check make the collector walk them again and again).

``--floor`` then measures what the kernel alone costs per TCP check on this loopback:
one thread connecting to every endpoint once a second with blocking sockets, no event
loop and no prober, first a socket per connect closed with a reset (``SO_LINGER`` 0),
then one socket reused, its connection dissolved with ``connect(AF_UNSPEC)``, then the
same with quick ACKs off (``TCP_QUICKACK`` 0: the handshake's last ACK is held back and
the reset goes in its place, so the endpoint never accepts the connection); and last
the ``TcpChecker`` alone on a uvloop loop (no prober, no registry, no metrics), its
connects started in slices every 10 ms as the prober's ticks do.

``--apart`` puts the endpoints where a real fleet is, on the far side of a network
link, so that the prober's core pays only the prober's side of each connection. On
loopback the kernel runs both ends of a connection in the sender's context: the
endpoint's handling of the SYN, its SYN-ACK, the accepted socket and its teardown are
all charged to the prober's thread. With ``--apart`` the script (root, ``ip`` from
iproute2) makes two network namespaces for the run, joined by a veth pair; the fleet
runs in one, pinned to core 1, with its side's packets handled on core 1 (RPS); the
prober runs in the other, pinned to core 0, with its side's packets handled on core 0.
The addresses stay in 127.0.0.0/8 (``route_localnet``), so nothing can leave the
machine; the namespaces are removed afterwards. It prints each core's busy time per
wall second from ``/proc/stat`` (user, system, interrupts), the prober's core being the
figure to hold against the target. Without ``--apart``, ``--pin`` runs the same pinning
on plain loopback, for the comparison in one session.

``--common`` measures the prober's common per-check path alone, the same for every kind
of check (the schedule wheel, rise/fall, the batched report to ``registry.note_checks``,
the check metrics): no fleet and no sockets, 10,000 TCP endpoints whose checker finishes
every connect at once, on a clock the script moves by 10 ms ticks; it prints the CPU µs
per check of each simulated second (median and best). It drives the prober's internals
(``_start_due``, ``_hand_over``), as a profiler would: a package that renames them
cannot be measured this way.

Bounded: the run stops after ``--seconds``; only loopback is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from interpreter import describe

ROOT = Path(__file__).resolve().parent.parent

HOSTS = [f"127.0.50.{i}" for i in range(1, 41)]
WARMUP = 6.0  # the first round (a connection per endpoint) and its snapshots are not counted
FLEETS = 2  # processes serving the endpoints
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
CLOSING = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n"
           b"Connection: close\r\n\r\nok\n")


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# --- the fleet (child process) -----------------------------------------------------------


class Endpoint(asyncio.Protocol):
    """An endpoint of a fleet: answers each ``GET`` with 200 (HTTP/1.1, kept alive) and
    closes after it when the request says so (``Connection: close``, or HTTP/1.0 without
    keep-alive, as gdnsd's monitor sends). Counts connections and requests in ``counts``
    (one fleet to a process)."""

    counts = {"accepted": 0, "served": 0}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Endpoint.counts["accepted"] += 1
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.buffer or not data.endswith(b"\r\n\r\n") or data.count(b"\r\n\r\n") != 1:
            self.slow(data)  # pipelined or split requests: rare
            return
        self.answer(data)

    def slow(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not self.answer(head):
                return

    def answer(self, head: bytes) -> bool:
        """Answer one request; False when the connection is closed after it."""
        Endpoint.counts["served"] += 1
        if b"lose" in head or b"HTTP/1.0" in head:  # cheap test first: thousands a second
            lower = head.lower()
            if b"connection: close" in lower or (
                    b" http/1.0" in lower and b"keep-alive" not in lower):
                self.transport.write(CLOSING)  # type: ignore[attr-defined]
                self.transport.close()
                return False
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]
        return True


def fleet(count: int, defer: bool = False) -> None:
    """Listen on ``count`` ports; print them as JSON; serve until stdin closes. With
    ``defer`` the listeners use TCP_DEFER_ACCEPT: a connection that sends nothing (a TCP
    check) is never accepted, so the fleet is never woken for it."""
    import uvloop

    raise_nofile(count * 2 + 1000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for i in range(count):
            host = HOSTS[i % len(HOSTS)]
            server = await loop.create_server(Endpoint, host, 0, backlog=64)
            if defer:
                server.sockets[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
            ports.append([host, server.sockets[0].getsockname()[1]])
        print(json.dumps(ports), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        print(json.dumps({"served": Endpoint.counts["served"]}), flush=True)

    uvloop.run(main())


# --- the prober (this process) -------------------------------------------------------------


def zone_text(ports: list[list[object]], kind: str, per_service: int) -> str:
    lines = ["zone: probes.example", "nameservers: {ns1: [127.0.0.1]}", "services:"]
    for s in range(0, len(ports), per_service):
        lines += [
            f"  s{s // per_service}:",
            f"    check: {{type: {kind}, path: /health, interval: 1, timeout: 1, rise: 2, fall: 2}}",
            "    pools:",
            "      main:",
            "        endpoints:",
        ]
        lines += [f"          - {{address: {host}, port: {port}}}"
                  for host, port in ports[s:s + per_service]]
    return "\n".join(lines) + "\n"


def thread_cpu(tid: int) -> tuple[float, float]:
    """User and system CPU seconds of one thread of this process."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


COUNTERS = {("Tcp", "ActiveOpens"): "opened", ("TcpExt", "ListenOverflows"): "overflows",
            ("TcpExt", "ListenDrops"): "listen drops", ("Tcp", "RetransSegs"): "retransmits"}


# the network namespaces whose TCP counters are read: this process's, and with --apart
# the fleet's (as /proc/PID of a process in it)
NAMESPACES = ["/proc/self"]


def tcp_counters() -> dict[str, int]:
    """The TCP counters that say whether connects waited on the endpoints (summed over
    the namespaces of the prober and the fleet)."""
    found: dict[str, int] = defaultdict(int)
    for root in NAMESPACES:
        for table in ("net/snmp", "net/netstat"):
            lines = Path(root, table).read_text().splitlines()
            for names, values in zip(lines[::2], lines[1::2], strict=False):
                group, _, keys = names.partition(": ")
                for key, value in zip(keys.split(), values.split(": ", 1)[1].split(),
                                      strict=False):
                    if (group, key) in COUNTERS:
                        found[COUNTERS[group, key]] += int(value)
    return dict(found)


def core_times() -> list[tuple[int, int]]:
    """(busy, all) clock ticks of each core so far, from /proc/stat. Busy is user, nice,
    system, interrupts and soft interrupts: on the prober's core the packets of its
    connections are handled in soft interrupts, which no process is charged for."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, idle, iowait, irq, softirq = map(int, fields[:7])
            busy = user + nice + system + irq + softirq
            cores.append((busy, busy + idle + iowait))
    return cores


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(kind: str, ports: list[list[object]], seconds: float,
        fleet_pids: list[int]) -> tuple[dict[str, float], str]:
    from gslb.config import load_zone_text
    from gslb.health.thread import HealthThread
    from gslb.metrics import Metrics
    from gslb.model import EndpointRef, HealthCheck
    from gslb.registry import Registry

    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(ports, kind, 100), "probes.yaml")])
    times: dict[EndpointRef, list[float]] = defaultdict(list)
    failures: list[EndpointRef] = []
    clock = time.monotonic

    rtts: list[float] = []

    metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)

    def observe(ref: EndpointRef, check: HealthCheck, ok: bool, rtt: float | None) -> None:
        metrics.observe_check(ref, check, ok, rtt)  # as gslb serve does
        times[ref].append(clock())
        if rtt is not None and len(rtts) < 1_000_000:
            rtts.append(rtt)
        if not ok:
            failures.append(ref)

    health = HealthThread(registry, on_check=observe)
    health.start()
    try:
        thread = health._thread  # noqa: SLF001 - the benchmark reads the thread's own CPU
        assert thread is not None and thread.native_id is not None
        tid = thread.native_id
        time.sleep(WARMUP)
        started, (user0, sys0), proc0 = clock(), thread_cpu(tid), time.process_time()
        fleet0, counters0 = sum(map(process_cpu, fleet_pids)), tcp_counters()
        cores0 = core_times()
        generation0 = registry.generation
        transitions0 = sum(registry.transition_counts().values())
        failures0 = len(failures)
        counted0 = sum(len(t) for t in times.values())
        collections0 = [generation["collections"] for generation in gc.get_stats()]
        time.sleep(seconds)
        collections = [generation["collections"] - before
                       for generation, before in zip(gc.get_stats(), collections0, strict=True)]
        wall = clock() - started
        user, system = thread_cpu(tid)
        user, system = user - user0, system - sys0
        cpu, proc = user + system, time.process_time() - proc0
        fleet_cpu = sum(map(process_cpu, fleet_pids)) - fleet0
        cores = [(busy - busy0) / max(1, every - every0) for (busy, every), (busy0, every0)
                 in zip(core_times(), cores0, strict=True)]
        counters = {k: v - counters0[k] for k, v in tcp_counters().items()}
        checks = sum(len(t) for t in times.values()) - counted0
        publishes = registry.generation - generation0
        transitions = sum(registry.transition_counts().values()) - transitions0
        failed = len(failures) - failures0
    finally:
        try:
            health.stop(timeout=60)
        except RuntimeError as exc:  # overloaded: report the figures all the same
            print(f"      {exc}", flush=True)
    note = registry.check_note(failures[-1]) if failures else None
    sample = f"{failures[-1]}: {note.result}" if note is not None else ""
    gaps = [b - a for t in times.values() for a, b in zip(t, t[1:], strict=False)
            if a >= started]
    return {
        "endpoints": len(ports),
        "checks_per_s": checks / wall,
        "thread_cpu_pct": 100 * cpu / wall,
        "thread_system_pct": 100 * system / wall,
        "process_cpu_pct": 100 * proc / wall,
        "thread_cpu_us_per_check": 1e6 * cpu / max(checks, 1),
        "gap_p50": statistics.median(gaps) if gaps else float("nan"),
        "gap_p99": percentile(gaps, 0.99) if gaps else float("nan"),
        "gap_max": max(gaps, default=float("nan")),
        "rtt_p50_ms": 1000 * statistics.median(rtts) if rtts else float("nan"),
        "rtt_p99_ms": 1000 * percentile(rtts, 0.99) if rtts else float("nan"),
        "failures": failed,
        "transitions": transitions,
        "publishes_per_s": publishes / wall,
        "fleet_cpu_pct": 100 * fleet_cpu / wall,
        **{f"tcp {k}": v for k, v in counters.items()},
        **{f"core {n}": 100 * share for n, share in enumerate(cores)},
        **{f"gc {n}": count for n, count in enumerate(collections)},
    }, sample


def floor(ports: list[list[object]], seconds: float) -> None:
    """Connect to every endpoint once a second from one thread, without an event loop,
    and print the thread's CPU per connect: a socket per connect, then one reused."""
    reset = struct.pack("ii", 1, 0)
    unspec = bytes(16)
    dissolve = ctypes.CDLL(None, use_errno=True).connect
    addresses = [(str(host), int(str(port))) for host, port in ports]
    kept = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    kept.settimeout(1.0)  # bounded: a dropped SYN costs a second, never more

    def fresh(where: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(where)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)

    def reused(where: tuple[str, int]) -> None:
        kept.connect(where)
        if dissolve(kept.fileno(), unspec, len(unspec)) != 0:
            raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")

    def half_open(where: tuple[str, int]) -> None:  # SYN, SYN-ACK, RST: what TcpChecker does
        kept.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        reused(where)

    tid = threading.get_native_id()
    print("the kernel's part: one thread, blocking connects, every endpoint once a second")
    with kept:
        for name, connect in [("a socket per connect, SO_LINGER 0 close", fresh),
                              ("one socket, connect(AF_UNSPEC) reset", reused),
                              ("as above, the last ACK held back", half_open)]:
            started, (user0, sys0), counters0 = time.monotonic(), thread_cpu(tid), tcp_counters()
            count = 0
            while time.monotonic() - started < seconds:
                second = time.monotonic()
                for where in addresses:
                    connect(where)
                    count += 1
                time.sleep(max(0.0, 1.0 - (time.monotonic() - second)))
            user, system = thread_cpu(tid)
            counters = {k: v - counters0[k] for k, v in tcp_counters().items()}
            wall = time.monotonic() - started
            print(f"  {name:40} {count / wall:7.0f}/s  user {1e6 * (user - user0) / count:5.1f} µs"
                  f"  system {1e6 * (system - sys0) / count:5.1f} µs per connect;  "
                  + ", ".join(f"{k} {v}" for k, v in counters.items()), flush=True)
    checker_alone(addresses, seconds)


def checker_alone(addresses: list[tuple[str, int]], seconds: float) -> None:
    """The event-loop part: ``TcpChecker`` connecting to every endpoint once a second."""
    import uvloop

    try:
        from gslb.health.tcp import TcpChecker
    except ImportError:
        return  # a version of the package without it (--code)
    outcomes = {"ok": 0, "failed": 0}

    def done(outcome: BaseException | None) -> None:
        outcomes["ok" if outcome is None else "failed"] += 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        checker = TcpChecker(loop)
        slices = [addresses[i:i + len(addresses) // 100 or 1]
                  for i in range(0, len(addresses), len(addresses) // 100 or 1)]
        started, tid = time.monotonic(), threading.get_native_id()
        (user0, sys0), counters0 = thread_cpu(tid), tcp_counters()
        try:
            while time.monotonic() - started < seconds:
                second = loop.time()
                for n, part in enumerate(slices):
                    for where in part:
                        checker.connect(socket.AF_INET, where, 1.0, done)
                    await asyncio.sleep(max(0.0, second + (n + 1) / len(slices) - loop.time()))
            while len(checker):  # bounded by the checks' timeout
                await asyncio.sleep(0.01)
        finally:
            checker.close()
        user, system = thread_cpu(tid)
        counters = {k: v - counters0[k] for k, v in tcp_counters().items()}
        count = sum(outcomes.values())
        wall = time.monotonic() - started
        print(f"  {'TcpChecker alone, uvloop':40} {count / wall:7.0f}/s  user "
              f"{1e6 * (user - user0) / count:5.1f} µs  system {1e6 * (system - sys0) / count:5.1f}"
              f" µs per connect;  failed {outcomes['failed']}, "
              + ", ".join(f"{k} {v}" for k, v in counters.items()), flush=True)

    uvloop.run(main())


class _InstantChecker:
    """Stands in for ``TcpChecker`` in ``--common``: every connect finishes at the next
    step of the script, connected."""

    def __init__(self) -> None:
        self.started: list[object] = []

    def connect(self, family: int, where: object, timeout: float, done: object) -> None:
        self.started.append(done)

    def close(self) -> None:
        self.started.clear()


def common_path(endpoints: int, seconds: float) -> None:
    """The prober's per-check path with checks that finish at once (see ``--common``)."""
    import uvloop

    from gslb.config import load_zone_text
    from gslb.health import prober
    from gslb.metrics import Metrics
    from gslb.registry import Registry

    ports: list[list[object]] = [[HOSTS[i % len(HOSTS)], 20000 + i] for i in range(endpoints)]
    registry = Registry()
    registry.load_zones([load_zone_text(zone_text(ports, "tcp", 100), "probes.yaml")])
    metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        probe = prober.Prober(registry, endpoints * 10, on_check=metrics.observe_check)
        clock = [loop.time()]

        class Clock:  # what _start_due reads of its loop
            def time(self) -> float:
                return clock[0]

        # the prober's internals, as a profiler would see them (see --common above)
        checker = _InstantChecker()
        async with prober.make_session() as session:
            probe._http, probe._tcp = session, checker  # type: ignore[assignment]
            probe._follow()
            clock[0] = loop.time()
            checks = 0

            def one_second() -> None:
                nonlocal checks
                for _ in range(100):  # ticks of 10 ms; a report batch each, as REPORT_PERIOD
                    clock[0] += 0.01
                    probe._start_due(Clock())  # type: ignore[arg-type]
                    started, checker.started = checker.started, []
                    for done in started:
                        done(None)  # type: ignore[operator]
                    checks += len(started)
                    if probe._flush is not None:
                        probe._flush.cancel()
                    probe._hand_over()

            for _ in range(3):  # the first checks, the second ones, then the steady state
                one_second()
            per_check = []
            for _ in range(max(1, int(seconds))):
                before, cpu = checks, time.thread_time()
                one_second()
                per_check.append(1e6 * (time.thread_time() - cpu) / max(checks - before, 1))
            probe._http = probe._tcp = None
        print(f"the prober's common path, {endpoints} endpoints, {len(per_check)} simulated "
              f"seconds: {statistics.median(per_check):.2f} µs of CPU per check (median; best "
              f"{min(per_check):.2f}); {checks} checks, {registry.generation} snapshots")

    uvloop.run(main())


PROBER_ADDRESS = "127.0.50.254/24"  # the prober's side of the veth pair (--apart)


def run_apart(argv: list[str]) -> int:
    """Run this script again inside a network namespace joined to the fleet's by a veth
    pair (see ``--apart``); returns its exit status. The namespaces go with the run."""
    tag = str(os.getpid())
    prober, fleet = f"gslb-prober-{tag}", f"gslb-fleet-{tag}"

    def sh(namespace: str, command: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, "sh", "-c", command]

    def localnet(device: str) -> str:  # 127.0.0.0/8 routed on a device other than lo
        return (f"echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet && "
                f"echo 1 > /proc/sys/net/ipv4/conf/{device}/route_localnet")

    setup = [
        ["ip", "netns", "add", prober], ["ip", "netns", "add", fleet],
        ["ip", "link", "add", f"p{tag}", "type", "veth", "peer", "name", f"f{tag}"],
        ["ip", "link", "set", f"p{tag}", "netns", prober, "name", "probe0"],
        ["ip", "link", "set", f"f{tag}", "netns", fleet, "name", "fleet0"],
        ["ip", "-n", prober, "addr", "add", PROBER_ADDRESS, "dev", "probe0"],
        *(["ip", "-n", fleet, "addr", "add", f"{host}/24", "dev", "fleet0"] for host in HOSTS),
        sh(prober, localnet("probe0")), sh(fleet, localnet("fleet0")),
        # each side's packets are handled on its own core, as on two machines
        sh(prober, "echo 1 > /sys/class/net/probe0/queues/rx-0/rps_cpus"),
        sh(fleet, "echo 2 > /sys/class/net/fleet0/queues/rx-0/rps_cpus"),
        ["ip", "-n", prober, "link", "set", "probe0", "up"],
        ["ip", "-n", fleet, "link", "set", "fleet0", "up"],
    ]
    try:
        for command in setup:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"--apart needs root and iproute2: {' '.join(command)}: "
                      f"{done.stderr.strip()}", file=sys.stderr)
                return 2
        return subprocess.run(["ip", "netns", "exec", prober, sys.executable, __file__,
                               *argv, "--fleet-netns", fleet]).returncode
    finally:
        for namespace in (prober, fleet):  # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--kind", nargs="+", default=["http", "tcp"], choices=["http", "tcp"])
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="the directory holding the gslb package to measure (another "
                             "version, e.g. from git archive; default: this checkout)")
    parser.add_argument("--floor", action="store_true",
                        help="then measure the kernel's part of a TCP check (see above)")
    parser.add_argument("--defer-accept", action="store_true",
                        help="the endpoints' listeners use TCP_DEFER_ACCEPT: on loopback the "
                             "prober's thread then no longer pays for waking them and for "
                             "their accepted sockets (the share of its CPU that is theirs)")
    parser.add_argument("--common", action="store_true",
                        help="only the prober's common per-check path, without sockets (see above)")
    parser.add_argument("--apart", action="store_true",
                        help="the endpoints in a network namespace of their own, their side "
                             "of each connection handled on the other core (see above)")
    parser.add_argument("--pin", action="store_true",
                        help="the prober on core 0 and the fleet on core 1, on loopback "
                             "(--apart pins them so too)")
    parser.add_argument("--fleet", type=int, help=argparse.SUPPRESS)  # the child's role
    parser.add_argument("--fleet-netns", help=argparse.SUPPRESS)  # --apart, from inside
    args = parser.parse_args()
    if not (args.code / "gslb" / "__init__.py").is_file():
        parser.error(f"--code {args.code}: no gslb package there (it would measure the installed one)")
    sys.path.insert(0, str(args.code))
    if args.fleet is not None:
        fleet(args.fleet, args.defer_accept)
        return
    if args.common:
        common_path(args.endpoints, args.seconds)
        return
    if args.apart and args.fleet_netns is None:
        sys.exit(run_apart(sys.argv[1:]))
    pinned = args.pin or args.apart
    prefix = ["ip", "netns", "exec", args.fleet_netns] if args.fleet_netns else []
    if pinned:
        os.sched_setaffinity(0, {0})
    raise_nofile(args.endpoints * 2 + 1000)
    # several fleet processes: each holds a listener and a kept connection per endpoint
    sizes = [len(range(i, args.endpoints, FLEETS)) for i in range(FLEETS)]
    children = [subprocess.Popen(prefix + [sys.executable, __file__, "--fleet", str(size)]
                                 + ["--defer-accept"] * args.defer_accept,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pinned
                                 else None)
                for size in sizes]
    if args.fleet_netns:
        NAMESPACES.append(f"/proc/{children[0].pid}")  # ip netns exec execs: the same pid
    try:
        ports = []
        for child in children:
            assert child.stdout is not None
            ports += json.loads(child.stdout.readline())
        import gslb
        where = (f"in a network namespace of their own (veth; {PROBER_ADDRESS} the prober's "
                 "side)" if args.fleet_netns else "on loopback")
        placed = "; prober on core 0, fleet on core 1" if pinned else ""
        print(f"{len(ports)} endpoints on {len(HOSTS)} addresses {where}{placed}; "
              "checks every 1 s; "
              f"{WARMUP:g} s warm-up, then {args.seconds:g} s measured; the package in "
              f"{Path(gslb.__file__).parent.parent}; {describe()}")
        header = (f"{'kind':5} {'checks/s':>9} {'thread CPU':>10} {'(system)':>8} {'process CPU':>11} "
                  f"{'µs/check':>8} {'gap p50':>8} {'gap p99':>8} {'gap max':>8} "
                  f"{'rtt p50':>8} {'rtt p99':>8} "
                  f"{'failed':>6} {'transitions':>11} {'publishes/s':>11} {'fleet CPU':>9}")
        print(header)
        for kind in args.kind:
            r, sample = run(kind, ports, args.seconds, [child.pid for child in children])
            print(f"{kind:5} {r['checks_per_s']:9.0f} {r['thread_cpu_pct']:9.1f}% "
                  f"{r['thread_system_pct']:7.1f}% "
                  f"{r['process_cpu_pct']:10.1f}% {r['thread_cpu_us_per_check']:8.1f} "
                  f"{r['gap_p50']:8.3f} {r['gap_p99']:8.3f} {r['gap_max']:8.3f} "
                  f"{r['rtt_p50_ms']:6.1f}ms {r['rtt_p99_ms']:6.1f}ms "
                  f"{r['failures']:6.0f} {r['transitions']:11.0f} {r['publishes_per_s']:11.1f} "
                  f"{r['fleet_cpu_pct']:8.1f}%", flush=True)
            print("      TCP counters: " + ", ".join(
                f"{k[4:]} {v:.0f}" for k, v in r.items() if k.startswith("tcp ")))
            print("      busy per wall second (/proc/stat): " + ", ".join(
                f"{k} {v:.1f}%" for k, v in r.items() if k.startswith("core ")))
            print("      garbage collections of the process (generations 0, 1, 2): "
                  + ", ".join(f"{r[f'gc {n}']:.0f}" for n in range(3)))
            if sample:
                print(f"      a failed check: {sample}")
        if args.floor:
            floor(ports, min(args.seconds, 10.0))
        served = 0
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.close()
            served += json.loads(child.stdout.readline())["served"]
        print(f"the fleet answered {served} HTTP requests in all")
    finally:
        for child in children:
            if child.stdin and not child.stdin.closed:
                child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
