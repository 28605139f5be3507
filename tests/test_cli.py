"""The ``gslb`` command's API commands against a real ``gslb serve``: register, heartbeat,
status, deregister, with their output and exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import GSLB, dig, free_port, start_endpoint, start_gslb

WWW = "www.gslb.example.com"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    proc, dns_port, api_port = start_gslb(tmp_path_factory.mktemp("cli") / "state.sqlite")
    yield dns_port, api_port
    proc.stop(signal.SIGKILL)


def gslb(api_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GSLB), *args, "--api", f"http://127.0.0.1:{api_port}"],
        capture_output=True, text=True, timeout=20,
    )


def test_register_heartbeat_status_deregister(server: tuple[int, int]) -> None:
    dns_port, api_port = server
    port = free_port(("127.0.0.77",))
    endpoint = start_endpoint("127.0.0.77", port)
    try:
        done = gslb(api_port, "register", WWW, "127.0.0.77", "--pool", "eu-west",
                    "--port", str(port), "--weight", "50")
        assert (done.returncode, done.stdout, done.stderr) == (
            0, f"127.0.0.77:{port} in www.gslb.example.com pool eu-west\n", "")
        assert "127.0.0.77" in {rr[4] for rr in dig(dns_port, WWW, "A").rrs("ANSWER", "A")}
        drain_and_deregister(api_port, port)
    finally:
        endpoint.stop(signal.SIGKILL)


def drain_and_deregister(api_port: int, port: int) -> None:
    done = gslb(api_port, "heartbeat", WWW, "127.0.0.77", "--port", str(port),
                "--status", "draining", "--load", "0.4")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"127.0.0.77:{port} in www.gslb.example.com pool eu-west: draining\n"

    done = gslb(api_port, "status", "--json")
    assert done.returncode == 0, done.stderr
    (www,) = [s for s in json.loads(done.stdout) if s["name"] == WWW]
    (endpoint,) = [e for p in www["pools"] for e in p["endpoints"] if e["address"] == "127.0.0.77"]
    assert endpoint["weight"] == 50 and endpoint["health"]["load"] == 0.4

    table = gslb(api_port, "status").stdout.splitlines()
    assert table[0].split() == ["SERVICE", "POOL", "PRIO", "ENDPOINT", "WEIGHT", "STATE",
                                "SINCE", "ANSWERS", "LAST", "CHECK"]
    (row,) = [line.split() for line in table if "127.0.0.77" in line]
    assert row[:6] == [WWW, "eu-west", "1", f"127.0.0.77:{port}", "50", "draining"]
    # drained just now; named in the one answer dig got
    assert re.fullmatch(r"\d+s", row[6]) and int(row[6][:-1]) < 10, row
    assert row[7] == "1"

    done = gslb(api_port, "deregister", WWW, "127.0.0.77", "--pool", "eu-west", "--port", str(port))
    assert (done.returncode, done.stdout) == (
        0, f"127.0.0.77:{port} in www.gslb.example.com pool eu-west\n")
    assert "127.0.0.77" not in gslb(api_port, "status").stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (("register", WWW, "127.0.0.78", "--pool", "nowhere"), 1,
     "gslb: 404: no pool nowhere in service www.gslb.example.com\n"),
    (("register", WWW, "127.0.0.300", "--pool", "eu-west"), 1,
     "gslb: 400: address: '127.0.0.300' is not an IP address\n"),
    (("register", "nope.example.org", "127.0.0.78", "--pool", "eu-west"), 1, None),
    (("deregister", WWW, "127.0.0.79", "--pool", "eu-west"), 1, None),
    (("register", WWW, "127.0.0.78"), 2, None),  # --pool is required
])
def test_refusals_are_one_line_with_a_meaningful_exit_code(
    server: tuple[int, int], args: tuple[str, ...], code: int, message: str | None
) -> None:
    done = gslb(server[1], *args)
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    if message is not None:
        assert done.stderr == message
    elif code == 1:
        assert done.stderr.startswith("gslb: 4") and done.stderr.count("\n") == 1


def test_unreachable_api_exits_3(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(GSLB), "status", "--api", "http://127.0.0.1:1"], capture_output=True, text=True,
        timeout=20,
    )
    assert done.returncode == 3
    assert done.stderr.startswith("gslb: cannot reach the API at http://127.0.0.1:1: ")
    assert done.stderr.count("\n") == 1


def test_status_piped_into_head_ends_quietly(server: tuple[int, int]) -> None:
    done = subprocess.run(
        f"{GSLB} status --api http://127.0.0.1:{server[1]} | head -1", shell=True,
        capture_output=True, text=True, timeout=20,
    )
    assert done.stdout.startswith("SERVICE") and done.stderr == ""


@pytest.mark.parametrize("url", ["not-a-url", "http://127.0.0.1:port", "ftp://127.0.0.1"])
def test_api_url_that_is_not_one_is_a_usage_error(url: str) -> None:
    for args, env in ((["--api", url], {}), ([], {"GSLB_API_URL": url})):
        done = subprocess.run(
            [str(GSLB), "status", *args], capture_output=True, text=True, timeout=20,
            env={**os.environ, **env},
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr == (
            f"gslb: --api (GSLB_API_URL) must be a URL such as http://127.0.0.1:8053, "
            f"not {url!r}\n")
