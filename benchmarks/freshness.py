"""How soon a change reaches DNS answers while the response cache is hot.

    .venv/bin/python benchmarks/freshness.py [--changes 200]

Starts ``gslb serve`` on free loopback ports with a one-service zone, keeps asking the
service's A record (so its answer is cached), and makes ``--changes`` changes of each
kind through the HTTP API:

- registration: ``POST /register`` and ``POST /deregister`` of one endpoint, in turn;
- health: ``POST /heartbeat`` with ``draining`` and ``alive``, in turn (an endpoint that
  drains leaves the answers; one that is alive again comes back).

For each change it measures the time from sending the request to the first DNS answer
that shows it, and counts the queries answered with the old state after the API had
replied (0 means the very next answer was fresh). Prints p50, p99 and max. Bounded: at
most 2 s of polling per change.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fresh.bench.example"
ADDRESS = "192.0.2.99"
ZONE = """\
zone: bench.example
nameservers: {ns1: [127.0.0.1]}
services:
  fresh:
    answers: 8
    policy: fill
    check: {type: none}
    pools:
      one: {endpoints: [192.0.2.1]}
"""


def post(api: int, path: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def answered(port: int, query: dns.message.Message) -> bool:
    """Whether the endpoint under change is in the answer now."""
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
    return any(r.address == ADDRESS for rrset in reply.answer for r in rrset)


def measure(port: int, change: object, expect: bool) -> tuple[float, int]:
    query = dns.message.make_query(SERVICE, "A")
    for _ in range(3):  # hot: the current answer is cached
        answered(port, query)
    start = time.perf_counter()
    change()  # type: ignore[operator]
    stale = 0
    deadline = start + 2.0
    while answered(port, query) != expect:
        stale += 1
        if time.perf_counter() > deadline:
            raise RuntimeError("the change did not reach DNS within 2 s")
    return (time.perf_counter() - start) * 1e3, stale


def report(kind: str, figures: list[tuple[float, int]]) -> str:
    times = sorted(t for t, _ in figures)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    stale = sum(s for _, s in figures)
    return (f"| {kind} | {len(times)} | {statistics.median(times):.2f} | {p99:.2f} | "
            f"{times[-1]:.2f} | {stale} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200, help="changes of each kind (200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gslb-fresh-") as tmp:
        zones = Path(tmp) / "zones"
        zones.mkdir()
        (zones / "bench.yaml").write_text(ZONE)
        server = subprocess.Popen(
            [sys.executable, "-m", "gslb", "serve", "--zones", str(zones), "--dns", "127.0.0.1:0",
             "--api", "127.0.0.1:0", "--state", str(Path(tmp) / "state.sqlite"), "--geoip", "none"],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        try:
            dns_port = api_port = 0
            assert server.stderr is not None
            for line in server.stderr:
                if match := re.search(r"dns listening on 127\.0\.0\.1:(\d+)", line):
                    dns_port = int(match.group(1))
                if match := re.search(r"api listening on http://127\.0\.0\.1:(\d+)", line):
                    api_port = int(match.group(1))
                    break
            endpoint = {"service": SERVICE, "pool": "one", "address": ADDRESS}
            registration = []
            for i in range(args.changes):
                path = "/register" if i % 2 == 0 else "/deregister"
                registration.append(
                    measure(dns_port, lambda p=path: post(api_port, p, endpoint), path == "/register"))  # type: ignore[misc]
            post(api_port, "/register", {**endpoint, "heartbeat_timeout": 600})
            health = []
            for i in range(args.changes):
                status = "draining" if i % 2 == 0 else "alive"
                health.append(measure(
                    dns_port, lambda s=status: post(api_port, "/heartbeat", {**endpoint, "status": s}),  # type: ignore[misc]
                    status == "alive",
                ))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("From sending the API request to the first DNS answer that shows the change (ms);")
    print("stale: answers with the old state after the API had replied.\n")
    print("| change | count | p50 ms | p99 ms | max ms | stale answers |")
    print("|---|---:|---:|---:|---:|---:|")
    print(report("register / deregister", registration))
    print(report("heartbeat draining / alive", health))


if __name__ == "__main__":
    main()
