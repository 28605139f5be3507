"""The HTTP API, black-box: the real app on port 0, a real registry and SQLite store,
and a real HTTP client. DNS effects are checked through the answer engine."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from gslb.api.app import MAX_BODY, make_app
from gslb.config import load_zone_text, load_zones
from gslb.engine.answer import answer
from gslb.engine.context import Client
from gslb.errors import StoreError
from gslb.model import AddressData, Endpoint, EndpointRef, IPAddress, RType, Zone
from gslb.registry import Registry
from gslb.store.contract import Registration
from gslb.store.sqlite import SqliteStore

ZONES = Path(__file__).parent.parent / "zones"
WWW = "www.gslb.example.com"
TOKEN = "s3cret-token"
T = TypeVar("T")
_NO_BODY = object()


# --- a real server in a thread, a real client ---------------------------------------


class ServerThread:
    """Runs an aiohttp app with AppRunner/TCPSite on 127.0.0.1:0 in its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self.port = self._run(self._start())

    def stop(self) -> None:
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._run(self._loop.shutdown_asyncgens())
        self._run(self._loop.shutdown_default_executor())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        raise AssertionError(f"no TCP address in {self._runner.addresses}")

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=20)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


@dataclass
class Api:
    url: str
    registry: Registry

    def call(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        authorization: str | None = None,
    ) -> Reply:
        data = raw if body is _NO_BODY else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with _OPENER.open(request, timeout=10) as response:
                return Reply(response.status, json.loads(response.read()), dict(response.headers))
        except urllib.error.HTTPError as exc:
            with exc:
                return Reply(exc.code, json.loads(exc.read()), dict(exc.headers))

    def post(self, path: str, body: Any = _NO_BODY, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)


Serve = Callable[..., Api]


def open_registry(
    path: Path,
    stores: list[SqliteStore],
    store_type: type[SqliteStore] = SqliteStore,
    zones: list[Zone] | None = None,
) -> Registry:
    """A registry on a SQLite store at ``path`` (closed by the ``stores`` fixture), with
    ``zones`` (default: the bundled ones)."""
    store = store_type(path)
    stores.append(store)
    registry = Registry(store)
    registry.load_zones(load_zones(ZONES) if zones is None else zones)
    return registry


def answered(registry: Registry, name: str = WWW + ".") -> set[IPAddress]:
    """The addresses the DNS engine answers an A query with, right now."""
    result = answer(registry.snapshot, name, RType.A, Client(ip_address("127.0.0.1")))
    return {r.data.address for r in result.answer if isinstance(r.data, AddressData)}


def endpoints(api: Api, pool: str = "eu-west") -> dict[str, dict[str, Any]]:
    reply = api.get(f"/services/{WWW}")
    assert reply.status == 200, reply.body
    (found,) = [p for p in reply.body["pools"] if p["name"] == pool]
    return {f"{e['address']}:{e['port']}": e for e in found["endpoints"]}


def reg(address: str, **extra: Any) -> dict[str, Any]:
    return {"service": WWW, "pool": "eu-west", "address": address, **extra}


A = "192.0.2.10"
B = "192.0.2.11"


# --- registration -------------------------------------------------------------------


def test_register_is_created_then_idempotent(api: Api) -> None:
    first = api.post("/register", reg(A, port=8080, weight=50, heartbeat_timeout=10))
    assert first.status == 201, first.body
    assert first.body == {
        "service": WWW,
        "pool": "eu-west",
        "address": A,
        "port": 8080,
        "weight": 50,
        "heartbeat_timeout": 10.0,
        "cap": None,
        "lease": None,
        "check": None,
        "source": "registered",
    }
    again = api.post("/register", reg(A, port=8080, weight=50, heartbeat_timeout=10))
    assert (again.status, again.body) == (200, first.body)
    # any case, with or without the trailing dot: the same service
    dotted = api.post("/register", {**reg(A, port=8080, weight=50, heartbeat_timeout=10),
                                    "service": "WWW.Gslb.Example.COM."})
    assert (dotted.status, dotted.body) == (200, first.body)

    shown = endpoints(api)[f"{A}:8080"]
    assert shown["source"] == "registered"
    assert shown["weight"] == 50
    assert shown["health"]["up"] is True
    assert shown["health"]["state"] == "up"
    assert ip_address(A) in answered(api.registry)


def test_register_refresh_changes_weight_without_duplicating(api: Api) -> None:
    assert api.post("/register", reg(A)).status == 201
    refreshed = api.post("/register", reg(A, weight=7))
    assert refreshed.status == 200
    assert refreshed.body["weight"] == 7
    assert list(endpoints(api)) == [f"{A}:None"]
    assert endpoints(api)[f"{A}:None"]["weight"] == 7


