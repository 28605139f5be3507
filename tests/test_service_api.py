"""The live service API, admin states, leases, allow networks, tokens and the OpenAPI
document: the real app on port 0 over a real registry and SQLite store, real HTTP."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from test_api import TOKEN, WWW, ZONES, A, Api, B, Serve, answered, open_registry, reg

from gslb.api.app import make_app
from gslb.config import load_zones
from gslb.registry import Registry
from gslb.store.sqlite import SqliteStore

SHOP = "shop.gslb.example.com"
SHOP_SPEC: dict[str, Any] = {
    "ttl": 15,
    "answers": 1,
    "check": {"type": "none"},
    "pools": {
        "main": {"endpoints": ["192.0.2.50", {"address": "192.0.2.51", "weight": 10}],
                 "allow": ["192.0.2.0/24"]},
    },
}


def serial(registry: Registry) -> int:
    return registry.snapshot.zones["gslb.example.com."].soa.data.serial  # type: ignore[union-attr]


def endpoint_path(address: str, service: str = WWW, pool: str = "eu-west") -> str:
    return f"/services/{service}/pools/{pool}/endpoints/{address}"


# --- admin states -------------------------------------------------------------------


def test_admin_states_drain_and_disable_persist_and_bump_the_serial(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    api = serve(open_registry(state, stores))
    assert api.post("/register", reg(A)).status == 201
    assert api.post("/register", reg(B)).status == 201
    assert answered(api.registry) == {ip_address(A), ip_address(B)}
    before = serial(api.registry)

    drained = api.call("PUT", endpoint_path(A), {"admin": "drain"})
    assert drained.status == 200, drained.body
    assert drained.body["health"]["admin"] == "drain"
    assert drained.body["health"]["state"] == "draining"
    assert answered(api.registry) == {ip_address(B)}
    assert serial(api.registry) > before

    assert api.call("PUT", endpoint_path(B), {"admin": "disabled"}).status == 200
    # nothing serving: fail open answers A (draining), never the disabled B
    assert answered(api.registry) == {ip_address(A)}
    history = api.get(endpoint_path(B)).body["health"]["history"]
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [
        ("up", "disabled", "admin state disabled")]

    # after a restart on the same state file the overrides are still there
    again = serve(open_registry(state, stores))
    assert again.get(endpoint_path(A)).body["health"]["admin"] == "drain"
    assert again.get(endpoint_path(B)).body["health"]["state"] == "disabled"
    assert again.call("PUT", endpoint_path(A), {"admin": "enabled"}).status == 200
    assert answered(again.registry) == {ip_address(A)}


def test_admin_state_of_a_zone_file_endpoint_and_address_forms(api: Api) -> None:
    path = endpoint_path("192.0.2.11", "geo.gslb.example.com", "europe")
    assert api.call("PUT", path, {"admin": "disabled"}).status == 200
    assert api.get(path).body["source"] == "zone file"
    assert api.call("PUT", path, {"admin": "enabled"}).status == 200
    assert api.post("/register", reg("2001:db8::5", port=8443)).status == 201
    assert api.call("PUT", endpoint_path("[2001:db8::5]:8443"), {"admin": "drain"}).status == 200
    assert api.get(endpoint_path("2001:db8::5")).body["health"]["admin"] == "drain"


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (endpoint_path(A), {"admin": "off"}, 400, "admin"),
        (endpoint_path(A), {"admin": "drain", "why": "x"}, 400, "why"),
        (endpoint_path("not-an-ip"), {"admin": "drain"}, 400, "endpoint"),
        (endpoint_path("2001:db8::5%25eth0"), {"admin": "drain"}, 400, "endpoint"),  # zone index
        (endpoint_path("192.0.2.10:99999"), {"admin": "drain"}, 400, "endpoint"),
        (endpoint_path("192.0.2.99"), {"admin": "drain"}, 404, None),
        (endpoint_path(A, pool="mars"), {"admin": "drain"}, 404, None),
    ],
)
def test_bad_admin_requests(
    api: Api, path: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    assert api.post("/register", reg(A)).status == 201
    reply = api.call("PUT", path, body)
    assert reply.status == status, reply.body
    assert reply.body.get("field") == field
    assert api.get(endpoint_path(A)).body["health"]["admin"] == "enabled"


def test_two_ports_on_one_address_need_the_port(api: Api) -> None:
    assert api.post("/register", reg(A, port=80)).status == 201
    assert api.post("/register", reg(A, port=81)).status == 201
    reply = api.call("PUT", endpoint_path(A), {"admin": "drain"})
    assert (reply.status, reply.body["field"]) == (400, "port")
    assert api.call("PUT", endpoint_path(f"{A}:81"), {"admin": "drain"}).status == 200


# --- services made through the API ---------------------------------------------------


def test_put_and_delete_a_service_live_and_durably(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    api = serve(open_registry(state, stores))
    before = serial(api.registry)
    created = api.call("PUT", f"/services/{SHOP}", SHOP_SPEC)
    assert created.status == 201, created.body
    assert created.body["source"] == "api"
    assert created.body["ttl"] == 15
    assert answered(api.registry, SHOP + ".") <= {ip_address("192.0.2.50"), ip_address("192.0.2.51")}
    assert answered(api.registry, SHOP + ".")
    assert serial(api.registry) > before
    assert api.post("/register", {"service": SHOP, "pool": "main", "address": "192.0.2.52"}
                    ).status == 201

    replaced = api.call("PUT", f"/services/{SHOP}.", {**SHOP_SPEC, "ttl": 5})
    assert (replaced.status, replaced.body["ttl"]) == (200, 5)

    again = serve(open_registry(state, stores))  # a restart keeps it, registration included
    shown = again.get(f"/services/{SHOP}").body
    assert shown["ttl"] == 5
    assert {e["address"] for e in shown["pools"][0]["endpoints"]} == {
        "192.0.2.50", "192.0.2.51", "192.0.2.52"}

    assert again.call("DELETE", f"/services/{SHOP}").status == 200
    assert again.get(f"/services/{SHOP}").status == 404
    result = again.registry.snapshot.find_zone(SHOP + ".")
    assert result is not None and SHOP + "." not in result.services
    assert again.call("DELETE", f"/services/{SHOP}").status == 404
    third = serve(open_registry(state, stores))
    assert third.get(f"/services/{SHOP}").status == 404
    # created anew, it starts empty: the old registration went with the service
    assert third.call("PUT", f"/services/{SHOP}", SHOP_SPEC).status == 201
    endpoints = third.get(f"/services/{SHOP}").body["pools"][0]["endpoints"]
    assert {e["address"] for e in endpoints} == {"192.0.2.50", "192.0.2.51"}


@pytest.mark.parametrize(
    ("name", "body", "status", "field"),
    [
        (SHOP, {**SHOP_SPEC, "colour": "red"}, 400, "colour"),
        (SHOP, {**SHOP_SPEC, "ttl": -1}, 400, "ttl"),
        (SHOP, {"pools": {"main": {"endpoints": [{"address": "x"}]}}}, 400,
         "pools.main.endpoints[0].address"),
        (SHOP, {"pools": {"main": {"endpoints": [{"address": "192.0.2.1", "weight": 10001}]}}},
         400, "pools.main.endpoints[0].weight"),
        (SHOP, {"check": {"type": "http", "port": 0}}, 400, "check.port"),
        (SHOP, {"pools": {"main": {"allow": ["10.0.0.1/8"]}}}, 400, "pools.main.allow"),
        (SHOP, [1, 2], 400, "body"),
        ("shop.elsewhere.org", SHOP_SPEC, 400, "name"),
        ("bad_name!.gslb.example.com", SHOP_SPEC, 400, "name"),
        (WWW, SHOP_SPEC, 409, None),  # defined in the zone file
        ("mail.gslb.example.com", SHOP_SPEC, 409, None),  # a static A record's name
    ],
)
def test_bad_service_definitions_change_nothing(
    api: Api, name: str, body: Any, status: int, field: str | None
) -> None:
    before = api.registry.generation
    reply = api.call("PUT", f"/services/{name}", body)
    assert reply.status == status, reply.body
    assert reply.body.get("field") == field
    assert api.registry.generation == before


def test_zone_file_services_cannot_be_deleted_through_the_api(api: Api) -> None:
    reply = api.call("DELETE", f"/services/{WWW}")
    assert reply.status == 409
    assert "zone file" in reply.body["error"]


# --- registration: allow networks, checks, leases ------------------------------------


def test_addresses_outside_the_pool_allow_list_are_403(api: Api) -> None:
    reply = api.post("/register", reg("203.0.113.9"))
    assert reply.status == 403
    assert "192.0.2.0/24" in reply.body["error"]
    assert api.post("/register", reg("10.0.0.1", pool="us-east")).status == 403
    # a pool without an allow list takes no registrations at all
    assert api.call("PUT", f"/services/{SHOP}", {"pools": {"closed": {}}}).status == 201
    closed = api.post("/register", {"service": SHOP, "pool": "closed", "address": A})
    assert closed.status == 403 and "no allow list" in closed.body["error"]
    assert answered(api.registry) == set()


def test_register_with_its_own_check(api: Api) -> None:
    body = reg(A, port=8080, check={"type": "tcp", "port": 9000, "interval": 5})
    reply = api.post("/register", body)
    assert reply.status == 201, reply.body
    check = reply.body["check"]
    # fields it left out come from the service's check (interval 1, timeout 0.5 in the file)
    assert (check["type"], check["port"], check["interval"], check["timeout"]) == (
        "tcp", 9000, 5.0, 0.5)
    bad = api.post("/register", reg(B, check={"type": "http", "expect": "abc"}))
    assert (bad.status, bad.body["field"]) == (400, "check.expect")
    assert api.post("/register", reg(B, check="tcp")).body["field"] == "check"


def test_names_outside_served_zones_are_400(api: Api) -> None:
    reply = api.post("/register", {"service": "www.elsewhere.org", "pool": "p", "address": A})
    assert (reply.status, reply.body["field"]) == (400, "service")
    assert "not inside a served zone" in reply.body["error"]


def test_leases_expire_unless_heartbeats_renew_them(tmp_path: Path, serve: Serve,
                                                     stores: list[SqliteStore]) -> None:
    now = [1000.0]
    store = SqliteStore(tmp_path / "state.sqlite")
    stores.append(store)
    registry = Registry(store, clock=lambda: now[0])
    registry.load_zones(load_zones(ZONES))
    api = serve(registry)
    assert api.post("/register", reg(A, lease=30)).status == 201
    assert api.post("/register", reg(B)).status == 201  # no lease: stays
    shown = api.get(endpoint_path(A)).body
    assert (shown["lease"], shown["health"]["lease_until"]) == (30.0, 1030.0)

    now[0] = 1020.0
    assert api.post("/heartbeat", reg(A, status="alive")).status == 200  # renews to 1050
    now[0] = 1040.0
    assert registry.expire_leases() == []
    before = serial(registry)
    now[0] = 1051.0
    (expired,) = registry.expire_leases()
    assert str(expired.address) == A
    assert api.get(endpoint_path(A)).status == 404
    assert answered(registry) == {ip_address(B)}
    assert serial(registry) > before
    # and it is gone from the state file too
    assert [r.endpoint.address for r in store.load().registrations] == [ip_address(B)]


# --- tokens --------------------------------------------------------------------------


def test_read_token_guards_reads_but_not_liveness(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    api = serve(open_registry(tmp_path / "state.sqlite", stores), TOKEN, read_token="reader")
    assert api.get("/services").status == 401
    assert api.get("/services", token="wrong").status == 403
    assert api.get("/services", token="reader").status == 200
    assert api.get("/services", token=TOKEN).status == 200  # the write token reads too
    assert api.get(f"/explain?name={WWW}&client=127.0.0.1").status == 401
    assert api.get("/healthz").status == 200
    assert api.get("/openapi.json").status == 200
    assert api.post("/register", reg(A), token="reader").status == 403  # reading is not writing


def test_admin_token_separates_service_management_from_registration(
    serve: Serve, stores: list[SqliteStore], tmp_path: Path
) -> None:
    api = serve(open_registry(tmp_path / "state.sqlite", stores), TOKEN, admin_token="boss")
    assert api.post("/register", reg(A), token=TOKEN).status == 201
    assert api.call("PUT", f"/services/{SHOP}", SHOP_SPEC, token=TOKEN).status == 403
    assert api.call("PUT", endpoint_path(A), {"admin": "disabled"}, token=TOKEN).status == 403
    assert api.post("/reload", {}, token=TOKEN).status == 403
    assert api.call("PUT", f"/services/{SHOP}", SHOP_SPEC).status == 401
    assert api.call("PUT", f"/services/{SHOP}", SHOP_SPEC, token="boss").status == 201
    assert api.call("PUT", endpoint_path(A), {"admin": "drain"}, token="boss").status == 200
    assert api.post("/heartbeat", reg(A, status="alive"), token="boss").status == 200


# --- OpenAPI ---------------------------------------------------------------------------


def test_openapi_document_lists_every_route_and_only_those(api: Api) -> None:
    reply = api.get("/openapi.json")
    assert reply.status == 200
    document = reply.body
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    app = make_app(Registry())
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == routed
    for path, item in document["paths"].items():
        params = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert params == set(path.replace("}", "{").split("{")[1::2]), path


def test_every_documented_route_answers_json(api: Api) -> None:
    for path, item in api.get("/openapi.json").body["paths"].items():
        if path in ("/", "/metrics"):  # HTML and Prometheus text: tested on their own
            continue
        concrete = (path.replace("{name}", WWW).replace("{pool}", "eu-west")
                    .replace("{endpoint}", "192.0.2.99"))
        for method in item:
            if method == "parameters":
                continue
            reply = api.call(method.upper(), concrete, {} if method != "get" else None)
            assert reply.status not in (404, 405, 500) or "no such path" not in str(reply.body)
            assert reply.status not in (405, 500), (method, path, reply)
            assert isinstance(reply.body, dict | list)


def test_reload_without_a_reloader_is_503(api: Api) -> None:
    assert api.post("/reload", {}).status == 503

