"""The HTTP API: register, heartbeat and deregister endpoints; read services and health.

``make_app(registry, token)`` builds the aiohttp application without I/O; the caller
starts it with ``AppRunner``/``TCPSite`` beside the DNS listeners. JSON in and out:

    POST /register     {"service", "pool", "address", "port"?, "weight"?, "heartbeat_timeout"?,
                        "cap"?: 0.0-1.0}
                       201 with the endpoint when new, 200 when it existed
    POST /heartbeat    {"service", "pool"?, "address", "port"?, "status": "alive" | "draining",
                        "load"?: 0.0-1.0}  200 with the endpoint and its health
    POST /deregister   {"service", "pool", "address", "port"?}  200 with the removed endpoint
    GET  /services     every service, its pools, endpoints and their health
    GET  /services/{name}
    GET  /healthz      {"status": "ok" | "degraded", "generation", "zones", "store": {"kind",
                        "ok", "error", "since"}}: degraded while the state store fails
    GET  /explain?name=N&type=A&client=IP[&ecs=NET][&id=N]  the answer and why

Writes need ``Authorization: Bearer <token>`` when a token is set; reads never do.
Every error is ``{"error": "..."}`` (with ``"field"`` on a 400) and its status: 400 bad
request, 401 no token, 403 wrong token, 404 unknown, 405 wrong method, 409 conflict,
413 body too large, 503 the state store failed (nothing was changed), 500 a bug.

Registry calls run in worker threads: a write waits for the store's fsync, and reads
take the registry's lock for check notes, neither of which may stall the event loop
that also serves DNS.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from ipaddress import ip_address, ip_network
from typing import Any, NoReturn

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from gslb.api import views
from gslb.config import check_name, parse_address
from gslb.engine.answer import answer
from gslb.engine.context import ECS_MAX_PREFIX_V4, ECS_MAX_PREFIX_V6, Client
from gslb.errors import ConfigError, Conflict, NotFound, NotShared, RequestError, StoreError
from gslb.model import Endpoint, IPAddress, RType, fqdn
from gslb.registry import Registry
from gslb.store.contract import StoreStatus

log = logging.getLogger("gslb.api")

REGISTRY = web.AppKey("registry", Registry)
STORE_STATUS: web.AppKey[Callable[[], StoreStatus]] = web.AppKey("store_status")
MAX_BODY = 64 * 1024  # bytes; a larger request body is refused with 413
MAX_HEARTBEAT_TIMEOUT = 86400.0

REGISTER_FIELDS = ("service", "pool", "address", "port", "weight", "heartbeat_timeout", "cap")
HEARTBEAT_FIELDS = ("service", "pool", "address", "port", "status", "load")
DEREGISTER_FIELDS = ("service", "pool", "address", "port")
HEARTBEAT_STATUSES = ("alive", "draining")

_SAFE_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS})


def make_app(
    registry: Registry,
    token: str | None = None,
    *,
    store_status: Callable[[], StoreStatus] | None = None,
) -> web.Application:
    """The API application over ``registry``; writes need ``token`` when it is given.
    ``store_status`` says whether the state store is reachable, for ``/healthz``."""
    if token is not None and not token.strip():
        raise ValueError("the API token must not be empty (pass None for no token)")
    app = web.Application(
        middlewares=[errors_middleware, make_auth_middleware(token)],
        client_max_size=MAX_BODY,
    )
    app[REGISTRY] = registry
    if store_status is not None:
        app[STORE_STATUS] = store_status
    app.router.add_post("/register", register)
    app.router.add_post("/heartbeat", heartbeat)
    app.router.add_post("/deregister", deregister)
    app.router.add_get("/services", list_services)
    app.router.add_get("/services/{name}", get_service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/explain", explain)
    return app


# --- handlers -----------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    body = await read_body(request, REGISTER_FIELDS)
    service, pool = body.service(), body.string("pool")
    endpoint = Endpoint(
        address=body.address(),
        port=body.port(),
        weight=_default(body.integer("weight", 0, 10000), 100),
        heartbeat_timeout=body.duration("heartbeat_timeout", MAX_HEARTBEAT_TIMEOUT),
        cap=body.fraction("cap"),
    )
    registry = request.app[REGISTRY]
    saved, created = await asyncio.to_thread(registry.register, service, pool, endpoint)
    return web.json_response(
        views.registration_json(service, pool, saved), status=201 if created else 200
    )


async def heartbeat(request: web.Request) -> web.Response:
    body = await read_body(request, HEARTBEAT_FIELDS)
    service, pool = body.service(), body.optional_string("pool")
    address, port = body.address(), body.port()
    draining = body.choice("status", HEARTBEAT_STATUSES) == "draining"
    load = body.fraction("load")
    registry = request.app[REGISTRY]

    def beat() -> views.JSON:
        ref = registry.heartbeat(service, pool, address, port, draining, load)
        found = views.find_endpoint_json(registry.snapshot, ref, registry.check_note)
        if found is None:  # deregistered between the two lines above
            raise NotFound(f"endpoint {ref} was just removed")
        return found

    return web.json_response(await asyncio.to_thread(beat))


async def deregister(request: web.Request) -> web.Response:
    body = await read_body(request, DEREGISTER_FIELDS)
    service, pool = body.service(), body.string("pool")
    address, port = body.address(), body.port()
    registry = request.app[REGISTRY]
    removed = await asyncio.to_thread(registry.deregister, service, pool, address, port)
    return web.json_response(views.registration_json(service, pool, removed))


async def list_services(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    snapshot = registry.snapshot
    found = await asyncio.to_thread(views.services_json, snapshot, registry.check_note)
    return web.json_response(found)


async def get_service(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    registry = request.app[REGISTRY]
    wanted = fqdn(name)
    snapshot = registry.snapshot
    found = await asyncio.to_thread(views.find_service_json, snapshot, wanted, registry.check_note)
    if found is None:
        raise NotFound(f"no service {views.display_name(wanted)}")
    return web.json_response(found)


async def healthz(request: web.Request) -> web.Response:
    status = request.app.get(STORE_STATUS)
    return web.json_response(views.healthz_json(
        request.app[REGISTRY].snapshot, None if status is None else status()))


async def explain(request: web.Request) -> web.Response:
    """The answer a client gets and the trace of why: the DNS path's own engine call."""
    query = request.query
    name = query.get("name", "").strip()
    if not name:
        raise RequestError("name: required, e.g. www.gslb.example.com", "name")
    qname = fqdn(name)
    qtype_text = query.get("type", "A").upper()
    try:
        qtype: RType | int = RType[qtype_text] if not qtype_text.isdigit() else int(qtype_text)
    except KeyError:
        raise RequestError(f"type: unknown type {qtype_text!r}", "type") from None
    try:
        resolver = ip_address(query.get("client", "").strip())
    except ValueError:
        raise RequestError("client: required, the address of the asking resolver or client",
                           "client") from None
    nonce = query.get("id", "0")
    if not nonce.isdigit() or int(nonce) > 0xFFFF:
        raise RequestError("id: a DNS message ID, 0-65535", "id")
    client = Client(resolver, nonce=int(nonce))
    ecs_text = query.get("ecs")
    if ecs_text:
        try:
            ecs = ip_network(ecs_text.strip(), strict=False)
        except ValueError:
            raise RequestError(f"ecs: {ecs_text!r} is not a subnet like 198.51.100.0/24",
                               "ecs") from None
        limit = ECS_MAX_PREFIX_V4 if ecs.version == 4 else ECS_MAX_PREFIX_V6
        used = ip_network((ecs.network_address, min(ecs.prefixlen, limit)), strict=False)
        client = Client(used.network_address, used.prefixlen, resolver, int(nonce))
    snapshot = request.app[REGISTRY].snapshot
    result = answer(snapshot, qname, qtype, client)
    return web.json_response(views.explain_json(snapshot, qname, qtype, client, result))


