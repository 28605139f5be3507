"""Every acknowledged write survives ``kill -9``: clients register endpoints in a loop
against the real ``gslb serve``, the server is killed with SIGKILL at a random moment,
and after a restart every registration that got a 2xx answer is there, beside a
service made with PUT and an admin state set before the crash."""

from __future__ import annotations

import http.client
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from test_e2e import Process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GSLB = Path(sys.executable).with_name("gslb")
CLIENTS = 4
MAX_PER_CLIENT = 3000  # bounds each loop in count; the kill bounds it in time

ZONE = """
zone: durable.test
nameservers: {ns1: [127.0.0.1]}
services:
  www:
    check: {type: none}
    pools:
      main:
        allow: [10.0.0.0/8]
"""


def start(tmp_path: Path) -> tuple[Process, int]:
    proc = Process.start(
        [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0", "--geoip", "none",
         "--state", str(tmp_path / "state.sqlite"), "--zones", str(tmp_path / "zones")],
        r"serving \d+ zone",
    )
    return proc, int(proc.find(r"api listening on http://127\.0\.0\.1:(\d+)").group(1))


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body)
        connection.request(method, path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "durable.yaml").write_text(ZONE)
    proc, port = start(tmp_path)
    acked: list[set[str]] = [set() for _ in range(CLIENTS)]
    try:
        status, _ = call(port, "PUT", "/services/api.durable.test", {
            "check": {"type": "none"}, "pools": {"p": {"endpoints": ["192.0.2.7"]}}})
        assert status == 201
        status, _ = call(port, "PUT", "/services/www.durable.test/pools/main/endpoints/10.0.0.1",
                         None)
        assert status == 400  # no body: nothing set
        call(port, "POST", "/register", {"service": "www.durable.test", "pool": "main",
                                         "address": "10.0.0.1"})
        status, _ = call(port, "PUT", "/services/www.durable.test/pools/main/endpoints/10.0.0.1",
                         {"admin": "disabled"})
        assert status == 200

        stop = threading.Event()

        def client(n: int) -> None:
            for i in range(MAX_PER_CLIENT):
                if stop.is_set():
                    return
                address = f"10.{n + 1}.{i // 256}.{i % 256}"
                try:
                    status, _ = call(port, "POST", "/register", {
                        "service": "www.durable.test", "pool": "main", "address": address})
                except (OSError, http.client.HTTPException):
                    return  # the server is gone: this write was not acknowledged
                if 200 <= status < 300:
                    acked[n].add(address)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(0.5, 2.5))
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        proc.stop(signal.SIGKILL)

    total = sum(len(a) for a in acked)
    print(f"{total} registrations acknowledged before SIGKILL")
    assert total >= 20  # the kill came in the middle of real work

    proc, port = start(tmp_path)
    try:
        status, service = call(port, "GET", "/services/www.durable.test")
        assert status == 200
        endpoints = {e["address"]: e for e in service["pools"][0]["endpoints"]}  # type: ignore[index]
        missing = set().union(*acked) - set(endpoints)
        assert not missing, f"{len(missing)} acknowledged registrations lost: {sorted(missing)[:5]}"
        assert endpoints["10.0.0.1"]["health"]["admin"] == "disabled"
        status, made = call(port, "GET", "/services/api.durable.test")
        assert status == 200 and made["source"] == "api"  # type: ignore[index]
    finally:
        proc.stop(signal.SIGTERM)