def test_same_address_on_another_port_is_another_endpoint(api: Api) -> None:
    assert api.post("/register", reg(A, port=80)).status == 201
    assert api.post("/register", reg(A, port=81)).status == 201
    assert set(endpoints(api)) == {f"{A}:80", f"{A}:81"}


def test_deregister_removes_from_answers(api: Api) -> None:
    assert api.post("/register", reg(A)).status == 201
    assert api.post("/register", reg(B)).status == 201
    assert answered(api.registry) == {ip_address(A), ip_address(B)}

    removed = api.post("/deregister", reg(A))
    assert removed.status == 200, removed.body
    assert removed.body["address"] == A
    assert removed.body["source"] == "registered"
    assert answered(api.registry) == {ip_address(B)}
    assert list(endpoints(api)) == [f"{B}:None"]

    again = api.post("/deregister", reg(A))
    assert again.status == 404
    assert "error" in again.body


def test_heartbeat_draining_leaves_answers_but_stays_registered(api: Api) -> None:
    assert api.post("/register", reg(A, heartbeat_timeout=30)).status == 201
    assert api.post("/register", reg(B, heartbeat_timeout=30)).status == 201

    beat = api.post("/heartbeat", reg(A, status="draining", load=0.5))
    assert beat.status == 200, beat.body
    assert beat.body["address"] == A
    assert beat.body["pool"] == "eu-west"
    health = beat.body["health"]
    assert health["state"] == "draining"
    assert health["up"] is True
    assert health["heartbeat"] is True
    assert health["load"] == 0.5
    assert answered(api.registry) == {ip_address(B)}
    assert endpoints(api)[f"{A}:None"]["health"]["state"] == "draining"

    # the pool is optional in a heartbeat: the endpoint is found by address
    alive = api.post("/heartbeat", {"service": WWW, "address": A, "status": "alive"})
    assert alive.status == 200, alive.body
    assert alive.body["health"]["state"] == "up"
    assert answered(api.registry) == {ip_address(A), ip_address(B)}


def test_heartbeat_of_unregistered_endpoint_is_404(api: Api) -> None:
    reply = api.post("/heartbeat", reg(A, status="alive"))
    assert reply.status == 404
    assert "register" in reply.body["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/register", {"service": "nope.gslb.example.com", "pool": "eu-west", "address": A}),
        ("/register", reg(A, pool="mars")),
        ("/deregister", reg(A, pool="mars")),
        ("/deregister", {"service": "nope.gslb.example.com", "pool": "eu-west", "address": A}),
        ("/heartbeat", {"service": "nope.gslb.example.com", "address": A, "status": "alive"}),
        ("/heartbeat", reg(A, pool="mars", status="alive")),
    ],
)
def test_unknown_service_or_pool_is_404(api: Api, path: str, body: dict[str, Any]) -> None:
    reply = api.post(path, body)
    assert reply.status == 404, reply.body
    assert set(reply.body) == {"error"}
    assert api.registry.snapshot.service(WWW + ".") is not None


def test_unknown_service_read_is_404(api: Api) -> None:
    reply = api.get("/services/nope.gslb.example.com")
    assert reply.status == 404
    assert reply.body == {"error": "no service nope.gslb.example.com"}


# --- bad input ----------------------------------------------------------------------


