"""No false failover under DNS load: the real ``gslb serve`` is flooded with queries by
dnsperf (a separate process, bounded in time) while it probes healthy endpoints every
second; not one endpoint may go down, and the checks must keep their rhythm. Once with
DNS in the one process, once with ``--workers 2`` (both workers flooded: dnsperf's
clients come from several source ports, which the kernel spreads over the workers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from gslbrun import start_gslb
from test_health import HealthServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WWW = "www.load.test"
INTERVAL = 1.0
FLOOD_SECONDS = 8
ENDPOINTS = [f"127.0.0.{i}" for i in range(31, 37)]

ZONE = f"""
zone: load.test
nameservers: {{ns1: [127.0.0.1]}}
records:
  static: {{A: 192.0.2.1}}
services:
  www:
    ttl: 10
    answers: 2
    check: {{type: http, path: /health, interval: {INTERVAL}, timeout: 0.5, rise: 2, fall: 2}}
    pools:
      main:
        allow: [127.0.0.0/8]
"""


@pytest.fixture
def endpoints() -> Iterator[list[HealthServer]]:
    servers = [HealthServer(address).start() for address in ENDPOINTS]
    yield servers
    for server in servers:
        server.stop()


def api(port: int, method: str, path: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def down_transitions(service: dict[str, object]) -> list[str]:
    found = []
    for pool in service["pools"]:  # type: ignore[attr-defined]
        for endpoint in pool["endpoints"]:
            for change in endpoint["health"]["history"]:
                if change["to"] == "down":
                    found.append(f"{endpoint['address']}: {change}")
    return found


@pytest.mark.parametrize("workers", [0, 2])
def test_dns_flood_causes_no_false_failover(
    tmp_path: Path, endpoints: list[HealthServer], workers: int
) -> None:
    if shutil.which("dnsperf") is None:
        pytest.fail("dnsperf is needed for the load test: `make test` installs it")
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "load.yaml").write_text(ZONE)
    proc, dns_port, api_port = start_gslb(zones, tmp_path / "state.sqlite", "--geoip", "none",
                                      "--workers", str(workers))
    try:
        for server in endpoints:
            api(api_port, "POST", "/register", {"service": WWW, "pool": "main",
                                                "address": server.host, "port": server.port})
        # every endpoint confirmed up before the flood
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            service = api(api_port, "GET", f"/services/{WWW}")
            states = [e["health"] for e in service["pools"][0]["endpoints"]]  # type: ignore[index]
            if len(states) == len(ENDPOINTS) and all(s["confirmed"] and s["up"] for s in states):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"endpoints not confirmed up: {states}")

        queries = tmp_path / "queries.txt"
        queries.write_text(f"{WWW} A\nstatic.load.test A\n{WWW} AAAA\nnothing.load.test A\n" * 50)
        workers_cpu = {w["pid"]: cpu_seconds(w["pid"])
                       for w in api(api_port, "GET", "/healthz").get("workers", [])}  # type: ignore[attr-defined]
        started = time.monotonic()
        flood = subprocess.run(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(dns_port), "-d", str(queries),
             "-l", str(FLOOD_SECONDS), "-c", "16", "-q", "500", "-t", "2"],
            capture_output=True, text=True, timeout=FLOOD_SECONDS + 30,
        )
        ended = time.monotonic()
        assert flood.returncode == 0, flood.stderr
        sent = re.search(r"Queries sent:\s+(\d+)", flood.stdout)
        qps = re.search(r"Queries per second:\s+([\d.]+)", flood.stdout)
        assert sent and qps, flood.stdout
        print(f"dnsperf: {sent.group(1)} queries sent, {qps.group(1)} answered per second")
        assert int(sent.group(1)) > 1000 * FLOOD_SECONDS  # it really was a flood

        # Every worker had its share of the flood. SO_REUSEPORT spreads by source port:
        # with 16 client sockets, all landing on one of two workers has odds of 2 in 65,536
        # (with 4 it was 1 in 8).
        for pid, before in workers_cpu.items():
            assert cpu_seconds(pid) - before > FLOOD_SECONDS * 0.1, (pid, cpu_seconds(pid) - before)

        service = api(api_port, "GET", f"/services/{WWW}")
        assert down_transitions(service) == []  # type: ignore[arg-type]
        assert not [line for line in proc.lines if "-> down" in line]
        # the checks kept their rhythm: no gap much longer than the interval during the flood
        worst = 0.0
        for server in endpoints:
            during = [t for t in server.times if started <= t <= ended]
            assert len(during) >= FLOOD_SECONDS / INTERVAL - 2, (server.host, len(during))
            gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
            worst = max(worst, *gaps)
        print(f"longest gap between checks of one endpoint during the flood: {worst:.3f} s")
        assert worst < INTERVAL * 1.5
    finally:
        proc.stop(signal.SIGTERM)
