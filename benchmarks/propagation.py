"""How long a change made through one instance takes to reach another.

Starts a redis-server (temporary directory, free loopback port, appendfsync always)
and two ``gslb serve`` instances on it with the bundled zone, then registers endpoints
alternately through each instance and times, for each, from sending the POST until the
other instance's ``GET /services/...`` lists it. Prints the median, 95th percentile and
maximum; the target is 200 ms.

    .venv/bin/python benchmarks/propagation.py [COUNT]
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSLB = Path(sys.executable).with_name("gslb")
SERVICE = "www.gslb.example.com"
TARGET = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--dir", str(directory), "--appendonly", "yes",
         "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def start_gslb(redis_port: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--state", f"redis://127.0.0.1:{redis_port}/0", "--zones", str(ROOT / "zones"),
         "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    api = None
    deadline = time.monotonic() + 15
    for line in proc.stdout:
        found = re.search(r"api listening on http://127\.0\.0\.1:(\d+)", line)
        if found:
            api = int(found.group(1))
        if re.search(r"serving \d+ zone", line) or time.monotonic() > deadline:
            break
    if api is None:
        proc.kill()
        raise SystemExit("gslb serve did not start")
    # keep reading its output so that it never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, api


def listed(api: int) -> set[tuple[str, int]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/services/{SERVICE}", timeout=5) as r:
        service = json.load(r)
    return {(e["address"], e["port"]) for pool in service["pools"] for e in pool["endpoints"]}


def register(api: int, address: str, port: int) -> None:
    body = json.dumps({"service": SERVICE, "pool": "us-east", "address": address, "port": port})
    request = urllib.request.Request(f"http://127.0.0.1:{api}/register", data=body.encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp:
        redis, redis_port = start_redis(Path(tmp))
        instances = []
        try:
            instances = [start_gslb(redis_port), start_gslb(redis_port)]
            apis = [api for _, api in instances]
            took = []
            for i in range(count):
                source, other = apis[i % 2], apis[1 - i % 2]
                address, port = f"127.0.{200 + i // 250}.{1 + i % 250}", 9000
                started = time.perf_counter()
                register(source, address, port)
                deadline = started + 5
                while (address, port) not in listed(other):
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"{address} did not reach the other instance in 5 s")
                took.append(time.perf_counter() - started)
        finally:
            for proc, _ in instances:
                proc.terminate()
                proc.wait(10)
            redis.terminate()
            redis.wait(10)
    took.sort()
    p95 = took[min(len(took) - 1, int(len(took) * 0.95))]
    print(f"{count} registrations, alternately through each of 2 instances; "
          f"until listed by the other:")
    print(f"  median {statistics.median(took) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
          f"max {took[-1] * 1000:.1f} ms (target {TARGET * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
