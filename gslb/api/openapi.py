"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand beside the routes in ``app.py``; a test compares the two both ways, so
a route cannot be added or removed without this document following.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

_ERROR = {"$ref": "#/components/responses/Error"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "service name, e.g. www.gslb.example.com"}
_ENDPOINT_PARAMS = [
    _NAME,
    {"name": "pool", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "endpoint", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "ADDRESS, ADDRESS:PORT or [IPV6]:PORT"},
]
_IDENTITY = {
    "service": {"type": "string", "description": "a service inside a served zone"},
    "pool": {"type": "string"},
    "address": {"type": "string", "description": "IPv4 or IPv6 address"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
}


def _json_body(schema: JSON) -> JSON:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: JSON | None = None) -> JSON:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _errors(*codes: str) -> JSON:
    return dict.fromkeys(codes, _ERROR)


def _object(properties: JSON, required: list[str]) -> JSON:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def document(max_body: int) -> JSON:
    """The OpenAPI document; ``max_body`` is the request body limit (413 beyond)."""
    check = {"$ref": "#/components/schemas/Check"}
    writes = ("400", "401", "403", "404", "413", "503")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gslb",
            "version": "0.3.0",
            "description": "Registration, health and services of a DNS global server load "
                           f"balancer. Request bodies are limited to {max_body} bytes.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": _ok("an error", _object(
                {"error": {"type": "string"}, "field": {"type": "string"}}, ["error"]))},
            "schemas": {
                "Check": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["http", "tcp", "none", "heartbeat"]},
                        "path": {"type": "string"}, "port": {"type": "integer"},
                        "interval": {"type": "number"}, "timeout": {"type": "number"},
                        "rise": {"type": "integer"}, "fall": {"type": "integer"},
                        "expect": {"type": "string", "examples": ["200-399"]},
                        "body": {"type": "string"}, "host": {"type": "string"},
                        "tls": {"type": "boolean"}, "tls_verify": {"type": "boolean"},
                    },
                },
                "Service": {"type": "object", "description": "a zone file's service, as JSON"},
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/register": {"post": {
                "summary": "add or refresh an endpoint (201 new, 200 existed)",
                "requestBody": _json_body(_object({
                    **_IDENTITY,
                    "weight": {"type": "integer", "minimum": 0, "maximum": 10000},
                    "heartbeat_timeout": {"type": "number", "exclusiveMinimum": 0},
                    "cap": {"type": "number", "minimum": 0, "maximum": 1},
                    "check": check,
                    "lease": {"type": "number", "exclusiveMinimum": 0},
                }, ["service", "pool", "address"])),
                "responses": {"200": _ok("refreshed"), "201": _ok("created"),
                              **_errors(*writes)},
            }},
            "/heartbeat": {"post": {
                "summary": "an endpoint is alive (or draining); renews its lease",
                "requestBody": _json_body(_object({
                    **_IDENTITY,
                    "status": {"enum": ["alive", "draining"]},
                    "load": {"type": "number", "minimum": 0, "maximum": 1},
                }, ["service", "address", "status"])),
                "responses": {"200": _ok("the endpoint and its health"), **_errors(*writes)},
            }},
            "/deregister": {"post": {
                "summary": "remove a registered endpoint",
                "requestBody": _json_body(_object(_IDENTITY, ["service", "pool", "address"])),
                "responses": {"200": _ok("the removed endpoint"), **_errors(*writes)},
            }},
            "/services": {"get": {
                "summary": "every service with pools, endpoints and health",
                "responses": {"200": _ok("services", {"type": "array"}),
                              **_errors("401", "403")},
            }},
            "/services/{name}": {
                "parameters": [_NAME],
                "get": {"summary": "one service, with each endpoint's health history",
                        "responses": {"200": _ok("the service"), **_errors("401", "403", "404")}},
                "put": {"summary": "create (201) or replace (200) a service live",
                        "requestBody": _json_body({"$ref": "#/components/schemas/Service"}),
                        "responses": {"200": _ok("replaced"), "201": _ok("created"),
                                      **_errors(*writes, "409")}},
                "delete": {"summary": "remove a service made through the API",
                           "responses": {"200": _ok("deleted"),
                                         **_errors("401", "403", "404", "409", "503")}},
            },
            "/services/{name}/pools/{pool}/endpoints/{endpoint}": {
                "parameters": _ENDPOINT_PARAMS,
                "get": {"summary": "one endpoint and its health",
                        "responses": {"200": _ok("the endpoint"), **_errors("401", "403", "404")}},
                "put": {"summary": "set the endpoint's admin state",
                        "requestBody": _json_body(_object(
                            {"admin": {"enum": ["enabled", "drain", "disabled"]}}, ["admin"])),
                        "responses": {"200": _ok("the endpoint"), **_errors(*writes)}},
            },
            "/reload": {"post": {
                "summary": "re-read the zone files; a bad file changes nothing",
                "responses": {"200": _ok("the zones now served"),
                              "400": _ok("every problem found", {"type": "object"}),
                              **_errors("401", "403", "503")},
            }},
            "/healthz": {"get": {"summary": "liveness of the GSLB", "security": [{}],
                                 "responses": {"200": _ok("ok")}}},
            "/explain": {"get": {
                "summary": "the answer a client gets, and the trace of why",
                "parameters": [
                    {"name": n, "in": "query", "required": n in ("name", "client"),
                     "schema": {"type": "string"}}
                    for n in ("name", "type", "client", "ecs", "id")
                ],
                "responses": {"200": _ok("the answer and trace"), **_errors("400", "401", "403")},
            }},
            "/openapi.json": {"get": {"summary": "this document", "security": [{}],
                                      "responses": {"200": _ok("OpenAPI 3.1")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)",
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {}}},
                                               **_errors("401", "403")}}},
            "/": {"get": {"summary": "the operators' dashboard (HTML; reads /services)",
                          "security": [{}],
                          "responses": {"200": {"description": "the page",
                                                "content": {"text/html": {}}}}}},
        },
    }
