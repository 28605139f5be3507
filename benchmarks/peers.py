"""The GSLB beside gdnsd and Knot DNS under dnsperf, in one run, on loopback.

    sudo .venv/bin/python benchmarks/peers.py --install   # first time: Debian packages
    .venv/bin/python benchmarks/peers.py                  # about 4 minutes
    .venv/bin/python benchmarks/peers.py --workers 1,2 --only gslb,gslb-w1,gslb-w2,knot \
        --server-cpu 0,1 --client-cpu 0,1                 # worker processes, all on both cores
    .venv/bin/python benchmarks/peers.py --compare-python /tmp/other-venv/bin/python
                                                          # two interpreters, same rounds

Each server answers ``www.gslb.example.com A`` with two addresses of one of three
regions: the GSLB by GeoIP and sticky hashing (the bundled database), gdnsd by its
geoip plugin's ``nets`` table, Knot from two static records (the reference for what
an authoritative server costs here). Servers run pinned to one core, dnsperf to the
other; every run is bounded by ``--duration``. Rounds are interleaved (round 1 of
every server, then round 2, ...) so that drift of a shared machine hits all alike,
and the median is reported. Server CPU per answered query comes from
``/proc/PID/stat`` (all threads, and the worker processes of ``gslb serve --workers``),
which does not depend on the client's speed. ``--workers 1,2`` adds a gslb server per
count (``gslb-w1``, ``gslb-w2``); ``--server-cpu`` and ``--client-cpu`` take CPU lists
(``0,1``: the server and dnsperf share both cores). The Python rows run on
``--python`` (the project's ``.venv``); ``--compare-python`` adds ``gslb@alt`` and
``floor@alt`` on a second interpreter, to show what the build of CPython costs.

``--halt-poll 0,200000`` runs the fixed-rate rounds under each of those values of the
guest kernel's ``haltpoll.guest_halt_poll_ns`` (root, a KVM guest with the
cpuidle-haltpoll driver; the value found is put back): how long an idle virtual CPU
polls before it halts into the hypervisor, which decides what waking a sleeping
server costs. ``--percentiles`` adds the median and 99th percentile of the fixed-rate
latencies, from dnsperf's per-response lines (``-v``).

Prints a Markdown table: saturated qps with and without ECS, server CPU µs per
query, loss, the ratios to gdnsd and Knot, and latency at a fixed rate.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from interpreter import describe

ROOT = Path(__file__).resolve().parent.parent
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
PACKAGES = ("dnsperf", "gdnsd", "knot", "bind9-dnsutils")
NAME = "www.gslb.example.com"
ECS_HEX = "8:00011800c63364"  # RFC 7871: family 1, source /24, 198.51.100.0 (Frankfurt)
ECS_TEXT = "198.51.100.0/24"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

GSLB_ZONE = """\
zone: gslb.example.com
nameservers: {ns1: [127.0.0.1]}
services:
  www:
    ttl: 30
    answers: 2
    policy: sticky
    check: {type: none}
    pools:
      us: {continents: [NA, SA], location: {lat: 39.04, lon: -77.49},
           endpoints: [192.0.2.11, 192.0.2.12]}
      eu: {countries: [DE, GB], continents: [EU, AF], location: {lat: 50.11, lon: 8.68},
           endpoints: [192.0.2.21, 192.0.2.22]}
      ap: {continents: [AS, OC], location: {lat: 1.35, lon: 103.82},
           endpoints: [192.0.2.31, 192.0.2.32]}
"""

GDNSD_CONFIG = """\
options => {
  listen => { 127.0.0.1:@PORT@ => { udp_threads => 1, tcp_threads => 1 } }
  run_dir => @DIR@/run
  state_dir => @DIR@/state
  edns_client_subnet => true
}
plugins => {
  geoip => {
    maps => {
      regions => {
        datacenters => [ us, eu, ap ]
        nets => {
          198.51.100.0/24 => [ eu, us, ap ]
          203.0.113.0/24 => [ ap, eu, us ]
        }
      }
    }
    resources => {
      www => {
        map => regions
        dcmap => {
          us => { us1 => 192.0.2.11, us2 => 192.0.2.12 }
          eu => { eu1 => 192.0.2.21, eu2 => 192.0.2.22 }
          ap => { ap1 => 192.0.2.31, ap2 => 192.0.2.32 }
        }
      }
    }
  }
}
"""

GDNSD_ZONE = """\
$TTL 3600
@    SOA ns1 hostmaster 1 3600 600 1209600 30
@    NS  ns1
ns1  A   127.0.0.1
www  30  DYNA geoip!www
"""

KNOT_CONFIG = """\
server:
    rundir: "@DIR@"
    pidfile: "@DIR@/knot.pid"
    listen: 127.0.0.1@@PORT@
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "@DIR@/db"
template:
  - id: default
    storage: "@DIR@"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: gslb.example.com
