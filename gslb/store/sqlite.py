"""The embedded default store: one SQLite file in WAL mode.

Each write is its own transaction, committed with ``synchronous=FULL`` before the
method returns, so every acknowledged change survives a crash of the process (and of
the machine).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from ipaddress import ip_address
from pathlib import Path

from gslb.errors import StoreError
from gslb.model import Endpoint, EndpointRef
from gslb.store.contract import Registration, StoredState

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
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read state file {self.path}: {exc}") from exc
        registrations = []
        for service, pool, address, port, weight, extra in rows:
            options = json.loads(extra)
            endpoint = Endpoint(
                address=ip_address(address),
                port=port or None,
                weight=weight,
                registered=True,
                heartbeat_timeout=options.get("heartbeat_timeout"),
                cap=options.get("cap"),
            )
            registrations.append(Registration(service, pool, endpoint))
        return StoredState(tuple(registrations), serials)

    def save_registration(self, registration: Registration) -> None:
        e = registration.endpoint
        extra = json.dumps({"heartbeat_timeout": e.heartbeat_timeout, "cap": e.cap})
        self._write(
            "INSERT OR REPLACE INTO registrations VALUES (?, ?, ?, ?, ?, ?)",
            (registration.service, registration.pool, str(e.address), e.port or 0, e.weight, extra),
        )

    def delete_registration(self, ref: EndpointRef) -> None:
        self._write(
            "DELETE FROM registrations WHERE service=? AND pool=? AND address=? AND port=?",
            (ref.service, ref.pool, str(ref.address), ref.port or 0),
        )

    def save_serial(self, apex: str, serial: int) -> None:
        self._write("INSERT OR REPLACE INTO serials VALUES (?, ?)", (apex, serial))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write state file {self.path}: {exc}") from exc
