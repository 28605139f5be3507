"""Zone files reloaded live by ``POST /reload`` and ``SIGHUP`` on the real ``gslb serve``:
a bad file changes nothing and every problem is reported; a good one is served at once
with a higher SOA serial; a zone file's service takes precedence over an API one."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from gslbrun import start_gslb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


ZONE = """zone: reload.test
nameservers: {ns1: [127.0.0.1]}
records:
  a: {A: ADDRESS}
services:
  web:
    check: {type: none}
    pools: {main: {endpoints: [192.0.2.80]}}
"""


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def lookup(port: int, name: str, rtype: str = "A") -> tuple[set[str], int]:
    """The addresses answered for ``name`` and the zone's SOA serial."""
    query = dns.message.make_query(name, rtype)
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
    addresses = {rr.to_text() for rrset in reply.answer for rr in rrset}
    soa = dns.query.udp(dns.message.make_query("reload.test", "SOA"), "127.0.0.1",
                        port=port, timeout=2)
    return addresses, soa.answer[0][0].serial


def test_reload_applies_good_files_and_refuses_bad_ones(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    zone_file = zones / "reload.yaml"
    zone_file.write_text(ZONE.replace("ADDRESS", "192.0.2.1"))
    proc, dns_port, api_port = start_gslb(zones, tmp_path / "state.sqlite", "--geoip", "none")
    try:
        answered, first_serial = lookup(dns_port, "a.reload.test")
        assert answered == {"192.0.2.1"}

        # a bad file: 400 with every problem as file:line: field: message; nothing changes
        zone_file.write_text(ZONE.replace("ADDRESS", "192.0.2.999") + "colour: red\n")
        status, body = call(api_port, "POST", "/reload", {})
        assert status == 400
        problems = body["problems"]
        assert isinstance(problems, list) and len(problems) == 2
        assert any(f"{zone_file}:4: records.a.A:" in p for p in problems), problems
        assert any(f"{zone_file}:9: colour: unknown field" in p for p in problems), problems
        assert lookup(dns_port, "a.reload.test") == ({"192.0.2.1"}, first_serial)

        # an API service that a zone file then defines: the file wins
        status, _ = call(api_port, "PUT", "/services/api.reload.test",
                         {"check": {"type": "none"}, "pools": {"p": {"endpoints": ["192.0.2.90"]}}})
        assert status == 201
        assert lookup(dns_port, "api.reload.test")[0] == {"192.0.2.90"}

        zone_file.write_text(ZONE.replace("ADDRESS", "192.0.2.2") + """  api:
    check: {type: none}
    pools: {file: {endpoints: [192.0.2.91]}}
""")
        status, body = call(api_port, "POST", "/reload", {})
        assert (status, body) == (200, {"reloaded": True, "zones": ["reload.test"]})
        answered, serial = lookup(dns_port, "a.reload.test")
        assert answered == {"192.0.2.2"}
        assert serial > first_serial
        assert lookup(dns_port, "api.reload.test")[0] == {"192.0.2.91"}
        status, shown = call(api_port, "GET", "/services/api.reload.test")
        assert shown["source"] == str(zone_file)
        proc.find(r"service api\.reload\.test\. \(from the API\) is shadowed by zone file")

        # SIGHUP does the same
        zone_file.write_text(ZONE.replace("ADDRESS", "192.0.2.3"))
        proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while lookup(dns_port, "a.reload.test")[0] != {"192.0.2.3"}:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        # the API service is back once the file no longer defines that name
        assert lookup(dns_port, "api.reload.test")[0] == {"192.0.2.90"}
    finally:
        proc.stop(signal.SIGTERM)
