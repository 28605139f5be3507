"""The HTTP API: register, heartbeat and deregister endpoints; read services and health.

``make_app(registry, token)`` builds the aiohttp application without I/O; the caller
starts it with ``AppRunner``/``TCPSite`` beside the DNS listeners. JSON in and out:

    POST /register     {"service", "pool", "address", "port"?, "weight"?: 0-10000,
                        "heartbeat_timeout"?, "cap"?: 0.0-1.0, "check"?: {...}, "lease"?}
                       201 with the endpoint when new, 200 when it existed; the address
                       must be inside the pool's ``allow`` networks (403 otherwise)
    POST /heartbeat    {"service", "pool"?, "address", "port"?, "status": "alive" | "draining",
                        "load"?: 0.0-1.0}  200 with the endpoint and its health
    POST /deregister   {"service", "pool", "address", "port"?}  200 with the removed endpoint
    GET  /services     every service, its pools, endpoints and their health
    GET  /services/{name}
    PUT  /services/{name}     create or replace a service (a zone file's service shape)
    DELETE /services/{name}   remove a service made through the API
    GET  /services/{name}/pools/{pool}/endpoints/{endpoint}   one endpoint
    PUT  /services/{name}/pools/{pool}/endpoints/{endpoint}   {"admin": "enabled" |
                       "drain" | "disabled"}; {endpoint} is ADDRESS, ADDRESS:PORT or [V6]:PORT
    POST /reload       re-read the zone files: 200 with the zones, or 400 with every
                       problem (and nothing changed)
    GET  /healthz      {"status": "ok" | "degraded", "generation", "zones", "store": {"kind",
                        "ok", "error", "since"}}: degraded while the state store fails
    GET  /explain?name=N&type=A&client=IP[&ecs=NET][&id=N]  the answer and why
    GET  /openapi.json the OpenAPI document of these routes
    GET  /             the dashboard (HTML and a little JavaScript reading /services)
    (every GET route answers HEAD too: the same status and headers, no body)

Tokens (each optional): ``token`` for writes; ``admin_token``, when set, for service
management (PUT/DELETE services, admin states, reload) instead of ``token``;
``read_token``, when set, for reads (any of the three then reads). ``/healthz`` and
``/openapi.json`` are always open. Tokens are compared in constant time.
Every error is ``{"error": "..."}`` (with ``"field"`` on a 400) and its status: 400 bad
request, 401 no token, 403 wrong token or an address outside the pool's networks, 404
unknown, 405 wrong method, 409 conflict, 413 body too large, 503 the state store failed
(nothing was changed), 500 a bug.

Registry calls run in worker threads: a write waits for the store's fsync, and reads
take the registry's lock for check notes, neither of which may stall the event loop
that also serves DNS.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from ipaddress import ip_address, ip_network
from typing import Any, NoReturn

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.typedefs import Handler, Middleware

from gslb.api import openapi, views
from gslb.config import (
    ReloadReport,
    check_name,
    parse_address,
    parse_check,
    parse_endpoint_address,
)
from gslb.engine.answer import answer
from gslb.engine.context import Client, ecs_limit
from gslb.errors import ConfigError, Conflict, Forbidden, NotFound, NotShared, RequestError, StoreError
from gslb.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gslb.metrics import Metrics
from gslb.model import AdminState, Endpoint, EndpointRef, HealthCheck, IPAddress, RType, fqdn
from gslb.registry import Registry
from gslb.store.contract import StoreStatus

log = logging.getLogger("gslb.api")

Reloader = Callable[[], ReloadReport]

REGISTRY = web.AppKey("registry", Registry)
RELOAD: web.AppKey[Reloader] = web.AppKey("reload")
STORE_STATUS: web.AppKey[Callable[[], StoreStatus]] = web.AppKey("store_status")
WORKERS: web.AppKey[Callable[[], list[views.JSON]]] = web.AppKey("workers")
METRICS = web.AppKey("metrics", Metrics)
MAX_BODY = 64 * 1024  # bytes; a larger request body is refused with 413
MAX_HEARTBEAT_TIMEOUT = 86400.0
MAX_LEASE = 7 * 86400.0

REGISTER_FIELDS = (
    "service", "pool", "address", "port", "weight", "heartbeat_timeout", "cap", "check", "lease",
)
HEARTBEAT_FIELDS = ("service", "pool", "address", "port", "status", "load")
DEREGISTER_FIELDS = ("service", "pool", "address", "port")
ADMIN_FIELDS = ("admin",)
HEARTBEAT_STATUSES = ("alive", "draining")
ENDPOINT_PATH = "/services/{name}/pools/{pool}/endpoints/{endpoint}"
READS = (hdrs.METH_GET, hdrs.METH_HEAD)


class Scope(enum.Enum):
    """Who may call a route."""

    OPEN = "open"  # anyone: liveness and the API description
    READ = "read"  # the read token, when one is set
    WRITE = "write"  # the write token, when one is set: registration and heartbeats
    ADMIN = "admin"  # the admin token when one is set, else the write token


@dataclass(frozen=True, slots=True)
class Tokens:
    """The bearer tokens the API accepts; None: that kind of access needs none."""

    write: str | None = None
    read: str | None = None
    admin: str | None = None


def make_app(
    registry: Registry,
    token: str | None = None,
    *,
    read_token: str | None = None,
    admin_token: str | None = None,
    reload: Reloader | None = None,
    store_status: Callable[[], StoreStatus] | None = None,
    metrics: Metrics | None = None,
    workers: Callable[[], list[views.JSON]] | None = None,
    settle: Callable[[], Awaitable[object]] | None = None,
) -> web.Application:
    """The API application over ``registry``. ``reload`` re-reads the zone files (the
    daemon's); without it ``POST /reload`` answers 503. ``store_status`` says whether
    the state store is reachable, for ``/healthz``. ``metrics``: what ``/metrics``
    serves, and where requests are counted (the daemon's, with the DNS and prober
    figures; without it, the API's and the registry's own). ``workers``: the state of
    the DNS worker processes, for ``/healthz`` (``gslb serve --workers N``); ``settle``:
    waits until DNS answers show the registry's latest state (the workers'), so that a
    successful write is answered only once the next DNS answer reflects it."""
    if metrics is None:
        metrics = Metrics(lambda: registry.snapshot, registry.transition_counts)
    tokens = Tokens(token, read_token, admin_token)
    for name, value in (("token", token), ("read token", read_token),
                        ("admin token", admin_token)):
        if value is not None and not value.strip():
            raise ValueError(f"the API {name} must not be empty (pass None for none)")
    routes: list[tuple[str, str, Handler, Scope]] = [
        (hdrs.METH_POST, "/register", register, Scope.WRITE),
        (hdrs.METH_POST, "/heartbeat", heartbeat, Scope.WRITE),
        (hdrs.METH_POST, "/deregister", deregister, Scope.WRITE),
        (hdrs.METH_GET, "/services", list_services, Scope.READ),
        (hdrs.METH_GET, "/services/{name}", get_service, Scope.READ),
        (hdrs.METH_PUT, "/services/{name}", put_service, Scope.ADMIN),
        (hdrs.METH_DELETE, "/services/{name}", delete_service, Scope.ADMIN),
        (hdrs.METH_GET, ENDPOINT_PATH, get_endpoint, Scope.READ),
        (hdrs.METH_PUT, ENDPOINT_PATH, put_endpoint, Scope.ADMIN),
        (hdrs.METH_POST, "/reload", reload_zones, Scope.ADMIN),
        (hdrs.METH_GET, "/healthz", healthz, Scope.OPEN),
        (hdrs.METH_GET, "/explain", explain, Scope.READ),
        (hdrs.METH_GET, "/openapi.json", openapi_json, Scope.OPEN),
        (hdrs.METH_GET, "/", dashboard, Scope.OPEN),
        (hdrs.METH_GET, "/metrics", metrics_text, Scope.READ),
    ]
    scopes = {(method, path): scope for method, path, _, scope in routes}
    authorize = make_authorizer(tokens, scopes)
    expect_continue = make_expect_handler(authorize, metrics)
    middlewares = [make_count_middleware(metrics), errors_middleware,
                   make_auth_middleware(authorize)]
    if settle is not None:
        middlewares.insert(1, make_settle_middleware(settle))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[REGISTRY] = registry
    app[METRICS] = metrics
    if reload is not None:
        app[RELOAD] = reload
    if store_status is not None:
        app[STORE_STATUS] = store_status
    if workers is not None:
        app[WORKERS] = workers
    for method, path, handler, _ in routes:
        if method == hdrs.METH_GET:  # and HEAD, as RFC 9110 9.1 asks of a server with GET
            app.router.add_get(path, handler, allow_head=True, expect_handler=expect_continue)
        else:
            app.router.add_route(method, path, handler, expect_handler=expect_continue)
    return app


# --- handlers -----------------------------------------------------------------------


DASHBOARD = resources.files("gslb.api").joinpath("dashboard.html").read_bytes()


async def dashboard(request: web.Request) -> web.Response:
    """The operators' page: plain HTML and a little JavaScript reading this API."""
    return web.Response(body=DASHBOARD, content_type="text/html", charset="utf-8")


