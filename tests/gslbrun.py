"""A real ``gslb serve`` process on free ports with a zone written for the test, and
the endpoint processes it checks: for the chaos and overload tests."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from test_e2e import GSLB, Process

APEX = "gslb.example.com"


def write_zone(directory: Path, services: str) -> Path:
    """A zones directory holding gslb.example.com with the given ``services:`` block."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gslb.yaml").write_text(
        f"zone: {APEX}\n"
        "soa: {contact: hostmaster@example.com, minimum: 30}\n"
        "nameservers: {ns1: [127.0.0.1]}\n"
        f"services:\n{services}"
    )
    return directory


def start_gslb(zones: Path, state: Path, *flags: str) -> tuple[Process, int, int]:
    """``gslb serve`` on 127.0.0.1 port 0 (DNS and API); returns it and both ports."""
    proc = Process.start(
        [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--state", str(state), "--zones", str(zones), *flags],
        r"serving \d+ zone",
    )
    dns_port = int(proc.find(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
    api_port = int(proc.find(r"api listening on http://127\.0\.0\.1:(\d+)").group(1))
    return proc, dns_port, api_port


def endpoint_states(api_port: int, service: str, timeout: float = 5) -> dict[str, str]:
    """address -> health state ("up", "down", ...) from GET /services/{name}."""
    url = f"http://127.0.0.1:{api_port}/services/{service}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.load(response)
    return {e["address"]: e["health"]["state"] for pool in body["pools"] for e in pool["endpoints"]}
