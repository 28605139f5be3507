"""A real ``gslb serve`` process on free ports with a zone written for the test, and
the endpoint processes it checks: for the chaos and overload tests."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import test_e2e as e2e
from test_e2e import Process

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
    """``gslb serve`` on ``zones``, on 127.0.0.1 port 0; returns it and both ports."""
    return e2e.start_gslb(state, zones, *flags)


def endpoint_states(api_port: int, service: str, timeout: float = 5) -> dict[str, str]:
    """address -> health state ("up", "down", ...) from GET /services/{name}."""
    url = f"http://127.0.0.1:{api_port}/services/{service}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.load(response)
    return {e["address"]: e["health"]["state"] for pool in body["pools"] for e in pool["endpoints"]}