async def register(request: web.Request) -> web.Response:
    body = await read_body(request, REGISTER_FIELDS)
    registry = request.app[REGISTRY]
    service, pool = body.service(registry), body.string("pool")
    served = registry.snapshot.service(service)
    endpoint = Endpoint(
        address=body.address(new=True),
        port=body.port(),
        weight=_default(body.integer("weight", 0, 10000), 100),
        heartbeat_timeout=body.duration("heartbeat_timeout", MAX_HEARTBEAT_TIMEOUT),
        cap=body.fraction("cap"),
        check=body.check(served.service.check if served is not None else HealthCheck()),
        lease=body.duration("lease", MAX_LEASE),
    )
    saved, created = await asyncio.to_thread(
        registry.register, service, pool, endpoint, enforce_allow=True
    )
    return web.json_response(
        views.registration_json(service, pool, saved), status=201 if created else 200
    )


async def heartbeat(request: web.Request) -> web.Response:
    body = await read_body(request, HEARTBEAT_FIELDS)
    registry = request.app[REGISTRY]
    service, pool = body.service(registry), body.optional_string("pool")
    address, port = body.address(), body.port()
    draining = body.choice("status", HEARTBEAT_STATUSES) == "draining"
    load = body.fraction("load")

    def beat() -> views.JSON:
        ref = registry.heartbeat(service, pool, address, port, draining, load)
        return _endpoint_json(registry, ref)  # NotFound if deregistered meanwhile

    return web.json_response(await asyncio.to_thread(beat))


