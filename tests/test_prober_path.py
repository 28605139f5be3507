"""The prober's per-check path: a check whose result leaves its tracker as it is
takes the short way (``Tracker.steady``), and every check, short way or not, refreshes
the endpoint's last-check note that the API shows."""

from __future__ import annotations

import itertools
import time
from ipaddress import ip_address

from test_health import wait_for
from test_tcp_checks import listener

from gslb.config import load_zone_text, parse_check
from gslb.health.prober import ProbeState, Tracker
from gslb.health.thread import HealthThread
from gslb.model import EndpointRef
from gslb.registry import Registry

HOST = "127.0.0.93"
ZONE = """
zone: gslb.example.com
nameservers: {ns1: [127.0.0.1]}
services:
  www:
    check: {type: tcp, interval: 0.1, timeout: 0.1, rise: 2, fall: 2}
    pools:
      main:
        endpoints: [{address: 127.0.0.93, port: PORT}]
"""


def test_tracker_steady_is_the_one_result_that_changes_nothing() -> None:
    for rise, fall in itertools.product((1, 2, 3), repeat=2):
        check = parse_check({"type": "tcp", "rise": rise, "fall": fall})
        for start_up in (True, False):
            for results in itertools.product((True, False), repeat=6):
                tracker = Tracker.start(check, start_up)
                for ok in results:
                    steady = tracker.steady
                    for result in (True, False):
                        unchanged = tracker.observe(result) is tracker
                        assert unchanged == (result is steady), (tracker, result)
                    tracker = tracker.observe(ok)
                if tracker.state is not ProbeState.UNCONFIRMED and not tracker.streak:
                    assert tracker.steady is tracker.up


def test_every_check_refreshes_the_last_check_note() -> None:
    listening = listener(HOST, 64)
    port = listening.getsockname()[1]
    try:
        registry = Registry()
        registry.load_zones([load_zone_text(ZONE.replace("PORT", str(port)), "z.yaml")])
        ref = EndpointRef("www.gslb.example.com.", "main", ip_address(HOST), port)
        with HealthThread(registry):
            wait_for(lambda: (note := registry.check_note(ref)) is not None and note.ok, 5,
                     "a passing check")
            time.sleep(1.1)  # past the registry's delay for confirmations and first RTTs
            generation = registry.generation
            seen = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                note = registry.check_note(ref)
                assert note is not None
                if not seen or note.at != seen[-1].at:
                    seen.append(note)
                time.sleep(0.02)
            assert registry.generation == generation  # steady checks publish nothing
        assert len(seen) >= 8  # a check every 0.1 s (± 5 %), each one seen
        for earlier, later in itertools.pairwise(seen):
            assert 0.05 < later.at - earlier.at < 0.5
        for note in seen:
            assert (note.ok, note.result) == (True, "connected")
            # measured finer than the loop's clock (whole milliseconds on uvloop, where a
            # loopback RTT read 0 once in a few checks)
            assert note.rtt is not None and 0 < note.rtt < 0.5
        (view,) = registry.snapshot.service("www.gslb.example.com.").endpoints  # type: ignore[union-attr]
        assert view.health.up and view.health.confirmed
    finally:
        listening.close()
