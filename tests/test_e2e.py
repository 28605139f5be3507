"""The README's user story, end to end: the real ``gslb`` command, ``dig``, and real
HTTP endpoint processes on loopback, with the bundled zones/example.yaml."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gslb.config import load_zones

ROOT = Path(__file__).resolve().parent.parent
GSLB = Path(sys.executable).with_name("gslb")
EU = ("127.0.0.11", "127.0.0.12")
US = ("127.0.0.21",)
WWW = "www.gslb.example.com"

pytestmark = pytest.mark.timeout(120)


@dataclass
class Process:
    """A child process whose output is collected line by line."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, args: list[str], ready_pattern: str) -> Process:
        popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        proc = cls(popen)

        def pump() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                proc.lines.append(line.rstrip())
                if re.search(ready_pattern, line):
                    proc.ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not proc.ready.wait(15):
            proc.stop()
            raise AssertionError(f"{args[0]} did not start:\n" + "\n".join(proc.lines))
        return proc

    def find(self, pattern: str) -> re.Match[str]:
        for line in self.lines:
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matches {pattern!r}:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def free_port(hosts: tuple[str, ...]) -> int:
    """A TCP port free on every one of ``hosts``."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                with ExitStack() as stack:
                    for host in hosts[1:]:
                        sock = stack.enter_context(socket.socket())
                        sock.bind((host, port))
                return port
            except OSError:
                continue
    raise AssertionError("no common free port")


def start_endpoint(address: str, port: int) -> Process:
    return Process.start(
        [sys.executable, str(ROOT / "examples" / "endpoint.py"), address, str(port)],
        "endpoint listening",
    )


def start_gslb(state: Path, zones: Path = ROOT / "zones", *flags: str) -> tuple[Process, int, int]:
    """``gslb serve`` on 127.0.0.1 port 0 (DNS and API); returns it and both ports."""
    proc = Process.start(
        [str(GSLB), "serve", "--dns", "127.0.0.1:0", "--api", "127.0.0.1:0",
         "--state", str(state), "--zones", str(zones), *flags],
        r"serving \d+ zone",
    )
    dns_port = int(proc.find(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
    api_port = int(proc.find(r"api listening on http://127\.0\.0\.1:(\d+)").group(1))
    return proc, dns_port, api_port


@dataclass
class Dig:
    flags: set[str]
    status: str
    sections: dict[str, list[list[str]]]

    def rrs(self, section: str, rtype: str) -> list[list[str]]:
        return [rr for rr in self.sections.get(section, []) if rr[3] == rtype]


def dig(port: int, *query: str) -> Dig:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+norec", "+time=2", "+tries=1", *query],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    header = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([\w ]+);", out)
    assert header and flags, out
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in out.splitlines():
        match = re.match(r";; (\w+) SECTION:", line)
        if match:
            current = match.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            current = None if not line.strip() else current
            continue
        if current:
            sections.setdefault(current, []).append(line.split())
    return Dig(set(flags.group(1).split()), header.group(1), sections)


def www_addresses(port: int) -> set[str]:
    result = dig(port, WWW, "A")
    assert result.status == "NOERROR" and "aa" in result.flags
    records = result.rrs("ANSWER", "A")
    assert records and all(int(rr[1]) <= 30 for rr in records)  # low TTL
    return {rr[4] for rr in records}


def post(api_port: int, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.load(response)


def wait_for(condition: object, deadline: float) -> float:
    """Poll ``condition()`` until true; returns the seconds it took, fails at ``deadline``."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline} s")


@pytest.fixture
def story(tmp_path: Path) -> Iterator[dict[str, object]]:
    if shutil.which("dig") is None:
        pytest.fail("dig is needed for the end-to-end test: `make test` installs it")
    procs: dict[str, object] = {"state": tmp_path / "state.sqlite"}
    yield procs
    for proc in procs.values():
        if isinstance(proc, Process):
            proc.stop(signal.SIGKILL)