async def deregister(request: web.Request) -> web.Response:
    body = await read_body(request, DEREGISTER_FIELDS)
    registry = request.app[REGISTRY]
    service, pool = body.service(registry), body.string("pool")
    address, port = body.address(), body.port()
    removed = await asyncio.to_thread(registry.deregister, service, pool, address, port)
    return web.json_response(views.registration_json(service, pool, removed))


async def list_services(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    snapshot = registry.snapshot
    answered = await _answered(request)
    found = await asyncio.to_thread(
        views.services_json, snapshot, registry.notes, registry.source_of, answered
    )
    return web.json_response(found)


async def get_service(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    wanted = fqdn(request.match_info["name"])
    answered = await _answered(request)
    return web.json_response(await asyncio.to_thread(_service_json, registry, wanted, answered))


async def _answered(request: web.Request) -> views.Answered | None:
    """DNS answers per endpoint (this process's DNS server or its workers)."""
    dns = await request.app[METRICS].dns_counts()
    return dns.summary().answered if dns is not None else None


def _service_json(
    registry: Registry, name: str, answered: views.Answered | None = None
) -> views.JSON:
    found = views.find_service_json(
        registry.snapshot, name, registry.notes, registry.source_of, answered
    )
    if found is None:
        raise NotFound(f"no service {views.display_name(name)}")
    return found


async def put_service(request: web.Request) -> web.Response:
    """Create or replace a service: the body is a zone file's service, as JSON."""
    name = _path_name(request)
    data = await read_json(request)
    registry = request.app[REGISTRY]

    def put() -> tuple[views.JSON, bool]:
        _, created = registry.put_service(name, data)
        return _service_json(registry, name), created

    found, created = await asyncio.to_thread(put)
    return web.json_response(found, status=201 if created else 200)


async def delete_service(request: web.Request) -> web.Response:
    name = _path_name(request)
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.delete_service, name)
    return web.json_response({"deleted": views.display_name(name)})


async def get_endpoint(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    name, pool, address, port = _endpoint_path(request)

    def find() -> views.JSON:
        ref = registry.find_endpoint(name, pool, address, port)
        return _endpoint_json(registry, ref)

    return web.json_response(await asyncio.to_thread(find))


def _endpoint_json(registry: Registry, ref: EndpointRef) -> views.JSON:
    """The endpoint as the API shows it, from the current snapshot."""
    found = views.find_endpoint_json(registry.snapshot, ref, registry.notes)
    if found is None:
        raise NotFound(f"endpoint {ref} was just removed")
    return found


async def put_endpoint(request: web.Request) -> web.Response:
    """Set an endpoint's admin state: enabled, drain or disabled."""
    registry = request.app[REGISTRY]
    name, pool, address, port = _endpoint_path(request)
    body = await read_body(request, ADMIN_FIELDS)
    state = AdminState(body.choice("admin", tuple(s.value for s in AdminState)))

    def put() -> views.JSON:
        ref, _ = registry.set_admin(name, pool, address, port, state)
        return _endpoint_json(registry, ref)

    return web.json_response(await asyncio.to_thread(put))


async def reload_zones(request: web.Request) -> web.Response:
    """Re-read the zone files; a bad file changes nothing and every problem is listed."""
    reloader = request.app.get(RELOAD)
    if reloader is None:
        raise ApiError(503, "this server cannot reload zone files")
    report = await asyncio.to_thread(reloader)
    if not report.applied:
        return web.json_response(
            {"error": "the zone files have errors; nothing was changed",
             "field": "zones", "problems": list(report.problems)},
            status=400,
        )
    return web.json_response(
        {"reloaded": True, "zones": [views.display_name(z) for z in report.zones]}
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(MAX_BODY))


def _path_name(request: web.Request) -> str:
    """The {name} of a path: a valid absolute name."""
    name = fqdn(request.match_info["name"])
    problem = check_name(name) if name != "." else "the root is not a service"
    if problem:
        raise RequestError(f"name: {problem}", "name")
    return name


def _endpoint_path(request: web.Request) -> tuple[str, str, IPAddress, int | None]:
    """(service, pool, address, port) of an endpoint path; {endpoint} is ADDRESS,
    ADDRESS:PORT or [IPV6]:PORT."""
    text = request.match_info["endpoint"].strip()
    port_text = None
    if text.startswith("["):
        text, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else (rest or None)
    elif text.count(":") == 1:
        text, port_text = text.split(":")
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise RequestError(f"endpoint: {exc}", "endpoint") from None
    port = None
    if port_text is not None:
        port = _decimal(port_text)
        if port is None or not 1 <= port <= 65535:
            raise RequestError(f"endpoint: port {port_text!r} is not 1-65535", "endpoint")
    return _path_name(request), request.match_info["pool"], address, port


def _decimal(text: str) -> int | None:
    """``text`` as a number written in ASCII digits, else None. ``str.isdigit`` is not
    enough: it accepts "²" (which ``int`` refuses) and "８０" (which ``int`` reads as 80)."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = await request.app[METRICS].scrape()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    status = request.app.get(STORE_STATUS)
    workers = request.app.get(WORKERS)
    return web.json_response(views.healthz_json(
        request.app[REGISTRY].snapshot, None if status is None else status(),
        None if workers is None else workers()))


async def explain(request: web.Request) -> web.Response:
    """The answer a client gets and the trace of why: the DNS path's own engine call."""
    query = request.query
    name = query.get("name", "").strip()
    if not name:
        raise RequestError("name: required, e.g. www.gslb.example.com", "name")
    qname = fqdn(name)
    problem = check_name(qname)
    if problem:
        raise RequestError(f"name: {problem}", "name")
    qtype_text = query.get("type", "A").upper()
    number = _decimal(qtype_text)
    if number is not None and number > 0xFFFF:
        raise RequestError(f"type: {qtype_text} is not a record type (0-65535)", "type")
    try:
        qtype: RType | int = RType[qtype_text] if number is None else number
    except KeyError:
        raise RequestError(f"type: unknown type {qtype_text!r}", "type") from None
    try:
        resolver = ip_address(query.get("client", "").strip())
    except ValueError:
        raise RequestError("client: required, the address of the asking resolver or client",
                           "client") from None
    nonce = _decimal(query.get("id", "0"))
    if nonce is None or nonce > 0xFFFF:
        raise RequestError("id: a DNS message ID, 0-65535", "id")
    client = Client(resolver, nonce=nonce)
    ecs_text = query.get("ecs")
    if ecs_text:
        try:
            ecs = ip_network(ecs_text.strip(), strict=False)
        except ValueError:
            raise RequestError(f"ecs: {ecs_text!r} is not a subnet like 198.51.100.0/24",
                               "ecs") from None
        sent = ecs.network_address
        used = ip_network((sent, min(ecs.prefixlen, ecs_limit(sent))), strict=False)
        client = Client(used.network_address, used.prefixlen, resolver, nonce)
    snapshot = request.app[REGISTRY].snapshot
    result = answer(snapshot, qname, qtype, client)
    return web.json_response(views.explain_json(snapshot, qname, qtype, client, result))


# --- request bodies -----------------------------------------------------------------


def make_expect_handler(
    authorize: Callable[[web.Request], None], metrics: Metrics
) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """``Expect: 100-continue``: the client waits for "100 Continue" before it sends its
    body. What would be refused gets no 100, so the client need not send the body: a
    missing or wrong token is answered here (401, 403), and a body declared larger than
    the limit goes on to ``read_json``, which answers 413 before reading. aiohttp sends
    what this returns without the middlewares, so it is counted here."""

    async def expect_continue(request: web.Request) -> web.StreamResponse | None:
        length = request.content_length
        if length is not None and length > request.client_max_size:
            return None
        if request.version != HttpVersion11:
            return None
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            response = error_response(417, f"unknown expectation {expect!r} (only 100-continue)")
        else:
            try:
                authorize(request)
            except ApiError as exc:
                response = error_response(exc.status, exc.message, exc.field, exc.headers)
            else:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # the answer's own size starts after the 100
                return None
        count_request(metrics, request, response.status)
        return response

    return expect_continue


async def read_body(request: web.Request, allowed: Iterable[str]) -> Body:
    """The request's JSON object with only ``allowed`` fields; RequestError names what is
    wrong with it."""
    return Body(await read_json(request), allowed)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; RequestError names what is wrong with it."""
    length = request.content_length
    if length is not None and length > request.client_max_size:
        raise ApiError(413, f"request body larger than {request.client_max_size} bytes")
    try:
        raw = await request.read()  # raises HTTPRequestEntityTooLarge for chunked bodies
    except web.RequestPayloadError as exc:  # a bad Content-Encoding or chunked framing
        request.content.feed_eof()  # aiohttp would read on after the answer, and log it
        reason = getattr(exc.__cause__, "message", None) or "malformed"
        raise ApiError(400, f"body could not be read: {reason}",
                       {hdrs.CONNECTION: "close"}, field="body") from None
    except ConnectionError:  # aiohttp's ConnectionResetError("Connection lost")
        raise ClientGone("the client closed the connection while sending its body") from None
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise RequestError(f"body must be a JSON object, not {_json_type(data)}", "body")
    return data


class Body:
    """A JSON object's fields, read with validation.

    Optional fields may be absent or null. Every problem raises RequestError naming the
    field; unknown fields are refused, so a typo does not pass unnoticed.
    """

    def __init__(self, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
        expected = tuple(allowed)
        for key in data:
            if key not in expected:
                raise RequestError(
                    f"unknown field {key!r} (expected one of: {', '.join(expected)})", key
                )
        self._data = data

    def _get(self, key: str, required: bool) -> Any:
        value = self._data.get(key)
        if value is None and required:
            raise RequestError(f"{key} is required", key)
        return value

    def string(self, key: str) -> str:
        value = self.optional_string(key)
        if value is None:
            raise RequestError(f"{key} is required", key)
        return value

    def optional_string(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            _invalid(key, "must be a non-empty string", value)
        return value.strip()

    def service(self, registry: Registry) -> str:
        """The service name, absolute and lower-cased; accepted with or without the dot.
        A name outside every served zone is a bad request (inside one, a 404 if unknown)."""
        name = self.string("service").lower()
        name = name if name.endswith(".") else name + "."
        problem = check_name(name) if name != "." else "the root is not a service"
        if problem:
            raise RequestError(f"service: {problem}", "service")
        snapshot = registry.snapshot
        if snapshot.find_zone(name) is None:
            served = ", ".join(sorted(views.display_name(z) for z in snapshot.zones)) or "none"
            raise RequestError(
                f"service: {views.display_name(name)} is not inside a served zone "
                f"(served: {served})", "service")
        return name

    def check(self, base: HealthCheck) -> HealthCheck | None:
        """The endpoint's own check; what it leaves out comes from the service's."""
        value = self._get("check", False)
        if value is None:
            return None
        if not isinstance(value, dict):
            _invalid("check", "must be an object", value)
        try:
            return parse_check(value, base)
        except ConfigError as exc:
            raise RequestError("; ".join(exc.problems), _field_of(exc)) from None

    def address(self, *, new: bool = False) -> IPAddress:
        """The endpoint's address; a ``new`` one must be one clients can reach (an
        endpoint registered before that rule can still be named, to remove it)."""
        parse = parse_endpoint_address if new else parse_address
        try:
            return parse(self._get("address", True))
        except ValueError as exc:
            raise RequestError(f"address: {exc}", "address") from None

    def port(self) -> int | None:
        return self.integer("port", 1, 65535)

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            _invalid(key, f"must be an integer from {lo} to {hi}", value)
        return value

    def duration(self, key: str, hi: float) -> float | None:
        """Seconds: more than 0, at most ``hi``."""
        value = self._number(key)
        if value is not None and not 0 < value <= hi:
            _invalid(key, f"must be a number of seconds above 0, at most {hi:g}", value)
        return value

    def fraction(self, key: str) -> float | None:
        value = self._number(key)
        if value is not None and not 0.0 <= value <= 1.0:
            _invalid(key, "must be a number from 0.0 to 1.0", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, True)
        if value not in choices:
            _invalid(key, f"must be one of {', '.join(map(repr, choices))}", value)
        return str(value)

    def _number(self, key: str) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            _invalid(key, "must be a number", value)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            _invalid(key, "must be a finite number", value)
        return number


def _field_of(exc: ConfigError) -> str:
    """The field a parse problem names: ``check.port: must be ...`` -> ``check.port``."""
    first = exc.problems[0] if exc.problems else ""
    field, sep, _ = first.partition(": ")
    return field if sep and " " not in field else "body"


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _invalid(key: str, rule: str, value: Any) -> NoReturn:
    shown = repr(value) if len(repr(value)) <= 60 else f"a {_json_type(value)}"
    raise RequestError(f"{key} {rule}, not {shown}", key)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


# --- errors and authorization -------------------------------------------------------


class ApiError(Exception):
    """An HTTP error status with a message, raised by the API's own code."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.field = field


class ClientGone(Exception):
    """The client closed its connection before its request was read: nobody is left
    to answer, and it is neither the server's fault nor a bad request."""


# The status a request whose client left is counted under (nginx's "client closed
# request"); never sent, as nobody reads it.
CLIENT_CLOSED = 499


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def make_count_middleware(metrics: Metrics) -> Middleware:
    """Counts every request by route (its pattern, so names do not explode the labels),
    method and final status; 499 when the client left before its request was read."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            count_request(metrics, request, status)

    return count


def count_request(metrics: Metrics, request: web.Request, status: int) -> None:
    """One more request of this route (its pattern, so names do not explode the labels)."""
    route = request.match_info.route.resource
    pattern = route.canonical if route is not None else "unmatched"
    metrics.api_requests.labels(pattern, request.method, str(status)).inc()


def make_settle_middleware(settle: Callable[[], Awaitable[object]]) -> Middleware:
    """After a successful write, waits for DNS to reflect it before answering."""

    @web.middleware
    async def settled(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method not in READS and response.status < 400:
            await settle()
        return response

    return settled


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into a JSON error with its status; logs only what is a bug."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.field, exc.headers)
    except ClientGone as exc:
        log.debug("%s %s: %s", request.method, request.path, exc)
        return web.Response(status=CLIENT_CLOSED)
    except RequestError as exc:
        return error_response(400, str(exc), exc.field or "body")
    except ConfigError as exc:
        return error_response(400, "; ".join(exc.problems) or str(exc), _field_of(exc))
    except Forbidden as exc:
        return error_response(403, str(exc))
    except NotFound as exc:
        return error_response(404, str(exc))
    except Conflict as exc:
        return error_response(409, str(exc))
    except NotShared as exc:  # applied here, but the other instances did not see it
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(503, str(exc))
    except StoreError as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(503, f"the state store failed; nothing was changed: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error; the server log has the details")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (routing, body size) as JSON."""
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, f"no such path: {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            f"{exc.method} is not allowed on {request.path} (allowed: {allowed})",
            headers={hdrs.ALLOW: allowed},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, f"request body larger than {request.client_max_size} bytes")
    return error_response(exc.status, exc.reason)


