"""The cold path's parts, for instruction counts under callgrind (noise-free).

    for part in none parse answer pack respond; do for n in 1000 3000; do
      valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/coldparts.py $part $n 2>&1 | grep Collected; done; done

Each run builds ``n`` queries from distinct ECS /24s for the ``geo`` service and then
does one part for all of them: ``parse`` parses, ``answer`` parses and answers,
``pack`` parses, answers and packs, ``respond`` runs the whole DNS path (with the
cache's store); ``none`` only builds the queries. The difference between the 3000 and
the 1000 runs, divided by 2000, is a part's marginal cost per query; subtract the
previous part's to get one part alone.
"""

from __future__ import annotations

import sys
from ipaddress import ip_address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from respond import SOURCE, distinct_subnets, make_registry, query  # noqa: E402

from gslb.dns import wire  # noqa: E402
from gslb.dns.server import DnsServer  # noqa: E402
from gslb.engine.answer import answer  # noqa: E402
from gslb.engine.context import Client  # noqa: E402


def main() -> None:
    part, count = sys.argv[1], int(sys.argv[2])
    registry = make_registry()
    snapshot = registry.snapshot
    queries = [query("geo.gslb.example.com", subnet) for subnet in distinct_subnets(count)]
    resolver = ip_address("127.0.0.1")
    if part == "respond":
        server = DnsServer(lambda: snapshot)
        for data in queries:
            server.respond(data, SOURCE, False)
        return
    if part == "none":
        return
    parsed = [wire.parse_query(data) for data in queries]
    if part == "parse":
        return
    answers = []
    for q in parsed:
        assert isinstance(q, wire.Query) and q.client is not None and q.rtype is not None
        client = Client(q.client.address, q.client.source_prefix, resolver, q.id)
        answers.append((q, answer(snapshot, q.qname, q.rtype, client, explain=False)))
    if part == "pack":
        for q, result in answers:
            wire.pack_answer(q, result, False)


if __name__ == "__main__":
    main()
