"""What the registry needs from a state store, whichever backs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gslb.model import Endpoint, EndpointRef


@dataclass(frozen=True, slots=True)
class Registration:
    """An endpoint added through the API, as persisted."""

    service: str
    pool: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class StoredState:
    registrations: tuple[Registration, ...] = ()
    serials: dict[str, int] = field(default_factory=dict)


class Store(Protocol):
    """Durable state. A method returns only once the change is durable (or raises StoreError)."""

    def load(self) -> StoredState: ...

    def save_registration(self, registration: Registration) -> None: ...

    def delete_registration(self, ref: EndpointRef) -> None: ...

    def save_serial(self, apex: str, serial: int) -> None: ...

    def close(self) -> None: ...
