"""Health checks side by side: ``gslb serve``, gdnsd and HAProxy checking one fleet at
10,000 checks a second, on loopback, in one run.

    sudo .venv/bin/python benchmarks/checkpeers.py --install   # first time: Debian packages
    .venv/bin/python benchmarks/checkpeers.py [--kind tcp http] [--rounds 2] [--seconds 15]
                                              [--only gslb,gdnsd,haproxy] [--pin]

The issue's target for the prober is 10,000 endpoints checked every second in at most
half of one core. This script measures the same work done by two peers written in C,
so that the figure can be read against what health checking costs on this machine:

- **gslb**: ``gslb serve`` (the whole process: DNS, API and the health thread) with a
  zone of 100 services × 100 endpoints, each checked every second (rise 2, fall 2,
  timeout 1 s); TCP checks connect and reset, HTTP checks ``GET /health`` on a kept
  connection.
- **gdnsd** (3.8, libev): its ``tcp_connect`` and ``http_status`` monitors. gdnsd's
  shortest interval with a 1 s timeout is 2 s (the timeout must be shorter than the
  interval), so it checks twice the endpoints, 20,000, every 2 s: the same 10,000
  checks a second. Its HTTP monitor opens a connection per check (HTTP/1.0).
- **haproxy** (2.6, one thread): 100 backends of 100 servers, ``check inter 1s rise 2
  fall 2``; layer-4 checks for TCP, ``option httpchk GET /health`` for HTTP (a
  connection per check).

The fleet is 20,000 real listeners (four uvloop processes, 80 loopback addresses
127.0.51.1-80 × 250 ports shared by every address, as gdnsd's monitors name a port per
service type); gslb and HAProxy check the first 10,000. Each server runs in turn
against the same fleet; rounds are interleaved. A server is measured once every
endpoint it checks is up, after a further warm-up, for ``--seconds``:

- checks a second: for TCP the connections the machine opened (``/proc/net/snmp``
  ActiveOpens; nothing else opens connections during the run), for HTTP the requests the
  fleet answered;
- the server's CPU (all its threads, ``/proc/PID/stat``) per wall second and per check;
- the busy share of each core (``/proc/stat``, soft interrupts included: on loopback the
  kernel handles both ends of a connection in the connecting process's context);
- failed checks and endpoints not up at the end (gslb: its ``/metrics``; gdnsd:
  ``gdnsdctl states`` and its log; HAProxy: ``show stat`` on its stats socket).

``--pin`` puts the server on core 0 and the fleet on core 1.

Bounded: each server runs for its warm-up (at most 60 s to come up) and ``--seconds``;
only loopback is contacted; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from interpreter import describe
from peers import install
from probes import (
    Endpoint,
    core_times,
    process_cpu,
    raise_nofile,
    tcp_counters,
    zone_text,
)

ROOT = Path(__file__).resolve().parent.parent
GRID_HOSTS = [f"127.0.51.{i}" for i in range(1, 81)]
FLEETS = 4  # processes; each holds 20 addresses' listeners (a process may hold 20,000 files)
PACKAGES = ("gdnsd", "haproxy")
READY_WITHIN = 60.0
SETTLE = 4.0  # after every endpoint is up: the schedule's first spread-out rounds
VHOST = "probes.example"


def quiet_port() -> int:
    """A port free on 127.0.0.1 for UDP and TCP, below Linux's ephemeral range: at 10,000
    connects a second the checks' source ports sweep that range, and a server that binds
    a port picked from it some seconds later (gdnsd, after its first round of checks)
    can find it taken."""
    for _ in range(200):
        port = random.randrange(10_000, 32_768)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port below 32768")


# --- the fleet (child processes) ---------------------------------------------------------


def fleet(hosts: list[str], ports: int | list[int]) -> None:
    """Listen on every (host, port); ``ports`` is a list to bind or a count to pick (the
    same port on every host). Prints the ports as JSON, then answers ``stats`` lines on
    stdin with its counts until stdin closes."""
    import uvloop

    raise_nofile(len(hosts) * (ports if isinstance(ports, int) else len(ports)) * 2 + 1000)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def listen(host: str, port: int) -> int:
            server = await loop.create_server(Endpoint, host, port, backlog=256)
            return int(server.sockets[0].getsockname()[1])

        bound: list[int] = []
        if isinstance(ports, int):
            while len(bound) < ports:  # a port free on every host; rarely a retry
                port = await listen(hosts[0], 0)
                try:
                    for host in hosts[1:]:
                        await listen(host, port)
                except OSError:
                    continue  # the listeners already made stay, unused
                bound.append(port)
        else:
            for port in ports:
                for host in hosts:
                    await listen(host, port)
            bound = list(ports)
        print(json.dumps(bound), flush=True)
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(Endpoint.counts), flush=True)

    uvloop.run(main())


class Fleet:
    def __init__(self, endpoints: int, pin: bool) -> None:
        per_host = endpoints * 2 // len(GRID_HOSTS)
        parts = [GRID_HOSTS[i::FLEETS] for i in range(FLEETS)]
        self.children: list[subprocess.Popen[str]] = []
        ports: list[int] | int = per_host
        for hosts in parts:
            child = subprocess.Popen(
                [sys.executable, __file__, "--fleet", json.dumps([hosts, ports])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None)
            self.children.append(child)
            assert child.stdout is not None
            ports = json.loads(child.stdout.readline())
        assert isinstance(ports, list)
        # the order gslb and HAProxy take their first 10,000 from, gdnsd all of them
        self.pairs = [(host, port) for host in GRID_HOSTS for port in ports]
        self.ports = ports

    def counts(self) -> dict[str, int]:
        total = {"accepted": 0, "served": 0}
        for child in self.children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("stats\n")
            child.stdin.flush()
            for key, value in json.loads(child.stdout.readline()).items():
                total[key] += value
        return total

    def cpu(self) -> float:
        return sum(process_cpu(child.pid) for child in self.children)

    def close(self) -> None:
        for child in self.children:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# --- the servers ---------------------------------------------------------------------------


@dataclass
class Health:
    failed: int  # failed checks so far (gdnsd: state changes so far)
    not_up: int  # endpoints not up now


@dataclass
class Server:
    """One health-checking server: how to start it on a fleet, and to read its health."""

    name: str
    work: Path
    process: subprocess.Popen[bytes] | None = None

    def command(self, kind: str, fleet: Fleet, endpoints: int) -> list[str]:
        raise NotImplementedError

    def health(self, kind: str) -> Health:
        raise NotImplementedError

    def checked(self, endpoints: int) -> int:
        return endpoints

    def start(self, kind: str, fleet: Fleet, endpoints: int, pin: bool) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        command = self.command(kind, fleet, endpoints)
        log = (self.work / "log").open("wb")
        self.process = subprocess.Popen(["taskset", "-c", "0", *command] if pin else command,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class Gslb(Server):
    api = 0  # the port of its HTTP API, where its health is read

    def command(self, kind: str, fleet: Fleet, endpoints: int) -> list[str]:
        zones = self.work / "zones"
        zones.mkdir()
        text = zone_text([list(pair) for pair in fleet.pairs[:endpoints]], kind, 100)
        (zones / "probes.yaml").write_text(text)
        self.api = api = quiet_port()
        return [sys.executable, "-m", "gslb", "serve", "--zones", str(zones),
                "--dns", f"127.0.0.1:{quiet_port()}", "--api", f"127.0.0.1:{api}",
                "--state", str(self.work / "state.sqlite"), "--log-level", "warning"]

    def health(self, kind: str) -> Health:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
        failed = sum(float(v) for v in re.findall(
            r'^gslb_health_check_failures_total\{type="\w+"\} (\S+)$', text, re.M))
        not_up = len(re.findall(r"^gslb_endpoint_up\{.*\} 0\.0$", text, re.M))
        return Health(int(failed), not_up)


class Gdnsd(Server):
    def checked(self, endpoints: int) -> int:
        return endpoints * 2  # every 2 s: its shortest interval with a 1 s timeout

    def command(self, kind: str, fleet: Fleet, endpoints: int) -> list[str]:
        hosts = sorted({host for host, _ in fleet.pairs[:self.checked(endpoints)]},
                       key=GRID_HOSTS.index)
        monitor = ("plugin => tcp_connect" if kind == "tcp" else
                   f"plugin => http_status, url_path => /health, vhost => {VHOST}")
        types = "\n".join(
            f"  p{port} => {{ {monitor}, port => {port}, interval => 2, timeout => 1, "
            "up_thresh => 2, ok_thresh => 2, down_thresh => 2 }" for port in fleet.ports)
        every_type = ", ".join(f"p{port}" for port in fleet.ports)
        resources = "\n".join(  # multifo: each address × each service type is a monitor
            f"    r{i} => {{ service_types => [ {every_type} ], "
            f"addrs_v4 => [ {', '.join(hosts[i:i + 10])} ] }}"
            for i in range(0, len(hosts), 10))
        (self.work / "zones").mkdir()
        (self.work / "config").write_text(
            "options => {\n"
            f"  listen => {{ 127.0.0.1:{quiet_port()} => {{ udp_threads => 1, tcp_threads => 1 }} }}\n"
            f"  run_dir => {self.work}/run\n  state_dir => {self.work}/state\n}}\n"
            f"service_types => {{\n{types}\n}}\n"
            f"plugins => {{\n  multifo => {{\n{resources}\n  }}\n}}\n")
        (self.work / "zones" / VHOST).write_text(
            "$TTL 30\n@ SOA ns1 hostmaster 1 3600 600 1209600 30\n@ NS ns1\nns1 A 127.0.0.1\n"
            + "".join(f"r{i} 30 DYNA multifo!r{i}\n" for i in range(0, len(hosts), 10)))
        return ["gdnsd", "-c", str(self.work), "start"]

    def health(self, kind: str) -> Health:
        done = subprocess.run(["gdnsdctl", "-c", str(self.work), "states"],
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            return Health(0, -1)  # not up yet: no control socket
        states = json.loads(done.stdout)
        not_up = sum(1 for state in states.values() if state["state"] != "UP")
        changes = (self.work / "log").read_text(errors="replace").count(" changed from UP")
        return Health(changes, not_up)


class Haproxy(Server):
    def command(self, kind: str, fleet: Fleet, endpoints: int) -> list[str]:
        lines = [
            "global", "  nbthread 1", "  maxconn 2000",
            f"  stats socket {self.work}/stats.sock mode 600 level admin",
            "defaults", "  mode tcp", "  timeout connect 1s", "  timeout client 10s",
            "  timeout server 10s", "  timeout check 1s",
            "  default-server check inter 1s rise 2 fall 2",
        ]
        for b in range(0, endpoints, 100):
            lines.append(f"backend s{b // 100}")
            if kind == "http":
                lines += ["  option httpchk",
                          f"  http-check send meth GET uri /health ver HTTP/1.1 hdr Host {VHOST}"]
            lines += [f"  server e{n} {host}:{port}"
                      for n, (host, port) in enumerate(fleet.pairs[b:b + 100])]
        (self.work / "haproxy.cfg").write_text("\n".join(lines) + "\n")
        return ["haproxy", "-db", "-f", str(self.work / "haproxy.cfg")]

    def health(self, kind: str) -> Health:
        try:
            with socket.socket(socket.AF_UNIX) as stats:
                stats.settimeout(10)
                stats.connect(str(self.work / "stats.sock"))
                stats.sendall(b"show stat\n")
                chunks = []
                while chunk := stats.recv(1 << 16):
                    chunks.append(chunk)
        except OSError:
            return Health(0, -1)  # not up yet
        rows = b"".join(chunks).decode().splitlines()
        names = rows[0].lstrip("# ").split(",")
        status, chkfail = names.index("status"), names.index("chkfail")
        servers = [row.split(",") for row in rows[1:]
                   if row and row.split(",")[1] not in ("FRONTEND", "BACKEND")]
        return Health(sum(int(s[chkfail] or 0) for s in servers),
                      sum(1 for s in servers if s[status] != "UP"))


SERVERS = {"gslb": Gslb, "gdnsd": Gdnsd, "haproxy": Haproxy}


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Figures:
    server: str
    kind: str
    checked: int
    checks_per_s: float
    cpu_pct: float
    us_per_check: float
    cores: list[float]
    fleet_pct: float
    failed: int
    not_up: int


def measure(server: Server, kind: str, fleet: Fleet, endpoints: int, seconds: float,
            pin: bool) -> Figures:
    server.start(kind, fleet, endpoints, pin)
    assert server.process is not None
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            if server.process.poll() is not None:
                tail = (server.work / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{server.name} exited:\n{tail}")
            try:
                if server.health(kind).not_up == 0:
                    break
            except OSError:
                pass  # the API is not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: endpoints not up within {READY_WITHIN:g} s")
            time.sleep(1.0)
        time.sleep(SETTLE)
        pid = server.process.pid
        health0 = server.health(kind)
        counts0, opened0 = fleet.counts(), tcp_counters()["opened"]
        cpu0, fleet0, cores0, started = process_cpu(pid), fleet.cpu(), core_times(), time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - started
        cpu, fleet_cpu = process_cpu(pid) - cpu0, fleet.cpu() - fleet0
        cores = [100 * (busy - busy0) / max(1, every - every0) for (busy, every), (busy0, every0)
                 in zip(core_times(), cores0, strict=True)]
        counts, opened = fleet.counts(), tcp_counters()["opened"] - opened0
        health = server.health(kind)
    finally:
        server.stop()
    checks = opened if kind == "tcp" else counts["served"] - counts0["served"]
    return Figures(server.name, kind, server.checked(endpoints), checks / wall,
                   100 * cpu / wall, 1e6 * cpu / max(checks, 1), cores, 100 * fleet_cpu / wall,
                   health.failed - health0.failed, health.not_up)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true",
                        help="apt-get install gdnsd and haproxy, then exit")
    parser.add_argument("--kind", nargs="+", default=["tcp", "http"], choices=["tcp", "http"])
    parser.add_argument("--endpoints", type=int, default=10_000,
                        help="checks a second (gslb, HAProxy: endpoints every 1 s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured per run (15)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--only", default=",".join(SERVERS), help="comma-separated servers")
    parser.add_argument("--pin", action="store_true",
                        help="the server on core 0, the fleet on core 1")
    parser.add_argument("--fleet", help=argparse.SUPPRESS)  # a fleet child's role
    args = parser.parse_args()
    if args.fleet:
        hosts, ports = json.loads(args.fleet)
        fleet(hosts, ports)
        return 0
    if args.install:
        install(PACKAGES)
        return 0
    names = args.only.split(",")
    if unknown := [n for n in names if n not in SERVERS]:
        parser.error(f"--only: unknown {', '.join(unknown)}")
    if missing := [n for n in names if n != "gslb" and not shutil.which(n)]:
        parser.error(f"{', '.join(missing)} not installed: run with --install (root) first")
    raise_nofile(20_000)
    os.environ["PYTHONPATH"] = str(ROOT)  # gslb serve runs this checkout
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="checkpeers-") as tmp:
        started = time.monotonic()
        fleet_ = Fleet(args.endpoints, args.pin)
        try:
            print(f"fleet: {len(fleet_.pairs)} listeners on {len(GRID_HOSTS)} addresses × "
                  f"{len(fleet_.ports)} ports in {FLEETS} processes "
                  f"(set up in {time.monotonic() - started:.1f} s); "
                  f"{'server on core 0, fleet on core 1' if args.pin else 'not pinned'}; "
                  f"{args.seconds:g} s measured per run; gslb on {describe()}", flush=True)
            print(f"{'server':8} {'kind':4} {'checked':>7} {'checks/s':>8} {'CPU':>6} "
                  f"{'µs/check':>8} {'core 0':>6} {'core 1':>6} {'fleet':>6} {'failed':>6} "
                  f"{'not up':>6}")
            for _ in range(args.rounds):
                for kind in args.kind:
                    for name in names:
                        server = SERVERS[name](name, Path(tmp) / name)
                        f = measure(server, kind, fleet_, args.endpoints, args.seconds, args.pin)
                        results.append(f)
                        print(f"{f.server:8} {f.kind:4} {f.checked:7} {f.checks_per_s:8.0f} "
                              f"{f.cpu_pct:5.1f}% {f.us_per_check:8.1f} {f.cores[0]:5.1f}% "
                              f"{f.cores[1]:5.1f}% {f.fleet_pct:5.1f}% {f.failed:6} "
                              f"{f.not_up:6}", flush=True)
        finally:
            fleet_.close()
    print("\nmedians (CPU of the server's process per check; ratio to each peer):")
    for kind in args.kind:
        per = {name: statistics.median(f.us_per_check for f in results
                                       if f.server == name and f.kind == kind)
               for name in names}
        pct = {name: statistics.median(f.cpu_pct for f in results
                                       if f.server == name and f.kind == kind)
               for name in names}
        for name in names:
            ratios = ", ".join(f"÷ {peer} {per[name] / per[peer]:.2f}"
                               for peer in names if peer != name)
            print(f"  {kind:4} {name:8} {per[name]:6.1f} µs/check  {pct[name]:5.1f}% of a core"
                  f"  ({ratios})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