BAD_INPUTS: list[tuple[str, str, bytes | dict[str, Any] | list[Any], str]] = [
    # (name, path, body, field named in the 400)
    ("invalid JSON", "/register", b'{"service": ', "body"),
    ("empty body", "/register", b"", "body"),
    ("not UTF-8", "/register", b'{"service": "\xff"}', "body"),
    ("NaN", "/heartbeat", b'{"service": "x", "address": "1.2.3.4", "load": NaN}', "body"),
    ("deep nesting", "/register", b"[" * 30000 + b"]" * 30000, "body"),
    ("array body", "/register", [reg(A)], "body"),
    ("missing service", "/register", {"pool": "eu-west", "address": A}, "service"),
    ("null service", "/register", {**reg(A), "service": None}, "service"),
    ("service not a string", "/register", {**reg(A), "service": 5}, "service"),
    ("bad service name", "/register", {**reg(A), "service": "www..example.com"}, "service"),
    ("service is the root", "/register", {**reg(A), "service": "."}, "service"),
    ("missing pool", "/register", {"service": WWW, "address": A}, "pool"),
    ("empty pool", "/register", {**reg(A), "pool": " "}, "pool"),
    ("missing address", "/register", {"service": WWW, "pool": "eu-west"}, "address"),
    ("bad address", "/register", reg("192.0.2.300"), "address"),
    ("address as a number", "/register", reg(3221225994), "address"),  # type: ignore[arg-type]
    ("port 0", "/register", reg(A, port=0), "port"),
    ("port too high", "/register", reg(A, port=65536), "port"),
    ("port as a string", "/register", reg(A, port="80"), "port"),
    ("port as a float", "/register", reg(A, port=80.5), "port"),
    ("port as a boolean", "/register", reg(A, port=True), "port"),
    ("negative weight", "/register", reg(A, weight=-1), "weight"),
    ("weight too high", "/register", reg(A, weight=10001), "weight"),
    ("zero heartbeat timeout", "/register", reg(A, heartbeat_timeout=0), "heartbeat_timeout"),
    ("huge heartbeat timeout", "/register", reg(A, heartbeat_timeout=86401),
     "heartbeat_timeout"),
    ("infinite heartbeat timeout", "/register", b'{"service": "www.gslb.example.com", '
     b'"pool": "eu-west", "address": "192.0.2.10", "heartbeat_timeout": 1e999}',
     "heartbeat_timeout"),
    ("unknown field", "/register", reg(A, wieght=5), "wieght"),
    ("missing status", "/heartbeat", reg(A), "status"),
    ("bad status", "/heartbeat", reg(A, status="up"), "status"),
    ("load above 1", "/heartbeat", reg(A, status="alive", load=1.5), "load"),
    ("load as a string", "/heartbeat", reg(A, status="alive", load="0.5"), "load"),
    ("huge load", "/heartbeat", reg(A, status="alive", load=10**400), "load"),
    ("unknown heartbeat field", "/heartbeat", reg(A, status="alive", weight=1), "weight"),
    ("missing pool on deregister", "/deregister", {"service": WWW, "address": A}, "pool"),
    ("bad address on deregister", "/deregister", reg("nope"), "address"),
    ("unknown deregister field", "/deregister", reg(A, status="alive"), "status"),
]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_400_naming_the_field(
    api: Api, path: str, body: bytes | dict[str, Any], field: str
) -> None:
    before = api.registry.generation
    reply = api.post(path, raw=body) if isinstance(body, bytes) else api.post(path, body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert reply.body["error"]
    assert api.registry.generation == before  # nothing changed
    assert api.get("/healthz").status == 200  # and the server lives on


def test_body_over_the_limit_is_413(api: Api) -> None:
    padding = "x" * (MAX_BODY + 1024)
    reply = api.post("/register", reg(A, padding=padding))
    assert reply.status == 413
    assert "error" in reply.body
    assert api.registry.snapshot.service(WWW + ".") is not None
    assert api.post("/register", reg(A)).status == 201


def test_chunked_body_over_the_limit_is_413(api: Api) -> None:
    """Without a Content-Length the limit holds while reading."""
    chunks = [json.dumps(reg(A))[:-1].encode(), b', "padding": "', b"x" * (MAX_BODY + 1), b'"}']
    connection = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("POST", "/register", iter(chunks), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert "error" in json.loads(response.read())
    finally:
        connection.close()
    assert endpoints(api) == {}


def test_deregistering_a_zone_file_endpoint_is_400(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    zone = load_zone_text(
        "zone: static.example\n"
        "soa: {primary: ns1, contact: hostmaster@static.example}\n"
        "nameservers: {ns1: [127.0.0.1]}\n"
        "services:\n"
        "  www:\n"
        "    check: {type: none}\n"
        "    pools:\n"
        "      main:\n"
        "        endpoints: [198.51.100.1]\n"
    )
    api = serve(open_registry(tmp_path / "state.sqlite", stores, zones=[zone]))

    body = {"service": "www.static.example", "pool": "main", "address": "198.51.100.1"}
    reply = api.post("/deregister", body)
    assert reply.status == 400
    assert reply.body["field"] == "address"
    assert "zone file" in reply.body["error"]
    shown = api.get("/services/www.static.example").body
    assert shown["pools"][0]["endpoints"][0]["source"] == "zone file"


# --- routes and methods -------------------------------------------------------------


def test_unknown_route_is_404_json(api: Api) -> None:
    reply = api.get("/nope")
    assert reply.status == 404
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "/nope" in reply.body["error"]
    assert api.post("/nope", {}).status == 404


def test_wrong_method_is_405_json(api: Api) -> None:
    reply = api.get("/register")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert "error" in reply.body
    assert api.call("DELETE", "/services").status == 405


def test_healthz(api: Api) -> None:
    reply = api.get("/healthz")
    assert reply.status == 200
    assert reply.body == {
        "status": "ok",
        "generation": api.registry.generation,
        "zones": ["gslb.example.com"],
    }


def test_services_listing_shape(api: Api) -> None:
    assert api.post("/register", reg(A, port=8080)).status == 201
    api.registry.note_check(EndpointRef(WWW + ".", "eu-west", ip_address(A), 8080), True,
                            "HTTP 200", 0.0123)
    reply = api.get("/services")
    assert reply.status == 200
    names = [s["name"] for s in reply.body]
    assert names == sorted(names) and {"geo.gslb.example.com", WWW} <= set(names)
    service = reply.body[names.index(WWW)]
    assert service == api.get(f"/services/{WWW}.").body  # the dot is optional
    assert service["name"] == WWW
    assert service["zone"] == "gslb.example.com"
    assert service["source"].endswith("example.yaml")
    assert service["ttl"] == 20
    assert service["answers"] == 2
    assert service["policy"] == "sticky"
    assert service["all_down"] == "open"
    assert service["check"] == {
        "type": "http", "path": "/health", "port": None, "interval": 1.0, "timeout": 0.5,
        "rise": 2, "fall": 2, "expect": "200-399", "body": None, "host": None, "tls": False,
        "tls_verify": True,
    }
    eu, us = service["pools"]
    assert eu["name"] == "eu-west"
    assert (eu["priority"], eu["weight"]) == (1, 100)
    assert eu["countries"] == ["DE", "FR", "GB", "IE", "NL"]
    assert eu["continents"] == ["AF", "EU"]
    assert eu["location"] == {"lat": 53.35, "lon": -6.26}
    assert eu["allow"] == ["127.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]
    assert (us["name"], us["priority"], us["endpoints"]) == ("us-east", 2, [])
    (endpoint,) = eu["endpoints"]
    assert endpoint == {
        "address": A,
        "port": 8080,
        "weight": 100,
        "heartbeat_timeout": None,
        "cap": None,
        "lease": None,
        "check": None,
        "source": "registered",
        "answered": 0,
        "health": {
            "up": True,
            "state": "up",
            "admin": "enabled",
            "since": None,
            "heartbeat": None,
            "last_heartbeat": None,
            "lease_until": None,
            "load": None,
            "rtt_ms": 12.3,
            "confirmed": False,
            "history": [],
            "last_check": {
                "result": "HTTP 200",
                "ok": True,
                "at": endpoint["health"]["last_check"]["at"],
                "rtt_ms": 12.3,
            },
        },
    }


# --- authorization ------------------------------------------------------------------


def test_token_guards_writes_not_reads(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    api = serve(open_registry(tmp_path / "state.sqlite", stores), token=TOKEN)

    missing = api.post("/register", reg(A))
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in missing.body
    assert api.post("/register", reg(A), authorization=f"Basic {TOKEN}").status == 401
    assert api.post("/register", reg(A), authorization="Bearer").status == 401

    wrong = api.post("/register", reg(A), token="not-it")
    assert wrong.status == 403
    assert "error" in wrong.body
    assert api.post("/register", reg(A), authorization="Bearer s3cret-tokën").status == 403
    assert answered(api.registry) == set()  # nothing was registered

    assert api.post("/register", reg(A), token=TOKEN).status == 201
    assert api.post("/register", reg(A), authorization=f"bearer  {TOKEN}").status == 200
    assert api.post("/heartbeat", reg(A, status="alive"), token=TOKEN).status == 200
    assert api.post("/deregister", reg(A), token="nope").status == 403
    assert api.post("/deregister", reg(A), token=TOKEN).status == 200

    assert api.get("/services").status == 200  # reads need no token
    assert api.get(f"/services/{WWW}").status == 200
    assert api.get("/healthz").status == 200
    assert api.post("/nope", {}).status == 404  # no such route, whatever the token


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        make_app(Registry(), token=" ")


# --- durability and failures --------------------------------------------------------


def test_registrations_survive_a_restart(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    api = serve(open_registry(state, stores))
    assert api.post("/register", reg(A, port=8080, weight=5, heartbeat_timeout=12)).status == 201
    assert api.post("/register", reg(B)).status == 201
    assert api.post("/deregister", reg(B)).status == 200

    restarted = serve(open_registry(state, stores))
    shown = endpoints(restarted)
    assert list(shown) == [f"{A}:8080"]
    assert shown[f"{A}:8080"]["weight"] == 5
    assert shown[f"{A}:8080"]["heartbeat_timeout"] == 12.0
    assert shown[f"{A}:8080"]["source"] == "registered"
    assert answered(restarted.registry) == {ip_address(A)}


class BrokenStore(SqliteStore):
    """A store whose writes of registrations fail, as a full disk would."""

    def save_registration(self, registration: Registration) -> None:
        raise StoreError(f"cannot write state file {self.path}: disk full")


def test_store_failure_is_503_and_nothing_is_acknowledged(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = serve(open_registry(tmp_path / "state.sqlite", stores, BrokenStore))
    reply = api.post("/register", reg(A))
    assert reply.status == 503
    assert "nothing was changed" in reply.body["error"]
    assert endpoints(api) == {}
    assert answered(api.registry) == set()
    assert [r.levelname for r in caplog.records if r.name == "gslb.api"] == ["ERROR"]


class BuggyRegistry(Registry):
    def heartbeat(self, *args: Any, **kwargs: Any) -> EndpointRef:
        raise RuntimeError("a bug")


def test_unexpected_error_is_500_generic_and_logged_once(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "state.sqlite")
    stores.append(store)
    registry = BuggyRegistry(store)
    registry.load_zones(load_zones(ZONES))
    api = serve(registry)

    reply = api.post("/heartbeat", reg(A, status="alive"))
    assert reply.status == 500
    assert reply.body == {"error": "internal error; the server log has the details"}
    logged = [r for r in caplog.records if r.name == "gslb.api"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert api.get("/healthz").status == 200


def test_concurrent_writes_keep_state_consistent(api: Api) -> None:
    addresses = [f"192.0.2.{i}" for i in range(20, 40)]
    errors: list[BaseException] = []

    def worker(address: str) -> None:
        try:
            assert api.post("/register", reg(address)).status == 201
            assert api.post("/heartbeat", reg(address, status="alive")).status == 200
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a,)) for a in addresses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert set(endpoints(api)) == {f"{a}:None" for a in addresses}


def test_api_logger_is_quiet_on_client_errors(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gslb.api")
    api.post("/register", raw=b"nope")
    api.post("/register", reg(A, pool="mars"))
    api.get("/nope")
    assert [r for r in caplog.records if r.name == "gslb.api"] == []


# --- explain and endpoint paths -----------------------------------------------------


GEO = "geo.gslb.example.com"
EXPLAIN = f"/explain?name={GEO}&client=192.0.2.1"
GEO_ENDPOINT = f"/services/{GEO}/pools/europe/endpoints/192.0.2.11"


@pytest.mark.parametrize(("query", "field"), [
    ("&id=%C2%B2", "id"),  # "²": str.isdigit() says yes, int() says no
    ("&id=%EF%BC%91", "id"),  # fullwidth "１"
    ("&id=1" + "0" * 5000, "id"),  # beyond int()'s digit limit
    ("&type=%C2%B2", "type"),
    ("&type=%EF%BC%91", "type"),
])
def test_explain_takes_only_ascii_digits(api: Api, query: str, field: str) -> None:
    reply = api.get(EXPLAIN + query)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert api.get(EXPLAIN + "&id=7&type=1").status == 200


@pytest.mark.parametrize("port", ["%C2%B2", "%EF%BC%98%EF%BC%90"])  # "²", fullwidth "８０"
def test_endpoint_path_port_takes_only_ascii_digits(api: Api, port: str) -> None:
    path = f"{GEO_ENDPOINT}:{port}"
    for reply in (api.get(path), api.call("PUT", path, {"admin": "drain"})):
        assert reply.status == 400, reply.body
        assert reply.body["field"] == "endpoint"
    shown = api.get(GEO_ENDPOINT)
    assert shown.status == 200, shown.body
    assert shown.body["health"]["admin"] == "enabled"


@pytest.mark.parametrize(("query", "field"), [
    (f"name={GEO}&type=65536", "type"),
    (f"name={GEO}&type=70000", "type"),
    ("name=foo..bar", "name"),
    ("name=foo%00bar.gslb.example.com", "name"),
    ("name=" + "a" * 64 + ".gslb.example.com", "name"),
])
def test_explain_checks_type_range_and_name(api: Api, query: str, field: str) -> None:
    reply = api.get("/explain?client=192.0.2.1&" + query)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert reply.body["error"].startswith(f"{field}: ")
    fine = api.get(EXPLAIN + "&type=65535")
    assert fine.status == 200, fine.body


# --- bodies that cannot be read -------------------------------------------------------


def send(api: Api, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
    """One request over http.client, which sends the headers it is given as they are."""
    connection = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=10)
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, json.loads(data) if data else None, dict(response.headers))
    finally:
        connection.close()


def test_body_that_is_not_the_gzip_it_claims_is_400(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    reply = send(api, "POST", "/register", b"{}", headers)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "body"
    assert "gzip" in reply.body["error"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    # a body that is gzip is read as JSON
    good = send(api, "POST", "/register", gzip.compress(json.dumps(reg(A)).encode()), headers)
    assert good.status == 201, good.body


def api_requests(api: Api) -> dict[str, float]:
    """gslb_api_requests_total of POST /register, by status."""
    with _OPENER.open(api.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith('gslb_api_requests_total{method="POST",route="/register"'):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('status="')[1].split('"')[0]] = float(value)
    return found


def test_client_that_leaves_mid_body_is_not_a_server_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1]))) as client:
        client.sendall(b"POST /register HTTP/1.1\r\nHost: gslb\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                       b'{"service": ')
        time.sleep(0.2)  # the handler is waiting for the rest
    deadline = time.monotonic() + 10
    while not api_requests(api) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api_requests(api) == {"499": 1.0}  # counted, as nginx does, but not as a 500
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert api.post("/register", reg(A)).status == 201


# --- an address that several endpoints share ----------------------------------------


SHARED = "127.0.0.10"  # inside both pools' allow lists


def health_of(api: Api, pool: str, key: str) -> dict[str, Any]:
    return dict(endpoints(api, pool)[key]["health"])


def test_heartbeat_without_pool_for_an_address_in_two_pools_is_400(api: Api) -> None:
    for pool in ("eu-west", "us-east"):
        assert api.post("/register", reg(SHARED, pool=pool, heartbeat_timeout=30)).status == 201
    reply = api.post("/heartbeat", {"service": WWW, "address": SHARED, "status": "draining"})
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "pool"
    assert "eu-west, us-east" in reply.body["error"]
    for pool in ("eu-west", "us-east"):
        assert health_of(api, pool, f"{SHARED}:None")["state"] == "up"  # neither beat

    named = api.post("/heartbeat", reg(SHARED, pool="us-east", status="draining"))
    assert named.status == 200, named.body
    assert health_of(api, "us-east", f"{SHARED}:None")["state"] == "draining"
    assert health_of(api, "eu-west", f"{SHARED}:None")["state"] == "up"


def test_heartbeat_or_deregister_without_port_for_an_address_on_two_ports_is_400(
    api: Api,
) -> None:
    for port in (1, 2):
        assert api.post("/register", reg(A, port=port, heartbeat_timeout=30)).status == 201
    for path, body in (("/heartbeat", reg(A, status="draining")), ("/deregister", reg(A))):
        reply = api.post(path, body)
        assert reply.status == 400, (path, reply.body)
        assert reply.body["field"] == "port"
        assert "ports 1, 2" in reply.body["error"]
    assert {k: e["health"]["state"] for k, e in endpoints(api).items()} == {
        f"{A}:1": "up", f"{A}:2": "up"}  # nothing beat, nothing was removed

    assert api.post("/heartbeat", reg(A, port=2, status="draining")).status == 200
    assert api.post("/deregister", reg(A, port=1)).status == 200
    assert {k: e["health"]["state"] for k, e in endpoints(api).items()} == {
        f"{A}:2": "draining"}


def test_without_a_port_the_endpoint_without_one_is_meant(api: Api) -> None:
    assert api.post("/register", reg(A, port=80)).status == 201
    assert api.post("/register", reg(A)).status == 201
    shown = api.get(f"/services/{WWW}/pools/eu-west/endpoints/{A}")
    assert shown.status == 200, shown.body
    assert (shown.body["address"], shown.body["port"]) == (A, None)
    assert api.post("/deregister", reg(A)).status == 200
    assert list(endpoints(api)) == [f"{A}:80"]


# --- registrations whose pool is gone -----------------------------------------------


SHOP = "shop.gslb.example.com"
WAITING = "192.0.2.9"


def shop_spec(*pools: str) -> dict[str, Any]:
    return {"check": {"type": "none"},
            "pools": {p: {"endpoints": [f"192.0.2.{50 + i}"], "allow": ["192.0.2.0/24"]}
                      for i, p in enumerate(pools)}}


def shop_addresses(api: Api, pool: str) -> list[str]:
    reply = api.get(f"/services/{SHOP}")
    assert reply.status == 200, reply.body
    (found,) = [p for p in reply.body["pools"] if p["name"] == pool]
    return [e["address"] for e in found["endpoints"]]


def test_registration_whose_pool_was_removed_can_be_deregistered(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    api = serve(open_registry(state, stores))
    assert api.call("PUT", f"/services/{SHOP}", shop_spec("p", "q")).status == 201
    body = {"service": SHOP, "pool": "p", "address": WAITING}
    assert api.post("/register", body).status == 201
    assert api.call("PUT", f"/services/{SHOP}", shop_spec("q")).status == 200

    removed = api.post("/deregister", body)
    assert removed.status == 200, removed.body
    assert (removed.body["pool"], removed.body["address"]) == ("p", WAITING)
    again = api.post("/deregister", body)
    assert again.status == 404, again.body  # gone: the pool is named as missing again
    assert "no pool p" in again.body["error"]

    assert api.call("PUT", f"/services/{SHOP}", shop_spec("p", "q")).status == 200
    assert shop_addresses(api, "p") == ["192.0.2.50"]  # it did not come back with p
    restarted = serve(open_registry(state, stores))
    assert shop_addresses(restarted, "p") == ["192.0.2.50"]  # nor after a restart


def test_registration_waits_for_its_pool_unless_deregistered(api: Api) -> None:
    """As README's State section says: a registration whose pool is gone waits for it."""
    assert api.call("PUT", f"/services/{SHOP}", shop_spec("p", "q")).status == 201
    assert api.post("/register", {"service": SHOP, "pool": "p", "address": WAITING}).status == 201
    assert api.call("PUT", f"/services/{SHOP}", shop_spec("q")).status == 200
    assert api.call("PUT", f"/services/{SHOP}", shop_spec("p", "q")).status == 200
    assert shop_addresses(api, "p") == ["192.0.2.50", WAITING]


# --- HEAD -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", f"/services/{WWW}", "/services", "/"])
def test_head_answers_like_get_without_a_body(api: Api, path: str) -> None:
    connection = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path)
        got = connection.getresponse()
        body = got.read()
        connection.request("HEAD", path)
        head = connection.getresponse()
        assert head.status == got.status == 200
        assert head.read() == b""
        assert head.getheader("Content-Type") == got.getheader("Content-Type")
        assert head.getheader("Content-Length") == got.getheader("Content-Length") == str(
            len(body))
    finally:
        connection.close()
    missing = send(api, "HEAD", "/services/nope.gslb.example.com", b"", {})
    assert (missing.status, missing.body) == (404, None)


# --- Expect: 100-continue -------------------------------------------------------------


def expect_continue(
    api: Api, length: int, headers: bytes = b"", expect: bytes = b"100-continue"
) -> tuple[socket.socket, bytes]:
    """Sends a POST /register's headers (and ``headers``, each ending in CRLF) with
    Expect: 100-continue; returns the socket and what the server answered before any
    body was sent."""
    client = socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1])), 10)
    client.sendall(b"POST /register HTTP/1.1\r\nHost: gslb\r\nExpect: %s\r\n"
                   b"Content-Type: application/json\r\n%s"
                   b"Content-Length: %d\r\n\r\n" % (expect, headers, length))
    return client, client.recv(65536)


def whole_answer(client: socket.socket, first: bytes) -> bytes:
    """``first`` and the rest of a JSON answer, should it come in pieces."""
    while not first.endswith(b"}") and (more := client.recv(65536)):
        first += more
    return first


def test_expect_continue_over_the_limit_gets_413_without_100(api: Api) -> None:
    client, first = expect_continue(api, 99999999)
    with client:
        first = whole_answer(client, first)
        assert first.startswith(b"HTTP/1.1 413 "), first
        assert b"100 Continue" not in first
        assert b'"error"' in first


def test_expect_continue_within_the_limit_gets_100_then_the_answer(api: Api) -> None:
    body = json.dumps(reg(A)).encode()
    client, first = expect_continue(api, len(body))
    with client:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(body)
        assert client.recv(65536).startswith(b"HTTP/1.1 201 ")
    assert list(endpoints(api)) == [f"{A}:None"]


def test_expect_continue_without_the_token_is_refused_before_the_body(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    api = serve(open_registry(tmp_path / "state.sqlite", stores), token=TOKEN)
    body = json.dumps(reg(A)).encode()
    for headers, status in ((b"", b"401"), (b"Authorization: Bearer not-it\r\n", b"403")):
        client, first = expect_continue(api, len(body), headers)
        with client:
            first = whole_answer(client, first)
            assert first.startswith(b"HTTP/1.1 %s " % status), first
            assert b"100 Continue" not in first
            assert b"WWW-Authenticate: Bearer" in first
    client, first = expect_continue(api, len(body), b"Authorization: Bearer %s\r\n" % TOKEN.encode())
    with client:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(body)
        assert client.recv(65536).startswith(b"HTTP/1.1 201 ")
    assert api_requests(api) == {"401": 1.0, "403": 1.0, "201": 1.0}


def test_unknown_expectation_is_417_and_counted(api: Api) -> None:
    client, first = expect_continue(api, 10, expect=b"teapot")
    with client:
        first = whole_answer(client, first)
        assert first.startswith(b"HTTP/1.1 417 "), first
        assert b"teapot" in first
    assert api_requests(api) == {"417": 1.0}
    assert list(endpoints(api)) == []


# --- service definitions the parser refuses -------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pools": {"eu": {"endpoints": [None]}}}, "pools.eu.endpoints[0]"),
        ({"pools": {"eu": {"endpoints": [1]}}}, "pools.eu.endpoints[0]"),
        ({"pools": {"eu": {"endpoints": [["192.0.2.1"]]}}}, "pools.eu.endpoints[0]"),
        ({"pools": {"eu": {"endpoints": ["2001:db8::1%eth0"]}}}, "pools.eu.endpoints[0].address"),
        *[({"pools": {"eu": {"endpoints": ["192.0.2.1", {"address": address}]}}},
           "pools.eu.endpoints[1].address")
          for address in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "fe80::1")],
        ({}, "pools"),
        ({"ttl": 5, "pools": {}}, "pools"),
        ({"pools": {"eu": None}}, "pools.eu"),
        ({"pools": {"eu": {}, "us": None}}, "pools.us"),
        ({"check": {"interval": 10**400}}, "check.interval"),
        ({"check": {"timeout": 10**400}}, "check.timeout"),
        ({"pools": {"eu": {"location": {"lat": 10**400, "lon": 0}}}}, "pools.eu.location.lat"),
        ({"pools": {"eu": {"endpoints": [{"address": "192.0.2.1", "cap": 10**400}]}}},
         "pools.eu.endpoints[0].cap"),
    ],
)
def test_bad_service_definitions_are_400_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    before = api.registry.generation
    reply = api.call("PUT", "/services/x.gslb.example.com", body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert field in reply.body["error"]
    assert api.registry.generation == before


def test_register_refuses_an_address_with_a_zone_index(api: Api) -> None:
    assert api.post("/register", reg("2001:db8::10")).status == 201
    for scoped in ("2001:db8::10%eth0", "2001:db8::10%1"):
        reply = api.post("/register", reg(scoped))
        assert reply.status == 400, reply.body
        assert reply.body["field"] == "address"
        assert "zone index" in reply.body["error"]
    result = answer(api.registry.snapshot, WWW + ".", RType.AAAA, Client(ip_address("127.0.0.1")))
    assert [str(r.data.address) for r in result.answer if isinstance(r.data, AddressData)] == [
        "2001:db8::10"]


@pytest.fixture
def open_api(serve: Serve, stores: list[SqliteStore], tmp_path: Path) -> Api:
    """A service whose pool takes registrations from anywhere."""
    zone = load_zone_text(
        "zone: open.example\n"
        "nameservers: {ns1: [127.0.0.1]}\n"
        "services:\n"
        "  www:\n"
        "    check: {type: none}\n"
        "    pools:\n"
        "      main: {allow: [0.0.0.0/0, \"::/0\"]}\n"
    )
    return serve(open_registry(tmp_path / "state.sqlite", stores, zones=[zone]))


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "239.1.1.1", "ff05::2", "255.255.255.255", "169.254.1.1",
                "fe80::10"],
)
def test_register_refuses_addresses_no_client_can_reach(open_api: Api, address: str) -> None:
    body = {"service": "www.open.example", "pool": "main", "address": address}
    reply = open_api.post("/register", body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "address"
    assert "never a reachable endpoint" in reply.body["error"]
    assert open_api.get("/services/www.open.example").body["pools"][0]["endpoints"] == []


def test_register_accepts_loopback_and_documentation_addresses(open_api: Api) -> None:
    for address in ("127.0.0.9", "192.0.2.99", "2001:db8::99", "::1", "10.1.2.3"):
        body = {"service": "www.open.example", "pool": "main", "address": address}
        assert open_api.post("/register", body).status == 201


def test_an_endpoint_registered_before_the_address_rule_can_be_removed(open_api: Api) -> None:
    """A registration a store kept from before unreachable addresses were refused (made
    here through the registry) is still named by heartbeats and removed by deregister."""
    open_api.registry.register("www.open.example", "main", Endpoint(ip_address("0.0.0.0")))
    body = {"service": "www.open.example", "pool": "main", "address": "0.0.0.0"}
    assert open_api.post("/heartbeat", {**body, "status": "alive"}).status == 200
    assert open_api.post("/deregister", body).status == 200
    assert open_api.get("/services/www.open.example").body["pools"][0]["endpoints"] == []
