"""Builds the GeoIP database the GSLB ships (``data/gslb-geo.mmdb``) from ``data/geo.csv``.

The CSV is the readable source; the MaxMind DB is generated from it, byte for byte
reproducibly, by ``python -m gslb.geodb [CSV] [MMDB]``. Rows look like::

    network,country,continent,latitude,longitude,comment
    198.51.100.0/24,DE,EU,50.1109,8.6821,Frankfurt

Lines starting with ``#`` are comments; ``# build_epoch: 1795219200`` sets the
database's build time (the largest such line wins, 0 when there is none), so that
building twice gives the same bytes. Latitude and longitude may both be left empty.

The database is an IPv6 tree with IPv4 at ``::/96`` and records in the GeoIP2 City
shape (``country.iso_code``, ``continent.code``, ``location.latitude/longitude``), so
``gslb.geoip`` and any MaxMind reader can use it. Needs the ``mmdb-writer`` package,
which only building (not serving) requires.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gslb.errors import ConfigError
from gslb.geoip import BUNDLED_DATABASE

DATABASE_TYPE = "GSLB-City"
DEFAULT_CSV = BUNDLED_DATABASE.parent / "geo.csv"
HEADER = ("network", "country", "continent", "latitude", "longitude", "comment")
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_BUILD_EPOCH = re.compile(r"^#\s*build_epoch\s*:\s*(\S*)\s*$")
# IPv6 space that readers map onto the IPv4 tree: IPv6 rows must stay out of it.
_IPV4_IN_IPV6 = (IPv6Network("::/96"), IPv6Network("::ffff:0:0/96"))


@dataclass(frozen=True, slots=True)
class GeoRow:
    """One network of the CSV, validated."""

    network: IPv4Network | IPv6Network
    country: str
    continent: str
    latitude: float | None
    longitude: float | None
    comment: str
    line: int

    def record(self) -> dict[str, Any]:
        """The MaxMind DB record, in the GeoIP2 City shape."""
        record: dict[str, Any] = {
            "continent": {"code": self.continent},
            "country": {"iso_code": self.country},
        }
        if self.latitude is not None and self.longitude is not None:
            record["location"] = {"latitude": self.latitude, "longitude": self.longitude}
        return record


@dataclass(frozen=True, slots=True)
class GeoTable:
    """The parsed CSV: rows sorted by network, and the build epoch."""

    rows: tuple[GeoRow, ...]
    build_epoch: int


def read_csv(csv_path: Path) -> GeoTable:
    """Parses and validates ``csv_path``; raises ConfigError listing every ``file:line:`` problem."""
    try:
        text = csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{csv_path}: cannot read: {err}"]) from err
    problems: list[str] = []
    rows: list[GeoRow] = []
    epoch = 0
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{csv_path}:{number}"
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = _BUILD_EPOCH.match(stripped)
            if match:
                value = match.group(1)
                if value.isdigit():
                    epoch = max(epoch, int(value))
                else:
                    problems.append(f"{where}: build_epoch must be a whole number of seconds: {value!r}")
            continue
        fields = [item.strip() for item in next(csv.reader([line]))]
        if not header_seen:
            header_seen = True
            if tuple(fields) != HEADER:
                problems.append(f"{where}: the first row must be the header {','.join(HEADER)}")
                break
            continue
        row = _parse_row(fields, number, where, problems)
        if row is not None:
            rows.append(row)
    if not header_seen:
        problems.append(f"{csv_path}: no header row {','.join(HEADER)}")
    rows.sort(key=lambda row: (row.network.version, row.network.network_address, row.network.prefixlen))
    problems.extend(_overlaps(rows, csv_path))
    if problems:
        raise ConfigError(problems)
    return GeoTable(rows=tuple(rows), build_epoch=epoch)


def _parse_row(fields: list[str], number: int, where: str, problems: list[str]) -> GeoRow | None:
    if len(fields) not in (len(HEADER) - 1, len(HEADER)):
        problems.append(
            f"{where}: expected {len(HEADER)} fields ({','.join(HEADER)}), got {len(fields)}"
            " (quote a comment that holds commas)"
        )
        return None
    text_network, country, continent, text_latitude, text_longitude = fields[:5]
    comment = fields[5] if len(fields) == len(HEADER) else ""
    before = len(problems)
    network: IPv4Network | IPv6Network | None = None
    try:
        network = ip_network(text_network, strict=True)
    except ValueError as err:
        problems.append(f"{where}: network: {err}")
    if isinstance(network, IPv6Network) and any(network.overlaps(space) for space in _IPV4_IN_IPV6):
        problems.append(
            f"{where}: network: {network} overlaps the IPv4 space at ::/96 or ::ffff:0:0/96;"
            " write IPv4 networks in IPv4 form"
        )
    if not _COUNTRY.match(country):
        problems.append(f"{where}: country: must be a two-letter ISO 3166 code in capitals (DE): {country!r}")
    if continent not in CONTINENTS:
        problems.append(f"{where}: continent: must be one of {' '.join(sorted(CONTINENTS))}: {continent!r}")
    latitude = _coordinate(text_latitude, "latitude", 90.0, where, problems)
    longitude = _coordinate(text_longitude, "longitude", 180.0, where, problems)
    if (text_latitude == "") != (text_longitude == ""):
        problems.append(f"{where}: latitude and longitude must be given together or both left empty")
    if len(problems) > before or network is None:
        return None
    return GeoRow(network, country, continent, latitude, longitude, comment, number)


def _coordinate(text: str, name: str, limit: float, where: str, problems: list[str]) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{where}: {name}: not a number: {text!r}")
        return None
    if not math.isfinite(value) or not -limit <= value <= limit:
        problems.append(f"{where}: {name}: must be between -{limit:g} and {limit:g}: {text}")
        return None
    return value


def _overlaps(rows: list[GeoRow], csv_path: Path) -> list[str]:
    """Rows are sorted by address: a row overlaps when it starts inside an earlier one."""
    problems: list[str] = []
    widest: GeoRow | None = None  # the earlier row of this family that reaches furthest
    for row in rows:
        if (
            widest is not None
            and widest.network.version == row.network.version
            and int(row.network.network_address) <= int(widest.network.broadcast_address)
        ):
            problems.append(
                f"{csv_path}:{row.line}: network: {row.network} overlaps {widest.network}"
                f" (line {widest.line})"
            )
        if (
            widest is None
            or widest.network.version != row.network.version
            or int(row.network.broadcast_address) > int(widest.network.broadcast_address)
        ):
            widest = row
    return problems


class _Writer(MMDBWriter):
    """mmdb-writer stamps the current time into the metadata; this one stamps a given epoch."""

    def __init__(self, build_epoch: int) -> None:
        super().__init__(
            ip_version=6,
            database_type=DATABASE_TYPE,
            languages=["en"],
            description={"en": "GSLB test geography, built from geo.csv"},
            ipv4_compatible=True,
            float_type="f64",
        )
        self._fixed_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": self._fixed_epoch}


def build(csv_path: Path, mmdb_path: Path) -> int:
    """Writes ``mmdb_path`` from ``csv_path`` (atomically: a reader never sees half a file).

    Returns the number of networks; raises ConfigError when the CSV is invalid.
    """
    table = read_csv(csv_path)
    writer = _Writer(table.build_epoch)
    for row in table.rows:
        writer.insert_network(IPSet([str(row.network)]), row.record())
    partial = mmdb_path.with_name(f".{mmdb_path.name}.{os.getpid()}.tmp")
    try:
        writer.to_db_file(str(partial))
        os.replace(partial, mmdb_path)
    finally:
        partial.unlink(missing_ok=True)
    return len(table.rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gslb.geodb", description="Build the GSLB's GeoIP database from its CSV source."
    )
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help=f"default {DEFAULT_CSV}")
    parser.add_argument(
        "mmdb", nargs="?", type=Path, default=BUNDLED_DATABASE, help=f"default {BUNDLED_DATABASE}"
    )
    args = parser.parse_args(argv)
    try:
        count = build(args.csv, args.mmdb)
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{args.mmdb}: cannot write: {err}", file=sys.stderr)
        return 1
    print(f"built {args.mmdb} from {args.csv}: {count} networks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
