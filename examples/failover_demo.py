"""The failover story on loopback, in under a minute:

    python3 examples/failover_demo.py

starts ``gslb serve`` on the bundled zone (free ports, a throw-away state file), three
endpoints (eu-west: 127.0.0.11 and 127.0.0.12, us-east: 127.0.0.21), registers them over
HTTP, asks ``dig`` who serves www, kills eu-west, watches the answers move to us-east,
brings eu-west back and watches them return. Exits 1 if any step does not happen in time.

Needs the project installed (``gslb`` on PATH or beside this Python) and ``dig``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WWW = "www.gslb.example.com"
POOLS = {"127.0.0.11": "eu-west", "127.0.0.12": "eu-west", "127.0.0.21": "us-east"}


def gslb_command() -> str:
    beside = Path(sys.executable).with_name("gslb")
    found = str(beside) if beside.exists() else shutil.which("gslb")
    if found is None:
        sys.exit("gslb is not installed: run `make serve` once, or `pip install -e .`")
    return found


def free_port() -> int:
    """A port free on every endpoint address (they all listen on the same one)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.11", 0))
            port = int(probe.getsockname()[1])
        try:
            for address in POOLS:
                with socket.socket() as sock:
                    sock.bind((address, port))
            return port
        except OSError:
            continue
    sys.exit("no free port on 127.0.0.11-21")


def wait_line(proc: subprocess.Popen[str], marker: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return line
        if not line and proc.poll() is not None:
            break
    sys.exit(f"{proc.args[0]} did not start")  # type: ignore[index]


def start_gslb(state: Path) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [gslb_command(), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--state", str(state), "--zones", str(ROOT / "zones"), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    dns = int(wait_line(proc, "dns listening on").rsplit(":", 1)[1].split()[0])
    api = int(wait_line(proc, "api listening on").rsplit(":", 1)[1].split()[0])
    wait_line(proc, "serving")
    # keep reading its log so that a full pipe never blocks the server
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
    return proc, dns, api


def start_endpoint(address: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "endpoint.py"), address, str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    wait_line(proc, "listening")
    return proc


def dig(dns_port: int) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(dns_port), WWW, "A", "+short", "+time=1", "+tries=1"],
        capture_output=True, text=True, timeout=5,
    ).stdout
    return sorted(out.split())


def show(step: str) -> None:
    print(f"\n== {step}", flush=True)


def until(dns_port: int, expected: set[str], limit: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        answer = dig(dns_port)
        if set(answer) == expected:
            print(f"   after {time.monotonic() - start:4.1f} s: {' '.join(answer)}", flush=True)
            return
        time.sleep(0.2)
    sys.exit(f"FAILED: answers did not become {sorted(expected)} within {limit} s")


def main() -> None:
    if shutil.which("dig") is None:
        sys.exit("dig is needed: apt-get install bind9-dnsutils (or run `make test` once)")
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gslb, dns_port, api_port = start_gslb(Path(tmp) / "state.sqlite")
            procs.append(gslb)
            print(f"gslb serving DNS on 127.0.0.1:{dns_port}, API on 127.0.0.1:{api_port}")
            port = free_port()
            endpoints = {address: start_endpoint(address, port) for address in POOLS}
            procs += endpoints.values()

            show("register three endpoints over HTTP")
            for address, pool in POOLS.items():
                body = {"service": WWW, "pool": pool, "address": address, "port": port}
                request = urllib.request.Request(
                    f"http://127.0.0.1:{api_port}/register", data=json.dumps(body).encode())
                with urllib.request.urlopen(request, timeout=5) as response:
                    print(f"   POST /register {address} ({pool}): {response.status}")

            eu = {a for a, p in POOLS.items() if p == "eu-west"}
            us = {a for a, p in POOLS.items() if p == "us-east"}
            show(f"dig @127.0.0.1 -p {dns_port} {WWW} A +short  (eu-west has priority 1)")
            until(dns_port, eu, 5)

            time.sleep(2.5)  # a few check rounds, so the prober has confirmed them up
            show("kill eu-west's endpoints: answers fail over to us-east "
                 "(checks every 1 s, down after 2 failures)")
            for address in eu:
                endpoints[address].kill()
            until(dns_port, us, 5)

            show("restart eu-west: answers come back")
            for address in eu:
                endpoints[address] = start_endpoint(address, port)
                procs.append(endpoints[address])
            until(dns_port, eu, 5)
            print("\nok: the whole story ran")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
