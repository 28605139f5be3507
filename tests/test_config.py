"""Zone files: the bundled example loads; each kind of mistake is reported at its line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from ipaddress import ip_address
from pathlib import Path

import pytest

from gslb.config import load_zone_text, load_zones
from gslb.errors import ConfigError
from gslb.model import AddressData, CheckKind, MXData, NameData, RType, TXTData

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
zone: gslb.example.com
nameservers:
  ns1: [127.0.0.1]
"""


def test_example_zone_loads_with_every_feature() -> None:
    (zone,) = load_zones(ROOT / "zones")
    assert zone.apex == "gslb.example.com."
    by_type = {(r.name, r.rtype) for r in zone.records}
    assert ("gslb.example.com.", RType.NS) in by_type
    assert ("ns1.gslb.example.com.", RType.A) in by_type  # glue
    assert ("ns2.gslb.example.com.", RType.A) in by_type
    assert {RType.TXT, RType.MX, RType.CNAME, RType.AAAA} <= {r.rtype for r in zone.records}
    www, geo, *by_policy = zone.services
    assert {s.policy.value for s in by_policy} == {
        "weighted", "round_robin", "least_loaded", "fill", "fastest"}
    assert www.name == "www.gslb.example.com."
    assert geo.check.kind.value == "none" and any(e.cap for p in geo.pools for e in p.endpoints)
    assert www.ttl <= 30
    assert [(p.name, p.priority) for p in www.pools] == [("eu-west", 1), ("us-east", 2)]
    assert all(p.location is not None and (p.countries or p.continents) for p in www.pools)


def test_names_are_relative_unless_absolute() -> None:
    zone = load_zone_text(BASE + textwrap.dedent("""\
        records:
          "@": {MX: "10 mail", TXT: hello}
          Alias: {CNAME: other.example.net.}
          mail: {A: 192.0.2.1}
          long: {TXT: "%s"}
        """) % ("x" * 300))
    records = {(r.name, r.rtype): r for r in zone.records}
    assert records[("gslb.example.com.", RType.MX)].data == MXData(10, "mail.gslb.example.com.")
    assert records[("alias.gslb.example.com.", RType.CNAME)].data == NameData("other.example.net.")
    assert records[("mail.gslb.example.com.", RType.A)].data == AddressData(ip_address("192.0.2.1"))
    long = records[("long.gslb.example.com.", RType.TXT)].data
    assert isinstance(long, TXTData) and [len(s) for s in long.strings] == [255, 45]


def test_static_records_may_hold_addresses_no_endpoint_may_have() -> None:
    zone = load_zone_text(BASE + textwrap.dedent("""\
        records:
          blackhole: {A: 0.0.0.0, AAAA: "::"}
          local: {A: 169.254.169.254, AAAA: "fe80::1"}
        services:
          api:
            pools:
              local: {endpoints: [127.0.0.2, "::1", 192.0.2.1, "2001:db8::1", 10.0.0.1]}
        """))
    assert {str(r.data.address) for r in zone.records if isinstance(r.data, AddressData)} >= {
        "0.0.0.0", "::", "169.254.169.254", "fe80::1"}
    assert len(zone.services[0].pools[0].endpoints) == 5


def test_cname_chains_that_end_are_not_loops() -> None:
    zone = load_zone_text(BASE + textwrap.dedent("""\
        records:
          a: {CNAME: b}
          b: {CNAME: www}
          out: {CNAME: out.example.org.}
          back: {CNAME: a.gslb.example.com.}
          static: {CNAME: mail}
          mail: {A: 192.0.2.25}
        services:
          www: {pools: {eu: {endpoints: [192.0.2.1]}}}
        """), "z.yaml")
    assert len([r for r in zone.records if r.rtype is RType.CNAME]) == 5


