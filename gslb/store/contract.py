"""What the registry needs from a state store, whichever backs it.

A store keeps what the API changed, so that a restart (or another instance sharing the
store) sees it: registrations, services created with ``PUT /services/{name}``, admin
states of endpoints, and zone serials. Zone files are not stored; they are read at start.
Every method returns only once its change is durable, or raises StoreError and changes
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gslb.model import AdminState, Endpoint, EndpointRef


@dataclass(frozen=True, slots=True)
class Registration:
    """An endpoint added through the API, as persisted (its check and lease included)."""

    service: str
    pool: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The last heartbeat of an endpoint, as shared between instances."""

    at: float  # wall-clock time: instances sharing a store need synchronised clocks
    draining: bool = False
    load: float | None = None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Whether the store is reachable, as ``/healthz`` shows it."""

    kind: str  # "sqlite" or "redis"
    ok: bool = True
    error: str | None = None  # the latest failure while not ok
    since: float | None = None  # wall-clock time ok last changed


@dataclass(frozen=True, slots=True)
class StoredState:
    registrations: tuple[Registration, ...] = ()
    serials: dict[str, int] = field(default_factory=dict)
    # service name -> its definition as PUT (the JSON shape of a zone file's service)
    services: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    admin: dict[EndpointRef, AdminState] = field(default_factory=dict)  # only non-default


class Store(Protocol):
    """Durable state. A method returns only once the change is durable (or raises StoreError)."""

    def load(self) -> StoredState: ...

    def save_registration(self, registration: Registration) -> None: ...

    def delete_registration(self, ref: EndpointRef) -> None: ...

    def save_service(self, name: str, spec: Mapping[str, Any]) -> None: ...

    def delete_service(self, name: str) -> None:
        """Remove the service with its registrations and admin states, all at once."""
        ...

    def save_admin(self, ref: EndpointRef, state: AdminState) -> None:
        """Keep ``state`` for the endpoint; ENABLED (the default) forgets it."""
        ...

    def save_serial(self, apex: str, serial: int) -> int:
        """Keep ``serial`` for the zone, or the next one above what the store holds when
        that is ``serial`` or more already (another instance changed the zone); returns
        the serial kept."""
        ...

    def save_heartbeat(self, ref: EndpointRef, heartbeat: Heartbeat) -> None:
        """Share the endpoint's last heartbeat with the other instances. A single-node
        store keeps none: a restart grants a fresh grace period instead."""
        ...

    def close(self) -> None: ...
