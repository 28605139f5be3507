"""The embedded default store: one SQLite file in WAL mode.

Each write is its own transaction, committed with ``synchronous=FULL`` before the
method returns, so every acknowledged change survives a crash of the process (and of
the machine).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from gslb.config import check_data, parse_check
from gslb.errors import ConfigError, StoreError
from gslb.model import AdminState, Endpoint, EndpointRef
from gslb.store.contract import Heartbeat, Registration, StoredState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    service TEXT NOT NULL,
    pool TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,          -- 0: no port
    weight INTEGER NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (service, pool, address, port)
);
CREATE TABLE IF NOT EXISTS serials (
    apex TEXT PRIMARY KEY,
    serial INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL              -- JSON, the shape of a zone file's service
);
CREATE TABLE IF NOT EXISTS admin_states (
    service TEXT NOT NULL,
    pool TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,          -- 0: no port
    state TEXT NOT NULL,
    PRIMARY KEY (service, pool, address, port)
);
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the writer threads, serialised by our lock.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc
        self._lock = threading.Lock()
        self.path = path

    def load(self) -> StoredState:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT service, pool, address, port, weight, extra FROM registrations"
                ).fetchall()
                serials = dict(self._db.execute("SELECT apex, serial FROM serials").fetchall())
                services = self._db.execute("SELECT name, spec FROM services").fetchall()
                admin = self._db.execute(
                    "SELECT service, pool, address, port, state FROM admin_states"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read state file {self.path}: {exc}") from exc
        try:
            registrations = [
                Registration(service, pool, _endpoint(address, port, weight, json.loads(extra)))
                for service, pool, address, port, weight, extra in rows
            ]
            return StoredState(
                tuple(registrations),
                serials,
                {name: json.loads(spec) for name, spec in services},
                {
                    EndpointRef(service, pool, ip_address(address), port or None): AdminState(state)
                    for service, pool, address, port, state in admin
                },
            )
        except (ValueError, TypeError, ConfigError) as exc:
            raise StoreError(f"state file {self.path} holds an invalid row: {exc}") from exc

    def save_registration(self, registration: Registration) -> None:
        e = registration.endpoint
        extra = json.dumps({
            "heartbeat_timeout": e.heartbeat_timeout,
            "cap": e.cap,
            "lease": e.lease,
            "check": None if e.check is None else check_data(e.check),
        })
        self._write(
            ("INSERT OR REPLACE INTO registrations VALUES (?, ?, ?, ?, ?, ?)",
             (registration.service, registration.pool, str(e.address), e.port or 0, e.weight,
              extra)),
        )

    def delete_registration(self, ref: EndpointRef) -> None:
        self._write(
            ("DELETE FROM registrations WHERE service=? AND pool=? AND address=? AND port=?",
             (ref.service, ref.pool, str(ref.address), ref.port or 0)),
        )

    def save_service(self, name: str, spec: Mapping[str, Any]) -> None:
        self._write(("INSERT OR REPLACE INTO services VALUES (?, ?)", (name, json.dumps(spec))))

    def delete_service(self, name: str) -> None:
        self._write(
            ("DELETE FROM services WHERE name=?", (name,)),
            ("DELETE FROM registrations WHERE service=?", (name,)),
            ("DELETE FROM admin_states WHERE service=?", (name,)),
        )

    def save_admin(self, ref: EndpointRef, state: AdminState) -> None:
        key = (ref.service, ref.pool, str(ref.address), ref.port or 0)
        if state is AdminState.ENABLED:
            self._write(("DELETE FROM admin_states WHERE service=? AND pool=? AND address=? "
                         "AND port=?", key))
        else:
            self._write(("INSERT OR REPLACE INTO admin_states VALUES (?, ?, ?, ?, ?)",
                         (*key, state.value)))

    def save_serial(self, apex: str, serial: int) -> int:
        """One instance per file: nobody else raises the serial, so it is kept as given."""
        self._write(("INSERT OR REPLACE INTO serials VALUES (?, ?)", (apex, serial)))
        return serial

    def save_heartbeat(self, ref: EndpointRef, heartbeat: Heartbeat) -> None:
        """Nothing to share with: heartbeats live in the registry's memory only."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Run ``statements`` as one transaction, committed (fsynced) before returning."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements:
                        self._db.execute(sql, params)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write state file {self.path}: {exc}") from exc


def _endpoint(address: str, port: int, weight: int, options: dict[str, Any]) -> Endpoint:
    check = options.get("check")
    return Endpoint(
        address=ip_address(address),
        port=port or None,
        weight=weight,
        registered=True,
        heartbeat_timeout=options.get("heartbeat_timeout"),
        cap=options.get("cap"),
        check=None if check is None else parse_check(check),
        lease=options.get("lease"),
    )