def make_auth_middleware(authorize: Callable[[web.Request], None]) -> Middleware:
    """Checks the bearer token a route's scope needs (see ``make_authorizer``)."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        authorize(request)
        return await handler(request)

    return auth_middleware


def make_authorizer(
    tokens: Tokens, scopes: Mapping[tuple[str, str], Scope]
) -> Callable[[web.Request], None]:
    """What raises ApiError 401 or 403 unless a request carries the token its route's
    scope needs (see the module docstring); routes that do not exist pass, so that
    404/405 go on to say so."""
    encoded = {
        scope: [t.strip().encode("utf-8") for t in accepted if t is not None]
        for scope, accepted in (
            (Scope.READ, (tokens.read, tokens.write, tokens.admin) if tokens.read else ()),
            (Scope.WRITE, (tokens.write, tokens.admin) if tokens.write else ()),
            (Scope.ADMIN, (tokens.admin,) if tokens.admin else
             (tokens.write,) if tokens.write else ()),
        )
    }

    def authorize(request: web.Request) -> None:
        info = request.match_info
        if info.http_exception is None:
            resource = info.route.resource
            method = hdrs.METH_GET if request.method == hdrs.METH_HEAD else request.method
            scope = scopes.get((method, resource.canonical if resource else ""), Scope.ADMIN)
            expected = encoded.get(scope)
            if expected:
                _authorize(request.headers.get(hdrs.AUTHORIZATION), expected)

    return authorize


def _authorize(header: str | None, expected: list[bytes]) -> None:
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(
            401,
            "this request needs the header 'Authorization: Bearer <token>'",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="gslb"'},
        )
    given = credentials.strip().encode("utf-8", "surrogateescape")
    matched = False
    for candidate in expected:  # every candidate compared, in constant time each
        matched |= hmac.compare_digest(given, candidate)
    if not matched:
        raise ApiError(
            403,
            "wrong token",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="gslb", error="invalid_token"'},
        )
