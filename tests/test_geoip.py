"""GeoIP: the bundled database and its CSV source, MaxMind's own test databases, reloads, the cache."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gslb import geodb
from gslb.errors import ConfigError
from gslb.geoip import BUNDLED_DATABASE, GeoDatabase, GeoIPError, GeoSource
from gslb.model import GeoInfo, Location

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "data" / "geo.csv"
MAXMIND = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "maxmind"

LONDON = Location(51.5074, -0.1278)
FRANKFURT = Location(50.1109, 8.6821)
TOKYO = Location(35.6762, 139.6503)
ASHBURN = Location(39.0438, -77.4874)


@pytest.fixture(scope="module")
def bundled() -> GeoDatabase:
    return GeoDatabase.open(BUNDLED_DATABASE)


@pytest.fixture
def maxmind() -> Path:
    if not MAXMIND.is_dir():
        pytest.skip("MaxMind test databases: ../shared/testdata/maxmind is absent")
    return MAXMIND


# --- the bundled database -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "country", "continent", "location", "prefix"),
    [
        ("192.0.2.1", "GB", "EU", LONDON, 24),
        ("198.51.100.7", "DE", "EU", FRANKFURT, 24),
        ("203.0.113.254", "JP", "AS", TOKYO, 24),
        ("127.0.1.1", "DE", "EU", FRANKFURT, 24),
        ("127.0.2.1", "US", "NA", ASHBURN, 24),
        ("127.0.3.1", "JP", "AS", TOKYO, 24),
        ("127.0.4.1", "BR", "SA", Location(-23.5505, -46.6333), 24),
        ("127.0.5.1", "AU", "OC", Location(-33.8688, 151.2093), 24),
        ("127.0.6.1", "ZA", "AF", Location(-26.2041, 28.0473), 24),
        ("127.0.7.1", "IE", "EU", Location(53.3498, -6.2603), 24),
        ("127.0.8.1", "CA", "NA", Location(43.6532, -79.3832), 24),
        ("127.0.9.1", "IN", "AS", Location(19.0760, 72.8777), 24),
        ("127.0.10.255", "SG", "AS", Location(1.3521, 103.8198), 24),
        ("2001:db8::1", "US", "NA", ASHBURN, 48),
        ("2001:db8:1::1", "DE", "EU", FRANKFURT, 48),
        ("2001:db8:3:ffff::1", "JP", "AS", TOKYO, 48),
        ("2001:db8:a::1", "SG", "AS", Location(1.3521, 103.8198), 48),
        ("::ffff:127.0.1.1", "DE", "EU", FRANKFURT, 120),  # IPv4-mapped: located as IPv4
    ],
)
def test_bundled_ranges(
    bundled: GeoDatabase, address: str, country: str, continent: str, location: Location, prefix: int
) -> None:
    assert bundled.locate(ip_address(address)) == GeoInfo(country, continent, location, prefix, True)


@pytest.mark.parametrize(
    ("address", "widest"),
    [
        ("127.0.0.1", 24),  # the default client: 127.0.0.0/24 is unmapped, next to 127.0.1.0/24
        ("127.0.11.1", 24),
        ("10.1.2.3", 8),
        ("172.16.0.1", 12),
        ("192.168.1.1", 16),
        ("::1", 128),
        ("2001:db8:b::1", 48),
        ("fe80::1", 10),
    ],
)
def test_bundled_unmapped(bundled: GeoDatabase, address: str, widest: int) -> None:
    info = bundled.locate(ip_address(address))
    assert (info.found, info.country, info.continent, info.location) == (False, None, None, None)
    assert 0 < info.prefix <= widest  # the empty network around it, never "the whole Internet"
    # every address of that empty network is unmapped too
    network = ip_network(f"{address}/{info.prefix}", strict=False)
    assert not bundled.locate(network.network_address).found
    assert not bundled.locate(network.broadcast_address).found


def test_bundled_metadata(bundled: GeoDatabase) -> None:
    epoch = geodb.read_csv(CSV).build_epoch
    assert epoch > 0
    assert (bundled.database_type, bundled.build_epoch, bundled.ip_version) == ("GSLB-City", epoch, 6)
    assert bundled.path == BUNDLED_DATABASE
    assert str(bundled).startswith(f"{BUNDLED_DATABASE} (GSLB-City, built ")


def test_shipped_database_matches_its_csv(tmp_path: Path) -> None:
    """Change data/geo.csv, then run `python -m gslb.geodb` and commit both files."""
    rows = geodb.read_csv(CSV).rows
    first, second = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    assert geodb.build(CSV, first) == len(rows) >= 24
    assert geodb.build(CSV, second) == len(rows)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() == BUNDLED_DATABASE.read_bytes(), "run: python -m gslb.geodb"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file left


def test_every_csv_row_reads_back(bundled: GeoDatabase) -> None:
    for row in geodb.read_csv(CSV).rows:
        for address in (row.network.network_address, row.network.broadcast_address):
            info = bundled.locate(address)
            assert (info.country, info.continent) == (row.country, row.continent)
            assert info.location == Location(row.latitude or 0, row.longitude or 0)
            assert info.prefix == row.network.prefixlen


def test_geoip2_reads_the_bundled_database() -> None:
    import geoip2.database

    with geoip2.database.Reader(str(BUNDLED_DATABASE)) as reader:
        city = reader.city("127.0.4.1")
    assert (city.country.iso_code, city.continent.code, city.location.latitude) == ("BR", "SA", -23.5505)


# --- the CSV source -------------------------------------------------------------------

HEADER = "network,country,continent,latitude,longitude,comment\n"
GOOD = "192.0.2.0/24,GB,EU,51.5,-0.1,London\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("300.1.2.0/24,GB,EU,51.5,-0.1,x", "network: '300.1.2.0/24' does not appear to be"),
        ("198.51.100.1/24,DE,EU,50,8,x", "network: 198.51.100.1/24 has host bits set"),
        ("::/64,US,NA,,,x", "overlaps the IPv4 space"),
        ("198.51.100.0/24,de,EU,50,8,x", "country: must be a two-letter ISO 3166 code"),
        ("198.51.100.0/24,DEU,EU,50,8,x", "country: must be a two-letter"),
        ("198.51.100.0/24,DE,XX,50,8,x", "continent: must be one of AF AN AS EU NA OC SA: 'XX'"),
        ("198.51.100.0/24,DE,EU,91,8,x", "latitude: must be between -90 and 90: 91"),
        ("198.51.100.0/24,DE,EU,50,-180.5,x", "longitude: must be between -180 and 180"),
        ("198.51.100.0/24,DE,EU,north,8,x", "latitude: not a number: 'north'"),
        ("198.51.100.0/24,DE,EU,nan,8,x", "latitude: must be between"),
        ("198.51.100.0/24,DE,EU,50,,x", "latitude and longitude must be given together"),
        ("198.51.100.0/24,DE,EU,50,8,Frankfurt, Hesse", "expected 6 fields"),
        ("198.51.100.0/24,DE,EU", "expected 6 fields"),
        ("192.0.2.128/25,GB,EU,51.5,-0.1,x", "network: 192.0.2.128/25 overlaps 192.0.2.0/24 (line 2)"),
        ("192.0.2.0/24,GB,EU,51.5,-0.1,x", "network: 192.0.2.0/24 overlaps 192.0.2.0/24 (line 2)"),
        ("192.0.0.0/16,GB,EU,51.5,-0.1,x", "overlaps"),
        ("# build_epoch: yesterday", "build_epoch must be a whole number"),
    ],
)
def test_bad_csv_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    csv = tmp_path / "geo.csv"
    csv.write_text(HEADER + GOOD + row + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        geodb.build(csv, tmp_path / "out.mmdb")
    line = 2 if message == "overlaps" else 3  # a wider network sorts first; the narrower one overlaps it
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"{csv}:{line}: ")
    assert message in caught.value.problems[0]
    assert not (tmp_path / "out.mmdb").exists()


def test_csv_reports_every_problem_at_once(tmp_path: Path) -> None:
    csv = tmp_path / "geo.csv"
    csv.write_text(HEADER + "# a comment\n\n10.0.0.0/8,xx,EU,,,\n2001:db8::/32,US,ZZ,,,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        geodb.read_csv(csv)
    assert [p.split(": ")[0:2] for p in caught.value.problems] == [
        [f"{csv}:4", "country"],
        [f"{csv}:5", "continent"],
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header row"),
        ("# only comments\n", "no header row"),
        ("net,cc\n" + GOOD, ":1: the first row must be the header"),
    ],
)
def test_csv_header(tmp_path: Path, text: str, message: str) -> None:
    csv = tmp_path / "geo.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        geodb.read_csv(csv)


def test_csv_optional_fields_and_epoch(tmp_path: Path) -> None:
    csv = tmp_path / "geo.csv"
    csv.write_text(
        "# build_epoch: 5\n" + HEADER + "# build_epoch: 7\n"
        '198.51.100.0/24,DE,EU,,,"Germany, no city"\n'
        "2001:db8:1::/48,DE,EU,50.1,8.7\n",  # no comment field at all
        encoding="utf-8",
    )
    out = tmp_path / "out.mmdb"
    assert geodb.build(csv, out) == 2
    database = GeoDatabase.open(out)
    assert database.build_epoch == 7
    assert database.locate(ip_address("198.51.100.1")) == GeoInfo("DE", "EU", None, 24, True)
    assert database.locate(ip_address("2001:db8:1::1")).location == Location(50.1, 8.7)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        geodb.read_csv(tmp_path / "absent.csv")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "geo.mmdb"
    assert geodb.main([str(CSV), str(out)]) == 0
    assert f"built {out} from {CSV}: " in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "198.51.100.0/24,DE,EU,95,8,x\n", encoding="utf-8")
    assert geodb.main([str(bad), str(out)]) == 1
    assert f"{bad}:2: latitude" in capsys.readouterr().err


# --- MaxMind's test databases ------------------------------------------------------------


@pytest.mark.parametrize("name", ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"])
def test_maxmind_city(maxmind: Path, name: str) -> None:
    database = GeoDatabase.open(maxmind / name)
    assert database.database_type == name.removesuffix("-Test.mmdb")
    london = database.locate(ip_address("81.2.69.142"))
    assert london == GeoInfo("GB", "EU", Location(51.5142, -0.0931), 31, True)
    us = database.locate(ip_address("216.160.83.56"))
    assert (us.country, us.continent, us.found) == ("US", "NA", True) and us.location is not None
    jp = database.locate(ip_address("2001:218::1"))
    assert (jp.country, jp.continent, jp.prefix) == ("JP", "AS", 32)
    for private in ("10.0.0.1", "127.0.0.1", "192.168.0.1", "::1"):
        info = database.locate(ip_address(private))
        assert not info.found and info.prefix > 0


@pytest.mark.parametrize("name", ["GeoIP2-Country-Test.mmdb", "GeoLite2-Country-Test.mmdb"])
def test_maxmind_country_has_no_coordinates(maxmind: Path, name: str) -> None:
    database = GeoDatabase.open(maxmind / name)
    assert database.locate(ip_address("81.2.69.142")) == GeoInfo("GB", "EU", None, 31, True)
    assert database.locate(ip_address("2001:218::1")) == GeoInfo("JP", "AS", None, 32, True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("GeoLite2-ASN-Test.mmdb", "is a GeoLite2-ASN database; need a City or Country database"),
        ("GeoIP2-City-Test-Invalid-Node-Count.mmdb", "corrupt MaxMind DB"),
        ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "lookups fail, the data section is damaged"),
    ],
)
def test_maxmind_unusable(maxmind: Path, name: str, message: str) -> None:
    with pytest.raises(GeoIPError) as caught:
        GeoDatabase.open(maxmind / name)
    assert str(caught.value) == f"{maxmind / name}: {message}" or str(caught.value).startswith(
        f"{maxmind / name}: {message}: "
    )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"network,country\n", "not a MaxMind DB file (no metadata section)"),
        (b"", "not a MaxMind DB file"),
        (b"\x00" * 64 + b"\xab\xcd\xefMaxMind.com" + b"\xff" * 8, "corrupt MaxMind DB"),
    ],
)
def test_not_a_database(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "geo.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GeoIPError, match=f"^{re.escape(f'{path}: {message}')}"):
        GeoDatabase.open(path)
    with pytest.raises(GeoIPError, match="is a directory"):
        GeoDatabase.open(tmp_path)


def test_failing_lookup_answers_not_found_and_logs_once(
    maxmind: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = maxmind / "GeoIP2-City-Test-Broken-Double-Format.mmdb"
    database = GeoDatabase(maxminddb.open_database(broken), broken)  # skips the probe on purpose
    with caplog.at_level(logging.WARNING, logger="gslb.geoip"):
        first = database.locate(ip_address("81.2.69.142"))
        second = database.locate(ip_address("216.160.83.56"))
        v6 = database.locate(ip_address("2001:218::1"))
    assert first == GeoInfo(None, None, None, 32, False)
    assert second == GeoInfo(None, None, None, 32, False)
    assert v6 == GeoInfo(None, None, None, 128, False)
    assert len(caplog.records) == 1 and "lookups fail" in caplog.records[0].getMessage()


# --- reloads ---------------------------------------------------------------------------


def _swap(source: Path, target: Path) -> None:
    """Replaces ``target`` as deployment tools do: write beside it, rename over it."""
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def test_reload_keeps_the_database_in_use_until_a_good_one_comes(
    maxmind: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "geo.mmdb"
    shutil.copyfile(maxmind / "GeoIP2-City-Test.mmdb", path)
    source = GeoSource.open(path)
    city = source.database
    assert not source.changed()
    london = ip_address("81.2.69.142")

    for bad in ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "GeoIP2-City-Test-Invalid-Node-Count.mmdb"):
        _swap(maxmind / bad, path)
        assert source.changed()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gslb.geoip"):
            assert source.reload() is False
        assert source.database is city
        assert source.locate(london).country == "GB"
        assert not source.changed()  # the bad file was tried: no retry until it changes again
        (record,) = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(f"GeoIP reload failed, still using {path} (GeoIP2-City, built ")
        assert str(path) in record.getMessage()

    path.unlink()
    assert source.changed()
    assert source.reload() is False
    assert "no such file" in caplog.records[-1].getMessage()
    assert source.locate(london).country == "GB"

    _swap(maxmind / "GeoLite2-Country-Test.mmdb", path)
    assert source.changed()
    assert source.reload() is True
    assert source.database.database_type == "GeoLite2-Country"
    assert source.locate(london) == GeoInfo("GB", "EU", None, 31, True)
    assert not source.changed()


@pytest.mark.skipif(sys.platform != "linux", reason="a private copy of the file is made on Linux only")
def test_overwriting_the_file_in_place_does_not_disturb_the_open_database(
    maxmind: Path, tmp_path: Path
) -> None:
    path = tmp_path / "geo.mmdb"
    shutil.copyfile(maxmind / "GeoIP2-City-Test.mmdb", path)
    database = GeoDatabase.open(path)
    with path.open("r+b") as file:  # what `cp other.mmdb geo.mmdb` does: truncate, then write
        file.truncate(0)
        file.write(b"not a database")
    assert database.locate(ip_address("81.2.69.142")).location == Location(51.5142, -0.0931)
    assert database.locate(ip_address("2001:218::1")).country == "JP"


# --- other layouts -----------------------------------------------------------------------


def _write(path: Path, ip_version: int, records: dict[str, Any]) -> Path:
    writer = MMDBWriter(ip_version=ip_version, database_type="Test-City", ipv4_compatible=ip_version == 6)
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def test_ipv4_only_database(tmp_path: Path) -> None:
    record = {"country": {"iso_code": "FR"}, "continent": {"code": "EU"}}
    database = GeoDatabase.open(_write(tmp_path / "v4.mmdb", 4, {"192.0.2.0/24": record}))
    assert database.ip_version == 4
    assert database.locate(ip_address("192.0.2.9")) == GeoInfo("FR", "EU", None, 24, True)
    assert database.locate(ip_address("2001:db8::1")) == GeoInfo(None, None, None, 0, False)
    assert database.locate(ip_address("::ffff:192.0.2.9")) == GeoInfo("FR", "EU", None, 120, True)


def test_registered_country_stands_in_for_country(tmp_path: Path) -> None:
    records: dict[str, Any] = {
        "192.0.2.0/24": {"registered_country": {"iso_code": "NL"}, "location": {"latitude": "x"}},
        "198.51.100.0/24": {"country": {"iso_code": 7}, "continent": "EU"},
    }
    database = GeoDatabase.open(_write(tmp_path / "odd.mmdb", 6, records))
    assert database.locate(ip_address("192.0.2.1")) == GeoInfo("NL", None, None, 24, True)
    assert database.locate(ip_address("198.51.100.1")) == GeoInfo(None, None, None, 24, True)


def test_records_must_be_maps(tmp_path: Path) -> None:
    path = _write(tmp_path / "strings.mmdb", 6, {"192.0.2.0/24": "GB"})
    with pytest.raises(GeoIPError, match="records are not maps"):
        GeoDatabase.open(path)


# --- the cache ---------------------------------------------------------------------------


# /24s (and IPv6 /120s) holding several database networks, plus some that are uniform
NEIGHBOURHOODS: list[IPv4Network | IPv6Network] = [
    ip_network(text)
    for text in (
        "81.2.69.0/24", "89.160.20.0/24", "216.160.83.0/24", "2.125.160.0/24", "175.16.199.0/24",
        "127.0.0.0/24", "2001:218::/120", "2a02:cf40::/120", "2001:480::/120",
    )
]  # fmt: skip


@pytest.mark.parametrize("cache_size", [65_536, 100, 1])
def test_cached_answers_are_fresh_answers(maxmind: Path, cache_size: int) -> None:
    path = maxmind / "GeoIP2-City-Test.mmdb"
    cached, fresh = GeoDatabase.open(path, cache_size), GeoDatabase.open(path, cache_size=0)
    addresses = [address for network in NEIGHBOURHOODS for address in network]
    seen: dict[IPv4Address | IPv6Address, GeoInfo] = {}
    for rounds in range(2):
        random.Random(rounds).shuffle(addresses)
        for address in addresses:
            seen[address] = cached.locate(address)
            assert seen[address] == fresh.locate(address), address
        assert cached.cache_entries <= cache_size
    assert fresh.cache_entries == 0
    # the test means something: one /24 holds several answers, with narrow and wide networks
    in_81 = {seen[a] for a in ip_network("81.2.69.0/24")}
    assert len({(i.country, i.location) for i in in_81}) >= 2
    assert {i.prefix for i in in_81} >= {31, 28, 27}
    assert any(not i.found for i in in_81)


def test_cache_on_the_bundled_database() -> None:
    cached, fresh = GeoDatabase.open(BUNDLED_DATABASE), GeoDatabase.open(BUNDLED_DATABASE, cache_size=0)
    networks = ("127.0.0.0/22", "10.0.0.0/24", "2001:db8::/120", "2001:db8:1::/120")
    for address in [a for n in networks for a in ip_network(n)] * 2:
        assert cached.locate(address) == fresh.locate(address)
    assert cached.cache_entries == 7  # every network here is a /24 (/56) or wider: one entry per bucket


def test_cache_by_network_answers_as_the_database_over_the_whole_space() -> None:
    """Entries kept for a /8, /16 or /24 (IPv6: /16 to /56) that the database network holds
    answer every address in it as a lookup would, and a wide empty network is one entry."""
    cached, fresh = GeoDatabase.open(BUNDLED_DATABASE), GeoDatabase.open(BUNDLED_DATABASE, cache_size=0)
    rng = random.Random(7)
    addresses: list[IPv4Address | IPv6Address] = [IPv4Address(rng.getrandbits(32)) for _ in range(3000)]
    addresses += [IPv4Address(0x7F000000 | rng.getrandbits(12)) for _ in range(500)]  # 127.0.0-15.x
    addresses += [IPv6Address(0x20010DB8 << 96 | rng.getrandbits(84)) for _ in range(500)]
    addresses += [IPv6Address(rng.getrandbits(128)) for _ in range(500)]
    for address in addresses * 2:
        assert cached.locate(address) == fresh.locate(address), address
    entries = cached.cache_entries
    for _ in range(1000):  # more of 10.0.0.0/8, unknown to the database: no new entry
        assert not cached.locate(IPv4Address(0x0A000000 | rng.getrandbits(24))).found
    assert cached.cache_entries <= entries + 1
