"""The ``gslb`` command: serve, check, status.

Every flag of ``serve`` can also be given as an environment variable GSLB_<NAME>
(``--dns`` as GSLB_DNS, ``--token`` as GSLB_TOKEN, ...); a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gslb.config import load_zones
from gslb.daemon import Gslb, Settings
from gslb.errors import ConfigError, GslbError

log = logging.getLogger("gslb")


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"GSLB_{name.upper()}", default)


def host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:5353' or '[::1]:5353' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _non_negative(kind: type[int] | type[float]) -> Any:
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gslb", description="DNS global server load balancer")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run DNS (UDP+TCP), the HTTP API and the prober")
    serve.add_argument("--zones", type=Path, default=Path(_env("zones", "zones") or "zones"),
                       help="directory of zone files (default: zones/)")
    serve.add_argument("--dns", type=host_port, default=_env("dns", "127.0.0.1:5353"),
                       help="DNS listen address (default: 127.0.0.1:5353)")
    serve.add_argument("--api", type=host_port, default=_env("api", "127.0.0.1:8053"),
                       help="HTTP API listen address (default: 127.0.0.1:8053)")
    serve.add_argument("--state", default=_env("state", "data/state.sqlite"),
                       help="state store: a SQLite file (default: data/state.sqlite)")
    serve.add_argument("--token", default=_env("token", None),
                       help="bearer token required for API writes (default: none)")
    serve.add_argument("--geoip", default=_env("geoip", "data/gslb-geo.mmdb"),
                       help="MaxMind City or Country database; 'none' for no GeoIP "
                            "(default: the bundled data/gslb-geo.mmdb)")
    serve.add_argument("--rrl-rate", type=_non_negative(float), default=_env("rrl_rate", "0"),
                       help="UDP responses per second to one client network (/24, /56) "
                            "before rate limiting; 0 turns it off (default: 0, off)")
    serve.add_argument("--rrl-slip", type=_non_negative(int), default=_env("rrl_slip", "2"),
                       help="send every Nth rate-limited response truncated (TC=1) so "
                            "resolvers retry over TCP; 0 drops them all (default: 2)")
    serve.add_argument("--log-level", default=_env("log_level", "info"),
                       choices=["debug", "info", "warning", "error"])

    check = sub.add_parser("check", help="validate zone files")
    check.add_argument("--zones", type=Path, default=Path(_env("zones", "zones") or "zones"))

    status = sub.add_parser("status", help="show services, pools, endpoints and their health")
    status.add_argument("--api", default=_env("api_url", "http://127.0.0.1:8053"),
                        help="API URL (default: http://127.0.0.1:8053)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    explain = sub.add_parser("explain", help="the answer a client gets for a name, and why")
    explain.add_argument("name", help="the name asked, e.g. www.gslb.example.com")
    explain.add_argument("--client", required=True, help="the asking resolver or client address")
    explain.add_argument("--ecs", help="an EDNS Client Subnet, e.g. 198.51.100.0/24")
    explain.add_argument("--type", default="A", help="query type (default: A)")
    explain.add_argument("--api", default=_env("api_url", "http://127.0.0.1:8053"),
                         help="API URL (default: http://127.0.0.1:8053)")
    explain.add_argument("--json", action="store_true", help="print the raw JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.zones)
    if args.command == "status":
        return _status(args.api, args.json)
    if args.command == "explain":
        return _explain(args)
    return _serve(args)


def _check(zones: Path) -> int:
    try:
        loaded = load_zones(zones)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    services = sum(len(z.services) for z in loaded)
    print(f"ok: {len(loaded)} zone(s), {services} service(s) in {zones}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.token is not None and not args.token.strip():
        print("gslb: --token (GSLB_TOKEN) is empty; give a token or leave it unset",
              file=sys.stderr)
        return 2
    settings = Settings(
        zones=args.zones, dns=args.dns, api=args.api, state=args.state, token=args.token,
        geoip=None if args.geoip.lower() == "none" else Path(args.geoip),
        rrl_rate=args.rrl_rate, rrl_slip=args.rrl_slip,
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # the stdlib loop works too, only slower
        runner = asyncio.run
    try:
        runner(_run(settings))
    except (GslbError, OSError) as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(settings: Settings) -> None:
    gslb = Gslb(settings)
    try:
        await gslb.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gslb.reload)
        await stop.wait()
        log.info("stopping")
    finally:
        await gslb.stop()


def _get(url: str) -> Any:
    """GET a JSON document; GslbError with the API's own message when it refuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise GslbError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise GslbError(f"cannot read {url}: {exc}") from None


def _explain(args: argparse.Namespace) -> int:
    query = {"name": args.name, "type": args.type, "client": args.client}
    if args.ecs:
        query["ecs"] = args.ecs
    try:
        result = _get(f"{args.api.rstrip('/')}/explain?{urllib.parse.urlencode(query)}")
    except GslbError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    client = result["client"]
    geo = client["geo"]
    where = "no GeoIP" if geo is None else (
        f"{geo['country']}/{geo['continent']} (network /{geo['prefix']})" if geo["found"]
        else f"unknown location (network /{geo['prefix']})")
    ecs = f", ECS {client['ecs']}" if client["ecs"] else ""
    print(f"{result['name']} {result['type']} from {client['address']}{ecs}: {where}")
    for line in result["trace"]:
        print(f"  {line}")
    print(f"{result['rcode']}, scope {result['scope']}" if result["scope"] is not None
          else result["rcode"])
    for record in result["answer"]:
        print(f"  {record['name']} {record['ttl']} {record['type']} {record['data']}")
    return 0


def _status(api: str, raw: bool) -> int:
    try:
        services = _get(f"{api.rstrip('/')}/services")
    except GslbError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    if raw:
        print(json.dumps(services, indent=2))
        return 0
    rows = [("SERVICE", "POOL", "PRIO", "ENDPOINT", "WEIGHT", "STATE", "LAST CHECK")]
    for service in services:
        for pool in service["pools"]:
            if not pool["endpoints"]:
                rows.append((service["name"], pool["name"], str(pool["priority"]), "-", "", "", ""))
            for ep in pool["endpoints"]:
                address = ep["address"] if ep.get("port") is None else f"{ep['address']}:{ep['port']}"
                last = (ep.get("health") or {}).get("last_check") or {}
                rows.append((
                    service["name"], pool["name"], str(pool["priority"]), address,
                    str(ep["weight"]), (ep.get("health") or {}).get("state", "?"),
                    str(last.get("result", "")),
                ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
