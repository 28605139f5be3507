"""The dashboard at ``/`` in a real headless Chromium (Debian's ``chromium`` driven by
Playwright): it lists the services and their endpoints with their share of the DNS
answers, and an endpoint that dies turns down on the page without a reload while the
answers move to the next region.

The screenshot goes to $GSLB_SCREENSHOT when set, else into the test's temporary
directory; the test prints where.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from playwright import sync_api
from test_e2e import Process, free_port, start_endpoint, start_gslb

WWW = "www.gslb.example.com"
ENDPOINTS = {"127.0.0.61": "eu-west", "127.0.0.62": "us-east"}

pytestmark = pytest.mark.timeout(90)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is needed for the dashboard test: `make test` installs it")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, object]]:
    procs: dict[str, object] = {}
    gslb, dns_port, api_port = start_gslb(tmp_path / "state.sqlite")
    procs["gslb"] = gslb
    port = free_port(tuple(ENDPOINTS))
    for address, pool in ENDPOINTS.items():
        procs[address] = start_endpoint(address, port)
        body = {"service": WWW, "pool": pool, "address": address, "port": port}
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/register", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
    yield {"api": api_port, "dns": dns_port, "port": port, "procs": procs}
    for proc in procs.values():
        if isinstance(proc, Process):
            proc.stop(signal.SIGKILL)


def ask(dns_port: int) -> list[str]:
    query = dns.message.make_query(WWW, "A")
    reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2)
    return [rr.address for rrset in reply.answer for rr in rrset]


def share(section: sync_api.Locator, endpoint: str, percent: str) -> None:
    """Wait until the endpoint's row shows that share of the service's answers."""
    section.locator(f'tr[data-endpoint="{endpoint}"] td[data-share="{percent}"]').wait_for(
        timeout=10_000)


def test_dashboard_shows_an_endpoint_going_down(running: dict[str, object], tmp_path: Path) -> None:
    api, dns_port, port, procs = running["api"], running["dns"], running["port"], running["procs"]
    assert isinstance(dns_port, int)
    assert isinstance(procs, dict)
    dying, staying = f"127.0.0.61:{port}", f"127.0.0.62:{port}"
    screenshot = Path(os.environ.get("GSLB_SCREENSHOT") or tmp_path / "dashboard.png")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{api}/")
            section = page.locator(f'section[data-service="{WWW}"]')
            section.locator(f'tr[data-endpoint="{dying}"][data-state="up"]').wait_for(timeout=10_000)
            section.locator(f'tr[data-endpoint="{staying}"][data-state="up"]').wait_for(timeout=10_000)
            assert page.locator('section[data-service="geo.gslb.example.com"]').count() == 1
            assert page.locator('#map circle[data-pool="www.gslb.example.com/eu-west"]').count() == 1

            # the share of answers: eu-west (tier 1) takes them all while it is up
            assert all(ask(dns_port) == ["127.0.0.61"] for _ in range(30))
            share(section, dying, "100")
            share(section, staying, "0")
            procs["127.0.0.61"].stop(signal.SIGKILL)
            # checks every 1 s, fall 2, page refresh every 2 s
            section.locator(f'tr[data-endpoint="{dying}"][data-state="down"]').wait_for(timeout=10_000)
            # failed over: 10 more answers, all us-east: 30 and 10 of 40
            assert all(ask(dns_port) == ["127.0.0.62"] for _ in range(10))
            share(section, dying, "75")
            share(section, staying, "25")
            assert section.locator(f'tr[data-endpoint="{staying}"]').get_attribute("data-state") == "up"
            transition = section.locator("ul.history li", has_text=f"{dying}: up → down")
            transition.first.wait_for(timeout=5_000)  # the recent transitions list names it
            assert page.locator("#error").inner_text() == ""
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"dashboard screenshot: {screenshot}")