"""

KNOT_ZONE = """\
$ORIGIN gslb.example.com.
$TTL 3600
@    SOA ns1 hostmaster 1 3600 600 1209600 30
@    NS  ns1
ns1  A   127.0.0.1
www  30  A 192.0.2.11
www  30  A 192.0.2.12
"""


@dataclass
class Run:
    qps: float
    completed: int
    lost: int
    latency_avg: float  # seconds
    latency_max: float
    server_cpu: float  # seconds of server CPU during the run
    client_busy: float  # share of the client core busy
    server_busy: float
    latencies: list[float] = field(default_factory=list)  # per response, with --percentiles

    @property
    def cpu_per_query_us(self) -> float:
        return self.server_cpu / max(1, self.completed) * 1e6

    @property
    def loss(self) -> float:
        return self.lost / max(1, self.completed + self.lost)


@dataclass
class Server:
    name: str
    describe: str
    command: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the servers bind it right after)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def install(packages: tuple[str, ...] = PACKAGES) -> None:
    missing = [p for p in packages if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout != "install ok installed"]
    if not missing:
        print("installed:", " ".join(packages))
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    guard = Path("/usr/sbin/policy-rc.d")
    made_guard = not guard.exists()
    if made_guard:  # keep the packages' own services from starting on port 53
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    finally:
        if made_guard:
            guard.unlink()


def make_servers(work: Path, cpu: str, workers: list[int], python: str,
                 compare: str | None) -> list[Server]:
    """Every server of the run; ``compare``: an interpreter that gets a ``gslb`` and a
    ``floor`` row of its own (``gslb@alt``, ``floor@alt``)."""
    pin = ["taskset", "-c", cpu]
    servers = []
    zones = work / "gslb" / "zones"
    zones.mkdir(parents=True)
    (zones / "bench.yaml").write_text(GSLB_ZONE)

    def gslb(name: str, what: str, interpreter: str, *flags: str) -> Server:
        port = free_port()
        return Server(name, what, [
            *pin, interpreter, "-m", "gslb", "serve", "--zones", str(zones),
            "--dns", f"127.0.0.1:{port}", "--api", "127.0.0.1:0",
            "--state", str(work / "gslb" / f"state-{name}.sqlite"),
            "--geoip", str(ROOT / "data" / "gslb-geo.mmdb"), "--log-level", "warning", *flags,
        ], port)

    def floor(name: str, interpreter: str) -> Server:
        port = free_port()  # the floor answers only UDP: the readiness check uses UDP
        return Server(name, "uvloop, reply from a dict, no parsing",
                      [*pin, interpreter, str(ROOT / "benchmarks" / "floor.py"), str(port)], port)

    servers.append(gslb("gslb", "GeoIP + sticky hashing, cached path", python))
    servers.append(gslb("gslb-single", "as gslb, one datagram at a time (`--no-udp-batch`)",
                        python, "--no-udp-batch"))
    for count in workers:
        servers.append(gslb(
            f"gslb-w{count}", f"as gslb, DNS in {count} worker process{'es' if count > 1 else ''}",
            python, "--workers", str(count)))
    servers.append(floor("floor", python))
    if compare:
        servers.append(gslb("gslb@alt", f"as gslb, on `{compare}`", compare))
        servers.append(floor("floor@alt", compare))

    if shutil.which("gdnsd"):
        port = free_port()
        conf = work / "gdnsd"
        (conf / "zones").mkdir(parents=True)
        (conf / "config").write_text(
            GDNSD_CONFIG.replace("@PORT@", str(port)).replace("@DIR@", str(conf)))
        (conf / "zones" / "gslb.example.com").write_text(GDNSD_ZONE)
        servers.append(Server("gdnsd", "geoip plugin, `nets` table",
                              [*pin, "gdnsd", "-c", str(conf), "start"], port))

    if shutil.which("knotd"):
        port = free_port()
        conf = work / "knot"
        conf.mkdir()
        (conf / "knot.conf").write_text(
            KNOT_CONFIG.replace("@PORT@", str(port)).replace("@DIR@", str(conf)))
        (conf / "gslb.example.com.zone").write_text(KNOT_ZONE)
        servers.append(Server("knot", "2 static A records",
                              [*pin, "knotd", "-c", str(conf / "knot.conf")], port))
    return servers


def dig(port: int, subnet: str | None) -> str:
    command = ["dig", "@127.0.0.1", "-p", str(port), NAME, "A", "+short", "+tries=1", "+time=1"]
    if subnet:
        command.append(f"+subnet={subnet}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return " ".join(sorted(result.stdout.split())) if result.returncode == 0 else ""


def start(server: Server, work: Path) -> None:
    log = (work / f"{server.name}.log").open("wb")
    server.process = subprocess.Popen(server.command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {work / (server.name + '.log')}")
        if dig(server.port, None):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer within 30 s")


def stop(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def process_cpu(pid: int) -> float:
    """utime + stime of the whole process (every thread) and of its living children
    (worker processes), in seconds."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def cpu_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if re.fullmatch(r"cpu\d+", name):
            numbers = [int(v) for v in values]
            idle = numbers[3] + numbers[4]
            out[name[3:]] = (sum(numbers[:8]) - idle, sum(numbers[:8]))
    return out


def busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], cpus: str) -> float:
    """The share of the CPUs in the list ``cpus`` ("0" or "0,1") that was busy."""
    b = sum(after[cpu][0] - before[cpu][0] for cpu in cpus.split(","))
    t = sum(after[cpu][1] - before[cpu][1] for cpu in cpus.split(","))
    return b / t if t else 0.0


def dnsperf(server: Server, queries: Path, args: argparse.Namespace, ecs: bool,
            rate: int | None) -> Run:
    assert server.process is not None
    command = ["taskset", "-c", args.client_cpu, "dnsperf", "-s", "127.0.0.1",
               "-p", str(server.port), "-d", str(queries), "-l", str(args.duration),
               "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2"]
    if ecs:
        command += ["-E", ECS_HEX]
    if rate:
        command += ["-Q", str(rate)]
        if args.percentiles:
            command.append("-v")
    cpu0, stat0 = process_cpu(server.process.pid), cpu_times()
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=args.duration + 30)
    cpu1, stat1 = process_cpu(server.process.pid), cpu_times()
    out = result.stdout

    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", out)
        if match is None:
            raise RuntimeError(f"dnsperf output lacks {label!r}:\n{out}\n{result.stderr}")
        return float(match.group(1))

    latency = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)", out)
    return Run(
        qps=number("Queries per second"),
        completed=int(number("Queries completed")),
        lost=int(number("Queries lost")),
        latency_avg=float(latency.group(1)) if latency else float("nan"),
        latency_max=float(latency.group(2)) if latency else float("nan"),
        server_cpu=cpu1 - cpu0,
        client_busy=busy(stat0, stat1, args.client_cpu),
        server_busy=busy(stat0, stat1, args.server_cpu),
        # -v: one line per response, "> NOERROR www.gslb.example.com A 0.000123"
        latencies=[float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)],
    )


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.qps)[len(runs) // 2]


def rate_settings(args: argparse.Namespace) -> list[int | None]:
    """The guest halt-poll values the fixed-rate rounds run under (None: as found)."""
    return [None] if args.halt_poll is None else args.halt_poll


def rate_key(setting: int | None) -> str:
    return "rate" if setting is None else f"rate@{setting}"


def set_halt_poll(nanoseconds: int | None) -> None:
    if nanoseconds is not None:
        HALT_POLL.write_text(f"{nanoseconds}\n")


def report(servers: list[Server], args: argparse.Namespace) -> str:
    by_name = {s.name: s for s in servers}
    lines = [
        f"{len(servers)} servers, dnsperf `-c {args.clients} -q {args.outstanding} "
        f"-l {args.duration}`, {args.reps} interleaved rounds (median), server on CPU "
        f"{args.server_cpu}, dnsperf on CPU {args.client_cpu}; CPU µs/query counts every "
        "process of a server (the control process and the workers).",
        "",
        "| server | what | queries | qps (median; min–max) | server CPU µs/query | lost % "
        "| qps ÷ gdnsd | qps ÷ knot | CPU ÷ gdnsd | CPU ÷ knot |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("plain", "ecs"):
        for server in servers:
            runs = server.runs.get(kind)
            if not runs:
                continue
            med = median_run(runs)
            cpu = statistics.median(r.cpu_per_query_us for r in runs)
            ratios = []
            for peer in ("gdnsd", "knot"):
                other = by_name.get(peer)
                other_runs = other.runs.get(kind) if other else None
                if other_runs:
                    ratios.append(med.qps / median_run(other_runs).qps)
                else:
                    ratios.append(float("nan"))
            for peer in ("gdnsd", "knot"):
                other = by_name.get(peer)
                other_runs = other.runs.get(kind) if other else None
                if other_runs:
                    ratios.append(cpu / statistics.median(r.cpu_per_query_us for r in other_runs))
                else:
                    ratios.append(float("nan"))
            bound = " †" if med.client_busy > 0.95 and med.server_busy < 0.95 else ""
            lost = max(r.loss for r in runs) * 100
            lines.append(
                f"| {server.name} | {server.describe} | {'ECS /24' if kind == 'ecs' else 'no ECS'} "
                f"| {med.qps:,.0f}{bound} ({min(r.qps for r in runs):,.0f}–"
                f"{max(r.qps for r in runs):,.0f}) | {cpu:.1f} | {lost:.2f} | "
                + " | ".join(f"{r:.2f}" for r in ratios) + " |"
            )
    lines += [
        "",
        "† client-bound: dnsperf's core was over 95 % busy while the server's was not; "
        "the qps is a lower bound there, compare the CPU per query.",
    ]
    if args.rate:
        halt = args.halt_poll is not None
        lines += [
            "",
            f"Fixed load, `-Q {args.rate}`, ECS /24, {args.rate_reps} interleaved round"
            f"{'s' if args.rate_reps > 1 else ''} (median; min–max):",
            "",
            "| server |" + (" guest halt-poll |" if halt else "")
            + " achieved qps | avg latency ms | max latency ms |"
            + (" p50 ms | p99 ms |" if args.percentiles else "")
            + " lost % | server core busy (all processes) |",
            "|---|" + ("---:|" if halt else "") + "---:|---:|---:|"
            + ("---:|---:|" if args.percentiles else "") + "---:|---:|",
        ]

        def spread(values: list[float], scale: float, form: str) -> str:
            middle = statistics.median(values) * scale
            if len(values) == 1:
                return format(middle, form)
            return (f"{format(middle, form)} ({format(min(values) * scale, form)}–"
                    f"{format(max(values) * scale, form)})")

        def percentile(run: Run, share: float) -> float:
            ordered = sorted(run.latencies) or [float("nan")]
            return ordered[min(len(ordered) - 1, int(len(ordered) * share))]

        for setting in rate_settings(args):
            for server in servers:
                runs = server.runs.get(rate_key(setting), [])
                if not runs:
                    continue
                cells = [server.name]
                if halt:
                    cells.append(f"{setting // 1000} µs")
                cells += [f"{statistics.median(r.qps for r in runs):,.0f}",
                          spread([r.latency_avg for r in runs], 1e3, ".3f"),
                          spread([r.latency_max for r in runs], 1e3, ".3f")]
                if args.percentiles:
                    cells += [spread([percentile(r, 0.5) for r in runs], 1e3, ".3f"),
                              spread([percentile(r, 0.99) for r in runs], 1e3, ".3f")]
                cells += [f"{max(r.loss for r in runs) * 100:.2f}",
                          f"{statistics.median(r.server_busy for r in runs) * 100:.0f} %"]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Answers (`dig +short`): " + "; ".join(
        f"{s.name}: {s.answers.get('plain')} / ECS {ECS_TEXT}: {s.answers.get('ecs')}"
        for s in servers
    )]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help="apt-get install the peers, then exit")
    parser.add_argument("--duration", type=int, default=10, help="seconds per dnsperf run (10)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--outstanding", type=int, default=100)
    parser.add_argument("--rate", type=int, default=20000, help="fixed-rate run, 0 for none")
    parser.add_argument("--rate-reps", type=int, default=1,
                        help="interleaved fixed-rate rounds (1); the median is reported")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--only", default="",
                        help="comma-separated servers (gslb,gslb-w1,...,floor,gdnsd,knot)")
    parser.add_argument("--workers", default="",
                        help="comma-separated --workers counts: a gslb server for each (gslb-wN)")
    parser.add_argument("--python", default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
                        help="the interpreter of the gslb and floor rows (.venv's)")
    parser.add_argument("--compare-python", metavar="PATH",
                        help="another interpreter with the project installed: adds gslb@alt "
                             "and floor@alt rows, in the same rounds")
    parser.add_argument("--halt-poll", metavar="NS,NS",
                        type=lambda text: [int(n) for n in text.split(",")],
                        help="run the fixed-rate rounds under each of these guest "
                             "haltpoll.guest_halt_poll_ns values (root; restored after)")
    parser.add_argument("--percentiles", action="store_true",
                        help="p50 and p99 of the fixed-rate latencies (dnsperf -v)")
    args = parser.parse_args()
    if args.install:
        install()
        return 0
    if args.halt_poll is not None and not os.access(HALT_POLL, os.W_OK):
        print(f"--halt-poll needs {HALT_POLL} writable (root, cpuidle-haltpoll)",
              file=sys.stderr)
        return 1
    for tool in ("dnsperf", "dig", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run with --install first (as root)", file=sys.stderr)
            return 1

    with tempfile.TemporaryDirectory(prefix="gslb-peers-") as tmp:
        work = Path(tmp)
        queries = work / "queries.txt"
        queries.write_text(f"{NAME} A\n")
        servers = make_servers(work, args.server_cpu,
                               [int(n) for n in args.workers.split(",") if n.strip()],
                               args.python, args.compare_python)
        if args.only:
            servers = [s for s in servers if s.name in args.only.split(",")]
        found_halt_poll = HALT_POLL.read_text().strip() if args.halt_poll is not None else None
        try:
            for server in servers:
                start(server, work)
                server.answers = {"plain": dig(server.port, None), "ecs": dig(server.port, ECS_TEXT)}
                dnsperf(server, queries, argparse.Namespace(**{**vars(args), "duration": 2}),
                        True, None)  # warm-up, not recorded
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime())
            for rep in range(args.reps):
                for kind in ("plain", "ecs"):
                    for server in servers:
                        run = dnsperf(server, queries, args, kind == "ecs", None)
                        server.runs.setdefault(kind, []).append(run)
                        print(f"round {rep + 1} {kind:5} {server.name:6} {run.qps:10,.0f} qps "
                              f"{run.cpu_per_query_us:6.1f} µs/query", file=sys.stderr)
            if args.rate:
                for rep in range(args.rate_reps):  # interleaved too
                    for setting in rate_settings(args):
                        set_halt_poll(setting)
                        for server in servers:
                            run = dnsperf(server, queries, args, True, args.rate)
                            server.runs.setdefault(rate_key(setting), []).append(run)
                            print(f"rate {rep + 1} {server.name:6} "
                                  f"{'' if setting is None else f'halt-poll {setting} '}"
                                  f"{run.latency_avg * 1e3:.3f} ms avg", file=sys.stderr)
        finally:
            if found_halt_poll is not None:
                HALT_POLL.write_text(found_halt_poll + "\n")
            for server in servers:
                stop(server)
        print(f"Run {started}, {os.cpu_count()} CPUs, load average before: "
              f"{Path('/proc/loadavg').read_text().split()[0]}; gslb and floor on "
              f"{describe(args.python)}"
              + (f", gslb@alt and floor@alt on {describe(args.compare_python)}"
                 if args.compare_python else "") + "\n")
        print(report(servers, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