def test_user_story(story: dict[str, object]) -> None:
    (zone,) = load_zones(ROOT / "zones")
    check = zone.services[0].check
    state = story["state"]
    assert isinstance(state, Path)

    # 1. gslb serve on the bundled example
    gslb, dns_port, api_port = start_gslb(state)
    story["gslb"] = gslb

    # 2. SOA and NS with AA; glue in the additional section
    soa = dig(dns_port, "gslb.example.com", "SOA")
    assert soa.status == "NOERROR" and "aa" in soa.flags and soa.rrs("ANSWER", "SOA")
    ns = dig(dns_port, "gslb.example.com", "NS")
    assert "aa" in ns.flags
    assert {rr[4] for rr in ns.rrs("ANSWER", "NS")} == {
        "ns1.gslb.example.com.", "ns2.gslb.example.com."}
    assert {(rr[0], rr[4]) for rr in ns.rrs("ADDITIONAL", "A")} == {
        ("ns1.gslb.example.com.", "127.0.0.1"), ("ns2.gslb.example.com.", "127.0.0.2")}

    # 3. three endpoints on loopback, registered over HTTP
    port = free_port(EU + US)
    for address in EU + US:
        story[address] = start_endpoint(address, port)
    for address in EU + US:
        pool = "eu-west" if address in EU else "us-east"
        status, body = post(api_port, "/register", {
            "service": WWW, "pool": pool, "address": address, "port": port})
        assert status == 201, body

    # 4. answers come from healthy registered endpoints (eu-west has priority 1)
    assert www_addresses(dns_port) <= set(EU)
    assert wait_for(lambda: www_addresses(dns_port) == set(EU), 5) >= 0  # answers: 2

    # 5. kill eu-west: within interval x fall + 1 s only us-east is answered
    for address in EU:
        story[address].stop(signal.SIGKILL)  # type: ignore[union-attr]
    took = wait_for(lambda: www_addresses(dns_port) == set(US), check.interval * check.fall + 1)
    assert all(www_addresses(dns_port) == set(US) for _ in range(20))
    print(f"failover to us-east took {took:.2f} s")

    # ... and after the rise threshold, eu-west is answered again
    for address in EU:
        story[address] = start_endpoint(address, port)
    took = wait_for(lambda: www_addresses(dns_port) == set(EU), check.interval * check.rise + 1)
    print(f"back to eu-west in {took:.2f} s")

    # 6. stop and restart: the registrations are still there
    gslb.stop()
    assert gslb.popen.returncode == 0, "\n".join(gslb.lines)
    gslb, dns_port, api_port = start_gslb(state)
    story["gslb"] = gslb
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/services/{WWW}", timeout=5) as r:
        service = json.load(r)
    registered = {
        e["address"] for pool in service["pools"] for e in pool["endpoints"]}
    assert registered == set(EU + US)
    assert www_addresses(dns_port) == set(EU)


def readme_examples(heading: str) -> list[tuple[str, list[str]]]:
    """(command, expected output) pairs from the console block under a README heading."""
    text = (ROOT / "README.md").read_text()
    block = text.split(f"### {heading}\n", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    examples: list[tuple[str, list[str]]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ "):
            examples.append((line[2:], []))
        else:
            examples[-1][1].append(line.rstrip())
    return examples


@pytest.mark.parametrize("heading", ["Routing by example", "Policies by example"])
def test_readme_examples(story: dict[str, object], heading: str) -> None:
    """Each command of the README block runs in a shell against a real server (its ports
    put in place of the documented 5353 and 8053) and prints exactly what is shown;
    a command ending in ``&`` is started in the background."""
    state = story["state"]
    assert isinstance(state, Path)
    gslb, dns_port, api_port = start_gslb(state)
    story["gslb"] = gslb
    examples = readme_examples(heading)
    assert len(examples) >= 5
    for n, (command, expected) in enumerate(examples):
        line = command.replace("-p 5353", f"-p {dns_port}").replace(
            "localhost:8053", f"localhost:{api_port}")
        if line.startswith("gslb "):
            line = f"{GSLB} {line[5:]} --api http://127.0.0.1:{api_port}"
        if line.endswith("&"):
            story[f"background {n}"] = Process.start(
                ["bash", "-c", "exec " + line.rstrip("& ")], "listening")
            continue
        out = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, timeout=30, check=True, cwd=ROOT
        ).stdout
        assert out.rstrip().splitlines() == expected, command


def test_failover_demo_script_runs_the_story_in_under_a_minute() -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "failover_demo.py")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("ok: the whole story ran")
    print(f"examples/failover_demo.py took {time.monotonic() - start:.1f} s")


def test_api_changes_reach_the_very_next_dns_answer(tmp_path: Path) -> None:
    """With the answer cached (asked again and again), a registration, a drain, a return
    and a deregistration each show in the first DNS answer after the API replied."""
    import dns.message
    import dns.query

    hosts = ("127.0.0.31", "127.0.0.32")
    port = free_port(hosts)
    with ExitStack() as stack:
        for host in hosts:
            stack.callback(start_endpoint(host, port).stop)
        gslb, dns_port, api_port = start_gslb(tmp_path / "state.sqlite")
        stack.callback(gslb.stop)
        query = dns.message.make_query(WWW, "A")

        def answer() -> set[str]:
            """The first answer, checked to be what the next two (from the cache) say."""
            answers = []
            for _ in range(3):
                reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2)
                answers.append({r.address for rrset in reply.answer for r in rrset})
            assert answers[0] == answers[1] == answers[2]
            return answers[0]

        first, second = ({"service": WWW, "pool": "eu-west", "address": host, "port": port}
                         for host in hosts)
        post(api_port, "/register", first)
        assert answer() == {"127.0.0.31"}
        post(api_port, "/register", {**second, "heartbeat_timeout": 600})
        assert answer() == {"127.0.0.31", "127.0.0.32"}
        post(api_port, "/heartbeat", {**second, "status": "draining"})
        assert answer() == {"127.0.0.31"}
        post(api_port, "/heartbeat", {**second, "status": "alive"})
        assert answer() == {"127.0.0.31", "127.0.0.32"}
        post(api_port, "/deregister", second)
        assert answer() == {"127.0.0.31"}