# --- request bodies -----------------------------------------------------------------


async def read_body(request: web.Request, allowed: Iterable[str]) -> Body:
    """The request's JSON object; RequestError names what is wrong with it."""
    length = request.content_length
    if length is not None and length > request.client_max_size:
        raise ApiError(413, f"request body larger than {request.client_max_size} bytes")
    raw = await request.read()  # raises HTTPRequestEntityTooLarge for chunked bodies
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise RequestError(f"body must be a JSON object, not {_json_type(data)}", "body")
    return Body(data, allowed)


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

    def service(self) -> str:
        """The service name, absolute and lower-cased; accepted with or without the dot."""
        name = self.string("service").lower()
        name = name if name.endswith(".") else name + "."
        problem = check_name(name) if name != "." else "the root is not a service"
        if problem:
            raise RequestError(f"service: {problem}", "service")
        return name

    def address(self) -> IPAddress:
        try:
            return parse_address(self._get("address", True))
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

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into a JSON error with its status; logs only what is a bug."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, headers=exc.headers)
    except RequestError as exc:
        return error_response(400, str(exc), exc.field or "body")
    except ConfigError as exc:
        return error_response(400, "; ".join(exc.problems) or str(exc), "body")
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


def make_auth_middleware(token: str | None) -> Middleware:
    """Writes need ``Authorization: Bearer <token>`` when ``token`` is set; reads never."""
    expected = None if token is None else token.strip().encode("utf-8")

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        routed = request.match_info.http_exception is None  # 404/405 go on to say so
        if expected is not None and routed and request.method not in _SAFE_METHODS:
            _authorize(request.headers.get(hdrs.AUTHORIZATION), expected)
        return await handler(request)

    return auth_middleware


def _authorize(header: str | None, expected: bytes) -> None:
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(
            401,
            "this request needs the header 'Authorization: Bearer <token>'",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="gslb"'},
        )
    given = credentials.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, expected):
        raise ApiError(
            403,
            "wrong token",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="gslb", error="invalid_token"'},
        )
