"""How soon a change reaches DNS answers while the response cache is hot.

    .venv/bin/python benchmarks/freshness.py [--changes 200] [--workers 0,2] [--services 1]

Starts ``gslb serve`` on free loopback ports with a one-service zone (``--services N``:
and N - 1 more services of 10 endpoints in three pools, as ``scale.py`` has them; once
per ``--workers`` count: 0 is DNS in the one process), keeps asking the service's A record
from 16 client sockets (so its answer is cached; with workers, the kernel maps each
socket's source port to one worker, so the 16 reach every worker but with odds of
2^-15), and makes ``--changes`` changes of each kind through the HTTP API:

- registration: ``POST /register`` and ``POST /deregister`` of one endpoint, in turn;
- health: ``POST /heartbeat`` with ``draining`` and ``alive``, in turn (an endpoint that
  drains leaves the answers; one that is alive again comes back).

For each change it measures the time from sending the request until every client
socket has had an answer that shows it, and counts the queries answered with the old
state after the API had replied (0 means the very next answer was fresh, on every
socket). Prints p50, p99 and max. Bounded: at most 2 s of polling per change.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fresh.bench.example"
ADDRESS = "192.0.2.99"
CLIENTS = 16
ZONE = """\
zone: bench.example
nameservers: {ns1: [127.0.0.1]}
services:
  fresh:
    answers: 8
    policy: fill
    check: {type: none}
    pools:
      one: {allow: [192.0.2.0/24], endpoints: [192.0.2.1]}
"""


def zone_text(services: int) -> str:
    """The benchmark's zone with ``services - 1`` more services besides ``fresh``."""
    from scale import zone_text as filler  # the same services as the scale benchmark

    if services <= 1:
        return ZONE
    more = filler(services - 1).split("services:\n", 1)[1]
    return ZONE + more


def post(api: int, path: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def answered(port: int, query: dns.message.Message, sock: socket.socket) -> bool:
    """Whether the endpoint under change is in the answer now."""
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2, sock=sock)
    return any(r.address == ADDRESS for rrset in reply.answer for r in rrset)


def measure(port: int, clients: list[socket.socket], change: object, expect: bool
            ) -> tuple[float, int]:
    query = dns.message.make_query(SERVICE, "A")
    for sock in clients:  # hot: the current answer is cached
        answered(port, query, sock)
    start = time.perf_counter()
    change()  # type: ignore[operator]
    replied = time.perf_counter()
    stale = 0
    deadline = start + 2.0
    waiting = list(clients)
    while waiting:
        for sock in list(waiting):
            if answered(port, query, sock) == expect:
                waiting.remove(sock)
            elif time.perf_counter() > replied:
                stale += 1
        if time.perf_counter() > deadline:
            raise RuntimeError("the change did not reach DNS within 2 s")
    return (time.perf_counter() - start) * 1e3, stale


def report(kind: str, workers: int, figures: list[tuple[float, int]]) -> str:
    times = sorted(t for t, _ in figures)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    stale = sum(s for _, s in figures)
    return (f"| {kind} | {workers} | {len(times)} | {statistics.median(times):.2f} | "
            f"{p99:.2f} | {times[-1]:.2f} | {stale} |")


def run(workers: int, changes: int, services: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="gslb-fresh-") as tmp:
        zones = Path(tmp) / "zones"
        zones.mkdir()
        (zones / "bench.yaml").write_text(
            zone_text(services).replace("scale.example", "bench.example"))
        server = subprocess.Popen(
            [sys.executable, "-m", "gslb", "serve", "--zones", str(zones), "--dns", "127.0.0.1:0",
             "--api", "127.0.0.1:0", "--state", str(Path(tmp) / "state.sqlite"), "--geoip", "none",
             "--workers", str(workers)],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        clients = []
        try:
            dns_port = api_port = 0
            assert server.stderr is not None
            for line in server.stderr:
                if match := re.search(r"dns listening on 127\.0\.0\.1:(\d+)", line):
                    dns_port = int(match.group(1))
                if match := re.search(r"api listening on http://127\.0\.0\.1:(\d+)", line):
                    api_port = int(match.group(1))
                    break
            drain = threading.Thread(target=server.stderr.read, daemon=True)
            drain.start()  # keep reading its log, or a full pipe would stall the server
            for _ in range(CLIENTS):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                clients.append(sock)
            endpoint = {"service": SERVICE, "pool": "one", "address": ADDRESS}
            registration = []
            for i in range(changes):
                path = "/register" if i % 2 == 0 else "/deregister"
                registration.append(measure(
                    dns_port, clients, lambda p=path: post(api_port, p, endpoint), path == "/register"))  # type: ignore[misc]
            post(api_port, "/register", {**endpoint, "heartbeat_timeout": 600})
            health = []
            for i in range(changes):
                status = "draining" if i % 2 == 0 else "alive"
                health.append(measure(
                    dns_port, clients,
                    lambda s=status: post(api_port, "/heartbeat", {**endpoint, "status": s}),  # type: ignore[misc]
                    status == "alive",
                ))
        finally:
            for sock in clients:
                sock.close()
            server.terminate()
            server.wait(timeout=10)
    return [report("register / deregister", workers, registration),
            report("heartbeat draining / alive", workers, health)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200, help="changes of each kind (200)")
    parser.add_argument("--workers", default="0,2",
                        help="comma-separated --workers counts to run, one after the other (0,2)")
    parser.add_argument("--services", type=int, default=1, help="services in the zone (1)")
    args = parser.parse_args()
    rows = []
    for workers in (int(n) for n in args.workers.split(",")):
        rows += run(workers, args.changes, args.services)
    print(f"{args.services:,} services. From sending the API request until all {CLIENTS} "
          "client sockets had a DNS answer that shows the change (ms);")
    print("stale: answers with the old state after the API had replied.\n")
    print("| change | workers | count | p50 ms | p99 ms | max ms | stale answers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
