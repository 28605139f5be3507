"""The ``gslb`` command: serve, check, status, explain, register, heartbeat, deregister.

Every flag of ``serve`` can also be given as an environment variable GSLB_<NAME>
(``--dns`` as GSLB_DNS, ``--token`` as GSLB_TOKEN, ...); a flag wins over the variable.
The API commands read GSLB_API_URL and GSLB_TOKEN.

Exit codes: 0 done; 1 refused (invalid zone files, or the API answered with an error);
2 wrong usage; 3 the API could not be reached.
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
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gslb import logs
from gslb.apiclient import ApiClient
from gslb.config import load_zones
from gslb.daemon import Gslb, Settings
from gslb.errors import ConfigError, GslbError, Unreachable
from gslb.model import endpoint_label

log = logging.getLogger("gslb")


# The spellings of an on/off environment variable.
SWITCH = {"on": True, "1": True, "yes": True, "true": True,
          "off": False, "0": False, "no": False, "false": False}


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
                       help="state store: a SQLite file, or redis://host:port/db shared by "
                            "several instances (default: data/state.sqlite)")
    serve.add_argument("--token", default=_env("token", None),
                       help="bearer token required for API writes (default: none)")
    serve.add_argument("--read-token", default=_env("read_token", None),
                       help="bearer token required for API reads (default: reads are open)")
    serve.add_argument("--admin-token", default=_env("admin_token", None),
                       help="bearer token for managing services, admin states and reloads "
                            "(default: the --token)")
    serve.add_argument("--geoip", default=_env("geoip", "data/gslb-geo.mmdb"),
                       help="MaxMind City or Country database; 'none' for no GeoIP "
                            "(default: the bundled data/gslb-geo.mmdb)")
    serve.add_argument("--health-quorum", type=int, default=_env("health_quorum", "0"),
                       help="with a shared store: how many instances must see an endpoint "
                            "fail to take it down (default 0: a majority of those reporting)")
    serve.add_argument("--rrl-rate", type=_non_negative(float), default=_env("rrl_rate", "0"),
                       help="UDP responses per second to one client network (/24, /56) "
                            "before rate limiting; 0 turns it off (default: 0, off)")
    serve.add_argument("--rrl-slip", type=_non_negative(int), default=_env("rrl_slip", "2"),
                       help="send every Nth rate-limited response truncated (TC=1) so "
                            "resolvers retry over TCP; 0 drops them all (default: 2)")
    serve.add_argument("--query-log", type=_non_negative(int), default=_env("query_log", "0"),
                       metavar="N",
                       help="log one DNS query in N on logger gslb.query (1: every "
                            "query); 0 turns it off (default: 0, off)")
    serve.add_argument("--workers", type=_non_negative(int), default=_env("workers", "0"),
                       help="answer DNS in N worker processes sharing the port (SO_REUSEPORT), "
                            "fed by this one, which keeps the API, the prober and the store; "
                            "0 answers DNS in this process (default: 0)")
    serve.add_argument("--udp-batch", action=argparse.BooleanOptionalAction,
                       default=None,  # GSLB_UDP_BATCH, read by _serve (a bad one is an error)
                       help="on Linux, read waiting UDP queries and send their replies in "
                            "batches (recvmmsg/sendmmsg); --no-udp-batch answers one "
                            "datagram at a time (default: on)")
    serve.add_argument("--log-level", default=_env("log_level", "info"),
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default=_env("log_format", "text"), choices=logs.FORMATS,
                       help="text (default) or json: one JSON object per line")

    check = sub.add_parser("check", help="validate zone files")
    check.add_argument("--zones", type=Path, default=Path(_env("zones", "zones") or "zones"))

    status = sub.add_parser("status", help="show services, pools, endpoints and their health")
    _api_flags(status)

    explain = sub.add_parser("explain", help="the answer a client gets for a name, and why")
    explain.add_argument("name", help="the name asked, e.g. www.gslb.example.com")
    explain.add_argument("--client", required=True, help="the asking resolver or client address")
    explain.add_argument("--ecs", help="an EDNS Client Subnet, e.g. 198.51.100.0/24")
    explain.add_argument("--type", default="A", help="query type (default: A)")
    _api_flags(explain)

    register = sub.add_parser("register", help="add or refresh an endpoint (POST /register)")
    _endpoint_flags(register, pool_required=True)
    register.add_argument("--weight", type=int, help="weight, 0-10000 (default 100)")
    register.add_argument("--heartbeat-timeout", type=float,
                          help="seconds without a heartbeat before the endpoint is down")
    register.add_argument("--cap", type=float, help="load (0-1) above which it is skipped")
    _api_flags(register)

    heartbeat = sub.add_parser("heartbeat", help="report an endpoint alive or draining")
    _endpoint_flags(heartbeat, pool_required=False)
    heartbeat.add_argument("--status", choices=["alive", "draining"], default="alive")
    heartbeat.add_argument("--load", type=float, help="current load, 0.0-1.0")
    _api_flags(heartbeat)

    deregister = sub.add_parser("deregister", help="remove an endpoint (POST /deregister)")
    _endpoint_flags(deregister, pool_required=True)
    _api_flags(deregister)
    return parser


def _api_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=_env("api_url", "http://127.0.0.1:8053"),
                        help="API URL (default: http://127.0.0.1:8053; GSLB_API_URL)")
    parser.add_argument("--token", default=_env("token", None),
                        help="bearer token for writes (GSLB_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _endpoint_flags(parser: argparse.ArgumentParser, pool_required: bool) -> None:
    parser.add_argument("service", help="the service name, e.g. www.gslb.example.com")
    parser.add_argument("address", help="the endpoint's IPv4 or IPv6 address")
    parser.add_argument("--pool", required=pool_required, help="the pool (region)")
    parser.add_argument("--port", type=int, help="the endpoint's port")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.zones)
    if args.command == "serve":
        return _serve(args)
    command = API_COMMANDS[args.command]
    problem = _url_problem(args.api)
    if problem:
        print(f"gslb: --api (GSLB_API_URL) {problem}", file=sys.stderr)
        return 2
    try:
        result = command(ApiClient(args.api, args.token), args)
    except Unreachable as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 3
    except GslbError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    lines = [json.dumps(result, indent=2)] if args.json else PRINTERS[args.command](result)
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `gslb status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not an API URL such as http://127.0.0.1:8053, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        bad = parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0
    except ValueError:  # a port that is not a number, an unclosed [
        bad = True
    return f"must be a URL such as http://127.0.0.1:8053, not {url!r}" if bad else None


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
    logs.setup(args.log_level, args.log_format)
    for flag, value in (("token", args.token), ("read-token", args.read_token),
                        ("admin-token", args.admin_token)):
        if value is not None and not value.strip():
            variable = "GSLB_" + flag.upper().replace("-", "_")
            print(f"gslb: --{flag} ({variable}) is empty; give a token or leave it unset",
                  file=sys.stderr)
            return 2
    if args.health_quorum < 0:
        print("gslb: --health-quorum (GSLB_HEALTH_QUORUM) must be 0 (a majority) or more",
              file=sys.stderr)
        return 2
    udp_batch = args.udp_batch
    if udp_batch is None:
        text = _env("udp_batch", "on") or "on"
        udp_batch = SWITCH.get(text.strip().lower())
        if udp_batch is None:
            print(f"gslb: GSLB_UDP_BATCH is {text!r}; give on or off", file=sys.stderr)
            return 2
    settings = Settings(
        zones=args.zones, dns=args.dns, api=args.api, state=args.state, token=args.token,
        read_token=args.read_token, admin_token=args.admin_token,
        geoip=None if args.geoip.lower() == "none" else Path(args.geoip),
        health_quorum=args.health_quorum,
        rrl_rate=args.rrl_rate, rrl_slip=args.rrl_slip, query_log=args.query_log,
        workers=args.workers, log_level=args.log_level, log_format=args.log_format,
        udp_batch=udp_batch,
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


def _endpoint_body(args: argparse.Namespace, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"service": args.service, "address": args.address}
    for key, value in {"pool": args.pool, "port": args.port, **extra}.items():
        if value is not None:
            body[key] = value
    return body


def _call_status(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.get("/services")


def _call_explain(api: ApiClient, args: argparse.Namespace) -> Any:
    query = {"name": args.name, "type": args.type, "client": args.client}
    if args.ecs:
        query["ecs"] = args.ecs
    return api.get("/explain", query)


def _call_register(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.post("/register", _endpoint_body(
        args, weight=args.weight, heartbeat_timeout=args.heartbeat_timeout, cap=args.cap))


def _call_heartbeat(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.post("/heartbeat", _endpoint_body(args, status=args.status, load=args.load))


def _call_deregister(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.post("/deregister", _endpoint_body(args))


API_COMMANDS: dict[str, Callable[[ApiClient, argparse.Namespace], Any]] = {
    "status": _call_status,
    "explain": _call_explain,
    "register": _call_register,
    "heartbeat": _call_heartbeat,
    "deregister": _call_deregister,
}


def _explain_lines(result: Any) -> list[str]:
    client = result["client"]
    geo = client["geo"]
    where = "no GeoIP" if geo is None else (
        f"{geo['country']}/{geo['continent']} (network /{geo['prefix']})" if geo["found"]
        else f"unknown location (network /{geo['prefix']})")
    ecs = f", ECS {client['ecs']}" if client["ecs"] else ""
    lines = [f"{result['name']} {result['type']} from {client['address']}{ecs}: {where}"]
    lines += [f"  {line}" for line in result["trace"]]
    lines.append(f"{result['rcode']}, scope {result['scope']}" if result["scope"] is not None
                 else result["rcode"])
    lines += [f"  {r['name']} {r['ttl']} {r['type']} {r['data']}" for r in result["answer"]]
    return lines


def _endpoint_name(endpoint: Any) -> str:
    return endpoint_label(endpoint["address"], endpoint.get("port"))


def _endpoint_lines(result: Any) -> list[str]:
    state = (result.get("health") or {}).get("state")
    where = f"{result['service']} pool {result['pool']}" if result.get("pool") else result["service"]
    return [f"{_endpoint_name(result)} in {where}" + (f": {state}" if state else "")]


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _status_lines(services: Any) -> list[str]:
    now = time.time()
    rows: list[tuple[str, ...]] = [
        ("SERVICE", "POOL", "PRIO", "ENDPOINT", "WEIGHT", "STATE", "SINCE", "ANSWERS",
         "LAST CHECK")]
    for service in services:
        for pool in service["pools"]:
            if not pool["endpoints"]:
                rows.append((service["name"], pool["name"], str(pool["priority"]), "-",
                             "", "", "", "", ""))
            for ep in pool["endpoints"]:
                health = ep.get("health") or {}
                last = health.get("last_check") or {}
                rows.append((
                    service["name"], pool["name"], str(pool["priority"]), _endpoint_name(ep),
                    str(ep["weight"]), str(health.get("state", "?")),
                    _age(health.get("since"), now), str(ep.get("answered", "")),
                    str(last.get("result", "")),
                ))
    return _table(rows)


def _age(since: float | None, now: float) -> str:
    """How long ago, shortly: 42s, 5m, 3h, 2d; "start" when it never changed."""
    if since is None:
        return "start"
    seconds = max(0.0, now - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


PRINTERS: dict[str, Callable[[Any], list[str]]] = {
    "status": _status_lines,
    "explain": _explain_lines,
    "register": _endpoint_lines,
    "heartbeat": _endpoint_lines,
    "deregister": _endpoint_lines,
}


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
