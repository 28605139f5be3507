"""The cold path's parts, in instructions per query under callgrind (noise-free) or CPU time.

    .venv/bin/python benchmarks/coldparts.py [--subnets 3000]                 # CPU µs per query
    .venv/bin/python benchmarks/coldparts.py --instructions [--subnets 3000]  # callgrind

Builds ``--subnets`` queries from distinct ECS /24s for the ``geo`` service (as
dnspython sends them), then runs each part over all of them once, in this order:
``parse`` (``wire.parse_query``), ``geoip`` (the client's lookup in a freshly opened
database), ``answer`` (the trace-less engine, its GeoIP lookups cold), ``pack``
(``wire.pack_answer``) and ``respond`` (the whole DNS path with the cache's store, on a
fresh server and GeoIP database). Only the parts themselves are counted: with
``--instructions`` the script runs itself under ``valgrind --tool=callgrind`` with
instrumentation off and turns it on (``callgrind_control``) around each part, so
imports, set-up and building the queries are not in the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interpreter import describe  # noqa: E402
from respond import SOURCE, distinct_subnets, make_registry, query  # noqa: E402

from gslb.dns import wire  # noqa: E402
from gslb.dns.server import DnsServer  # noqa: E402
from gslb.engine.answer import Answer, answer  # noqa: E402
from gslb.engine.context import Client  # noqa: E402

PARTS = ("parse", "geoip", "answer", "pack", "respond")


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, stdout=subprocess.DEVNULL)


def measure(name: str, run: Callable[[], object], under_callgrind: bool) -> float:
    """Runs ``run`` once; under callgrind dumps its instructions as ``name``; its CPU seconds."""
    if under_callgrind:
        _callgrind("--zero")
        _callgrind("--instr=on")
    start = time.process_time()
    run()
    seconds = time.process_time() - start
    if under_callgrind:
        _callgrind("--instr=off")
        _callgrind(f"--dump={name}")
    return seconds


def parts(count: int, under_callgrind: bool) -> dict[str, float]:
    """CPU µs per query of each part (meaningless under callgrind, which dumps counts)."""
    queries = [query("geo.gslb.example.com", subnet) for subnet in distinct_subnets(count)]
    resolver = ip_address("127.0.0.1")
    snapshot = make_registry().snapshot
    geo_snapshot = make_registry().snapshot
    respond_snapshot = make_registry().snapshot
    server = DnsServer(lambda: respond_snapshot, cache_size=max(65_536, count))
    parsed: list[wire.Query] = []
    answers: list[tuple[wire.Query, Answer]] = []

    def parse() -> None:
        for data in queries:
            q = wire.parse_query(data)
            assert isinstance(q, wire.Query)
            parsed.append(q)

    def geoip() -> None:
        locator = geo_snapshot.locator
        assert locator is not None
        for q in parsed:
            assert q.client is not None
            locator.locate(q.client.address)

    def engine() -> None:
        for q in parsed:
            assert q.client is not None and q.rtype is not None
            client = Client(q.client.address, q.client.source_prefix, resolver, q.id)
            answers.append((q, answer(snapshot, q.qname, q.rtype, client, explain=False)))

    def pack() -> None:
        for q, result in answers:
            wire.pack_answer(q, result, False)

    def respond() -> None:
        for data in queries:
            server.respond(data, SOURCE, False)

    measure("empty", lambda: None, under_callgrind)
    runs = (parse, geoip, engine, pack, respond)
    return {name: measure(name, run, under_callgrind) / count * 1e6
            for name, run in zip(PARTS, runs, strict=True)}


def instructions(count: int) -> dict[str, float]:
    """Runs the parts under callgrind; instructions per query by part."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--inside", "--subnets", str(count)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        totals: dict[str, int] = {}
        for dump in Path(tmp).glob("callgrind.out.*"):
            text = dump.read_text()
            trigger = re.search(r"^desc: Trigger: Client Request: (\S+)|^desc: Trigger: dump (\S+)",
                                text, re.M)
            found = re.search(r"^totals: (\d+)", text, re.M)
            if trigger and found:
                totals[trigger.group(1) or trigger.group(2)] = int(found.group(1))
    empty = totals.pop("empty", 0)
    return {name: (totals[name] - empty) / count for name in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subnets", type=int, default=3000)
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        parts(args.subnets, under_callgrind=True)
        return
    if args.instructions:
        figures = instructions(args.subnets)
        unit = "instructions per query"
    else:
        figures = parts(args.subnets, under_callgrind=False)
        unit = "µs of CPU per query"
    print(f"{describe()}\ncold path parts over {args.subnets:,} distinct ECS /24s, {unit}:")
    for name in PARTS:
        print(f"  {name:8} {figures[name]:>10,.1f}")
    print("  (geoip is inside answer; respond is the whole path, cache store included)")


if __name__ == "__main__":
    main()