def test_service_defaults_and_check() -> None:
    zone = load_zone_text(BASE + textwrap.dedent("""\
        services:
          api:
            check: {type: tcp, port: 443, interval: 5, timeout: 2, rise: 3, fall: 1}
            pools:
              a: {endpoints: [192.0.2.1, {address: "2001:db8::1", port: 443, weight: 5}]}
        """))
    (api,) = zone.services
    assert api.ttl == 30 and api.answers == 2
    assert api.check.kind is CheckKind.TCP and api.check.port == 443 and api.check.fall == 1
    assert [(str(e.address), e.port, e.weight) for e in api.pools[0].endpoints] == [
        ("192.0.2.1", None, 100),
        ("2001:db8::1", 443, 5),
    ]


HUGE = "9" * 400  # an integer beyond any float

BAD = [
    ("zone: [1, 2]\n", 1, "zone: must be a non-empty string"),
    ("nameservers: {ns1: [127.0.0.1]}\n", 0, "zone: required"),
    ("zone: example.com\n", 0, "nameservers: required"),
    (BASE + "nameservers_typo: 1\n", 4, "unknown field"),
    ("zone: example.com\nnameservers:\n  ns1: []\n", 3, "needs glue"),
    ("zone: example.com\nnameservers:\n  ns1: [not-an-ip]\n", 3, "is not an IP address"),
    (BASE + "records:\n  www: {A: 2001:db8::1}\n", 5, "is not an IPv4 address"),
    (BASE + "records:\n  www: {A: 300.1.1.1}\n", 5, "is not an IP address"),
    (BASE + "records:\n  www: {SRV: x}\n", 5, "unsupported type"),
    (BASE + "records:\n  sub: {NS: ns.other.net.}\n", 5, "delegations are not supported"),
    (BASE + "records:\n  www.other.net.: {A: 192.0.2.1}\n", 5, "outside"),
    (BASE + "records:\n  bad..name: {A: 192.0.2.1}\n", 5, "invalid label"),
    (BASE + "records:\n  www: {CNAME: [a, b]}\n", 5, "exactly one CNAME"),
    (BASE + "records:\n  www: {CNAME: a, A: 192.0.2.1}\n", 5, "has a CNAME and other records"),
    (BASE + "records:\n  www: {ttl: -5, A: 192.0.2.1}\n", 5, "ttl: must be an integer"),
    *[(BASE + f"records:\n  mail: {{MX: \"{mx}\"}}\n", 5, "records.mail.MX: must be")
      for mx in ("\u00b20 mail", "\u0661 mail", "ten mail", "10")],
    (BASE + "records:\n  mail: {MX: \"99999 mail\"}\n", 5, "preference must be an integer"),
    (BASE + "services:\n  www: {ttl: fast}\n", 5, "services.www.ttl: must be an integer"),
    (BASE + "services:\n  www: {policy: random}\n", 5, "policy: must be one of"),
    (BASE + "services:\n  www:\n    check: {type: ping}\n", 6, "check.type: must be one of"),
    (BASE + "services:\n  www:\n    check: {interval: 1, timeout: 5}\n", 6, "must not exceed"),
    (BASE + "services:\n  www:\n    check: {expect: 200-100}\n", 6, "within 100-599"),
    (BASE + "services:\n  www: {ttl: 5}\n", 5, "services.www.pools: required: at least one pool"),
    (BASE + "services:\n  www:\n    pools:\n", 6, "services.www.pools: required: at least one pool"),
    (BASE + "services:\n  www:\n    pools: {}\n", 6, "services.www.pools: required: at least one pool"),
    (BASE + "services:\n  www:\n", 5, "services.www.pools: required: at least one pool"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n", 7, "services.www.pools.eu: must be a mapping"),
    (BASE + "services:\n  www: 5\n", 5, "services.www: must be a mapping"),
    (BASE + "services:\n  www:\n    pools: [eu]\n", 6, "services.www.pools: must be a mapping, not a list"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        priority: first\n", 8,
     "pools.eu.priority: must be an integer"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        countries: [Germany]\n", 8,
     "not a valid code"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        location: {lat: 100, lon: 0}\n",
     8, "lat: must be a number from -90"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        endpoints: [{address: x}]\n", 8,
     "endpoints[0].address"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        endpoints: [192.0.2.1, 192.0.2.1]\n",
     8, "duplicate endpoint"),
    (BASE + "services:\n  www:\n    pools:\n      eu:\n        endpoints: [\"2001:db8::1%eth0\"]\n",
     8, "endpoints[0].address: '2001:db8::1%eth0' must not carry a zone index"),
    (BASE + "records:\n  www: {AAAA: \"fe80::1%1\"}\n", 5, "must not carry a zone index"),
    *[(BASE + f"services:\n  www:\n    pools:\n      eu:\n        endpoints: [\"{address}\"]\n",
       8, f"endpoints[0].address: {address} is {kind}, never a reachable endpoint")
      for address, kind in (
          ("0.0.0.0", "unspecified"), ("::", "unspecified"),
          ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
          ("255.255.255.255", "the limited broadcast address"),
          ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
      )],
    ("zone: example.com\nnameservers:\n  ns1: [\"2001:db8::53%eth0\"]\n", 3,
     "must not carry a zone index"),
    (BASE + "services:\n  svc:\n    pools:\n      p:\n        endpoints:\n          - 192.0.2.1\n"
     "          - 999.1.1.1\n", 10, "endpoints[1].address: '999.1.1.1' is not an IP address"),
    (BASE + "services:\n  svc:\n    pools:\n      p:\n        endpoints:\n          - 192.0.2.1\n"
     "          - {address: 192.0.2.2}\n          - 192.0.2.1\n", 11, "duplicate endpoint"),
    (BASE + "records:\n  www: {A: 192.0.2.1}\nservices:\n  www: {}\n", 7, "also has static"),
    *[(BASE + f"services:\n  www:\n    pools:\n      eu:\n        endpoints: [{item}]\n", 8,
       "pools.eu.endpoints[0]: must be an address or a mapping")
      for item in ("null", "1", "[192.0.2.1]")],
    *[(BASE + f"services:\n  www:\n    {field}\n", 6, f"{name}: must be a number from")
      for name, field in (
          ("check.interval", f"check: {{interval: {HUGE}}}"),
          ("check.timeout", f"check: {{timeout: {HUGE}}}"),
      )],
    *[(BASE + f"services:\n  www:\n    pools:\n      eu:\n        {field}\n", 8,
       f"{name}: must be a number from")
      for name, field in (
          ("location.lat", f"location: {{lat: {HUGE}, lon: 0}}"),
          ("location.lon", f"location: [0, -{HUGE}]"),
          ("endpoints[0].cap", f"endpoints: [{{address: 192.0.2.1, cap: {HUGE}}}]"),
      )],
    ("zone: x\n  bad: indent\n", 2, "invalid YAML"),
    (BASE + "records:\n  self: {CNAME: self}\n", 5,
     "records.self.CNAME: CNAME loop: self.gslb.example.com. -> self.gslb.example.com."),
    (BASE + "records:\n  l1:\n    ttl: 60\n    CNAME: l2\n  l2: {CNAME: l1.gslb.example.com.}\n", 7,
     "records.l1.CNAME: CNAME loop: l1.gslb.example.com. -> l2.gslb.example.com. -> l1"),
    (BASE + "records:\n  a: {CNAME: b}\n  c: {CNAME: a}\n  b: {CNAME: c}\n", 5,
     "records.a.CNAME: CNAME loop: a.gslb.example.com. -> b.gslb.example.com. -> c.gslb"),
    (BASE + "records:\n  into: {CNAME: x}\n  x: {CNAME: y}\n  y: {CNAME: X}\n", 6,
     "records.x.CNAME: CNAME loop: x.gslb.example.com. -> y.gslb.example.com. -> x.gslb"),
    (BASE + "records:\n  www: {A: 192.0.2.1}\n  mail: {A: 192.0.2.2}\n  www: {A: 192.0.2.3}\n",
     7, "duplicate key 'www'"),
    (BASE + "services:\n  www:\n    ttl: 5\n    pools: {eu: {}}\n    ttl: 50\n", 8,
     "duplicate key 'ttl'"),
    (BASE + "records:\n  www: {A: 192.0.2.1, A: 192.0.2.2}\n", 5, "duplicate key 'A'"),
    (BASE + "nameservers:\n  ns2: [127.0.0.2]\n", 4, "duplicate key 'nameservers'"),
    (BASE + "ttl: " + "9" * 5000 + "\n", 4, "invalid YAML: integer with too many digits"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_zone_files_are_reported_at_their_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_zone_text(text, "z.yaml")
    problems = info.value.problems
    assert any(message in p for p in problems), problems
    prefix = f"z.yaml:{line}:" if line else "z.yaml:"
    assert any(p.startswith(prefix) and message in p for p in problems), problems


def test_merge_keys_may_be_overridden_without_a_duplicate_key() -> None:
    zone = load_zone_text(BASE + textwrap.dedent("""\
        services:
          www: &base
            ttl: 5
            pools: {eu: {endpoints: [192.0.2.1]}}
          api:
            <<: *base
            ttl: 50
        """), "z.yaml")
    assert {s.name: s.ttl for s in zone.services} == {
        "www.gslb.example.com.": 5, "api.gslb.example.com.": 50}


def test_each_cname_loop_is_reported_once() -> None:
    text = BASE + "records:\n  into: {CNAME: x}\n  x: {CNAME: y}\n  y: {CNAME: x}\n"
    with pytest.raises(ConfigError) as info:
        load_zone_text(text + "  a: {CNAME: b}\n  b: {CNAME: a}\n", "z.yaml")
    assert [p.split(": ")[0] for p in info.value.problems] == ["z.yaml:6", "z.yaml:8"]


def test_every_problem_is_reported_at_once() -> None:
    text = BASE + "records:\n  a: {A: bad}\n  b: {AAAA: bad}\nservices:\n  www: {ttl: x, pools: {p: {}}}\n"
    with pytest.raises(ConfigError) as info:
        load_zone_text(text, "z.yaml")
    assert len(info.value.problems) == 3


def test_yaml_tags_cannot_run_code() -> None:
    with pytest.raises(ConfigError):
        load_zone_text("zone: !!python/object/apply:os.system ['true']\n", "z.yaml")


def test_duplicate_zone_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yaml").write_text(BASE)
    with pytest.raises(ConfigError, match="already defined"):
        load_zones(tmp_path)


def _gslb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args], capture_output=True, text=True, timeout=30
    )


def test_check_command_exit_codes(tmp_path: Path) -> None:
    ok = _gslb("check", "--zones", str(ROOT / "zones"))
    assert ok.returncode == 0, ok.stderr
    assert "1 zone(s)" in ok.stdout
    (tmp_path / "bad.yaml").write_text(BASE + "records:\n  www: {A: 999.1.1.1}\n")
    bad = _gslb("check", "--zones", str(tmp_path))
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"{tmp_path / 'bad.yaml'}:5: records.www.A: '999.1.1.1' is not an IP address"


CHECK_BAD = [
    (BASE + "services:\n  svc:\n    pools:\n      p:\n        endpoints: [null]\n",
     "8: services.svc.pools.p.endpoints[0]: must be an address or a mapping"),
    (BASE + f"services:\n  svc:\n    check: {{interval: {HUGE}}}\n    pools: {{p: {{}}}}\n",
     "6: services.svc.check.interval: must be a number"),
    (BASE + "records:\n  '@': {MX: \"\u00b20 mail\"}\n", "5: records.@.MX: must be"),
    (BASE + "records:\n  www: {A: 192.0.2.1}\n  www: {A: 192.0.2.2}\n", "6: duplicate key 'www'"),
    (BASE + "records:\n  l1: {CNAME: l2}\n  l2: {CNAME: l1}\n", "5: records.l1.CNAME: CNAME loop"),
    (BASE + "services:\n  svc:\n    pools:\n      p:\n        endpoints:\n          - 999.1.1.1\n",
     "9: services.svc.pools.p.endpoints[0].address: '999.1.1.1' is not an IP address"),
]


@pytest.mark.parametrize(("text", "problem"), CHECK_BAD)
def test_check_command_reports_problems_at_their_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    bad = _gslb("check", "--zones", str(tmp_path))
    assert bad.returncode == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert f"{tmp_path / 'bad.yaml'}:{problem}" in bad.stderr
