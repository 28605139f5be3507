"""Overload, end to end: the real ``gslb serve`` under a 30-second UDP flood far above what
it can answer. It must drop rather than queue (memory stays bounded), and the HTTP API,
the prober and DNS over TCP must keep working meanwhile. Prints the peak RSS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
from gslbrun import APEX, endpoint_states, start_gslb, write_zone
from test_e2e import Process, free_port, start_endpoint

FLOOD_SECONDS = float(os.environ.get("GSLB_FLOOD_SECONDS", "30"))
MAX_DATAGRAMS = 50_000_000  # the sender stops at this count or at FLOOD_SECONDS
RSS_GROWTH_LIMIT_MB = 64
INTERVAL, TIMEOUT, RISE, FALL = 1.0, 0.5, 2, 2
DETECTION = INTERVAL * FALL + TIMEOUT + 1
ENDPOINTS = ("127.0.0.41", "127.0.0.42")
WWW = f"www.{APEX}"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(FLOOD_SECONDS + 90)]

# Sends a mix of queries as fast as one process can, reads what comes back, reports both.
SENDER = r"""
import socket, sys, time
import dns.message
port, seconds, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
names = ["www.gslb.example.com", "gslb.example.com", "nothing.gslb.example.com", "example.org"]
queries = []
for i in range(64):
    q = dns.message.make_query(names[i % 4], "A" if i % 3 else "SOA", use_edns=i % 2)
    q.id = i
    queries.append(q.to_wire())
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
sock.setblocking(False)
sock.connect(("127.0.0.1", port))
sent = received = 0
end = time.monotonic() + seconds
while sent < limit and time.monotonic() < end:
    for q in queries:
        try:
            sock.send(q)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
    while True:
        try:
            sock.recv(4096)
            received += 1
        except (BlockingIOError, ConnectionRefusedError):
            break
print(sent, received, flush=True)
"""


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def test_flood(tmp_path: Path) -> None:
    port = free_port(ENDPOINTS)
    endpoints = ", ".join(f"{{address: {a}, port: {port}}}" for a in ENDPOINTS)
    zones = write_zone(tmp_path / "zones", f"""
  www:
    check: {{type: http, interval: {INTERVAL}, timeout: {TIMEOUT}, rise: {RISE}, fall: {FALL}}}
    pools:
      only:
        endpoints: [{endpoints}]
""")
    procs: dict[str, Process] = {}
    gslb: Process | None = None
    sender: subprocess.Popen[str] | None = None
    try:
        for address in ENDPOINTS:
            procs[address] = start_endpoint(address, port)
        gslb, dns_port, api_port = start_gslb(zones, tmp_path / "state.sqlite")
        pid = gslb.popen.pid
        query = dns.message.make_query(WWW, "A")
        for _ in range(2000):  # warm: caches and allocator at their working size
            dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2)
        time.sleep(INTERVAL * RISE + 1)
        assert set(endpoint_states(api_port, WWW).values()) == {"up"}
        baseline = memory_kb(pid)["VmRSS"]

        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(dns_port), str(FLOOD_SECONDS), str(MAX_DATAGRAMS)],
            stdout=subprocess.PIPE, text=True,
        )
        start = time.monotonic()
        healthz: list[float] = []
        tcp_answers = tcp_tries = 0
        rss: list[int] = []
        victim = ENDPOINTS[0]
        killed_at = revived_at = down_after = up_after = None
        while sender.poll() is None and time.monotonic() - start < FLOOD_SECONDS + 30:
            now = time.monotonic() - start
            asked = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=5) as r:
                assert r.status == 200
            healthz.append(time.monotonic() - asked)
            tcp_tries += 1
            with contextlib.suppress(OSError, dns.exception.Timeout):
                tcp_answers += bool(dns.query.tcp(query, "127.0.0.1", port=dns_port, timeout=2).answer)
            rss.append(memory_kb(pid)["VmRSS"])
            states = endpoint_states(api_port, WWW)
            if killed_at is None and now > FLOOD_SECONDS * 0.2:
                procs[victim].stop(signal.SIGKILL)  # the prober must notice, flood or not
                killed_at = now
            elif killed_at is not None and down_after is None and states[victim] == "down":
                down_after = now - killed_at
            elif down_after is not None and revived_at is None:
                procs[victim] = start_endpoint(victim, port)
                revived_at = time.monotonic() - start
            elif revived_at is not None and up_after is None and states[victim] == "up":
                up_after = now - revived_at
            time.sleep(0.25)
        out, _ = sender.communicate(timeout=30)
        sent, received = (int(n) for n in out.split())
        peak = memory_kb(pid)["VmHWM"]
        assert dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2).answer  # still serving
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        for proc in procs.values():
            proc.stop(signal.SIGKILL)
        if gslb is not None:
            gslb.stop()
    assert gslb.popen.returncode == 0, "\n".join(gslb.lines[-20:])

    print(f"\nflood: {sent} datagrams in {FLOOD_SECONDS:.0f} s ({sent / FLOOD_SECONDS:.0f}/s), "
          f"{received} replies read back ({received / FLOOD_SECONDS:.0f}/s, "
          f"{100 * received / sent:.1f}%; the rest dropped by the kernel or the server)")
    print(f"server RSS: {baseline / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB "
          f"(VmHWM), at most {max(rss) / 1024:.1f} MiB sampled during the flood")
    print(f"API /healthz during the flood: {len(healthz)} of {len(healthz)} answered, median "
          f"{statistics.median(healthz) * 1000:.0f} ms, max {max(healthz) * 1000:.0f} ms; "
          f"DNS over TCP {tcp_answers} of {tcp_tries}")
    print(f"prober during the flood: endpoint down {down_after} s after its kill "
          f"(bound {DETECTION} s), up {up_after} s after its restart")
    assert received < sent * 0.9, "not above capacity: the sender must outpace the server"
    assert peak - baseline < RSS_GROWTH_LIMIT_MB * 1024
    assert down_after is not None and down_after <= DETECTION + 1  # + our 0.25 s polling, API
    assert up_after is not None and up_after <= INTERVAL * RISE + TIMEOUT + 2
    assert tcp_answers >= tcp_tries * 0.9
