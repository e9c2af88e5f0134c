"""The command line as users meet it: help texts, the demo, profile lookups, produce,
the Online Retail importer and the schema export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from omnicanal.__main__ import app
from omnicanal.config import Settings
from omnicanal.tools.demo import events_from_jsonl, produce
from schemas.export import JSON_DIR, filename, render, schemas
from tests.test_run_command import env_for

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "online_retail_sample.csv"
runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["demo"],
        ["run"],
        ["produce"],
        ["profile"],
        ["topics", "create"],
        ["schemas", "export"],
        ["import", "online-retail"],
        ["config"],
        ["webhook"],
        ["alerts"],
        ["stock"],
        ["evaluate", "stockouts"],
    ],
)
def test_every_command_explains_itself(args: list[str]) -> None:
    res = runner.invoke(app, [*args, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and len(res.output) > 200


def test_committed_json_schemas_are_in_sync_with_the_contracts(tmp_path: Path) -> None:
    res = runner.invoke(app, ["schemas", "export", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name, doc in schemas().items():
        committed = (JSON_DIR / filename(name)).read_bytes()
        assert committed == render(doc), f"run: omnicanal schemas export schemas/json ({name})"
        assert (tmp_path / filename(name)).read_bytes() == committed


def test_generated_events_validate_against_the_exported_json_schema() -> None:
    """The JSON Schema channel teams get accepts what omnicanal accepts (and rejects the
    bad events the generator makes, where JSON Schema can express the rule)."""
    import jsonschema

    from omnicanal.tools.datagen import Generator

    validators = {n: jsonschema.Draft202012Validator(d) for n, d in schemas().items()}
    for msg in Generator(seed=3, customers=100, bad_share=0.0).messages(1500):
        validators[msg.contract].validate(orjson.loads(msg.value))
    bad = {"unknown_field", "missing_field", "unknown_event_type", "wrong_type"}
    for msg in Generator(seed=3, customers=100, bad_share=1.0).messages(400):
        if msg.expected_reason in bad:
            try:
                doc = orjson.loads(msg.value)
            except orjson.JSONDecodeError:
                continue
            assert not validators[msg.contract].is_valid(doc), msg


def test_import_online_retail_both_layouts(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    res = runner.invoke(app, ["import", "online-retail", str(SAMPLE), "-o", str(out)])
    assert res.exit_code == 0, res.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    types = {e["event_type"] for e in events}
    assert {"sale", "return", "stock_adjustment"} <= types
    # The "II" layout: renamed columns, same content, same events.
    text = SAMPLE.read_text().splitlines()
    text[0] = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"
    ii = tmp_path / "ii.csv"
    ii.write_text("\n".join(text) + "\n")
    out2 = tmp_path / "ii.jsonl"
    assert runner.invoke(app, ["import", "online-retail", str(ii), "-o", str(out2)]).exit_code == 0
    assert out2.read_bytes() == out.read_bytes()
    # Every row is accounted for in the report; every event is valid.
    report = json.loads(res.stderr[res.stderr.index("{") :])
    assert report["rows"] == 2000
    assert report["sales"] + report["returns"] + report["stock_adjustments"] == len(events)
    # ... and every invoice: its outcome, once.
    invoices = {row.split(",")[0] for row in SAMPLE.read_text().splitlines()[1:]}
    assert sum(report["invoices"].values()) == len(invoices)
    assert report["invoices"]["sale"] == report["sales"]
    assert report["invoices"]["return"] == report["returns"]
    from operators.privacy import PiiHasher
    from operators.validate import Validator
    from schemas.envelope import Accepted
    from schemas.events import CONTRACT_OF_TYPE

    s = Settings()
    v = Validator(s.topic_contracts(), PiiHasher(b"k" * 16), max_bytes=1 << 20)
    topics = s.contract_topics()
    for e in events:
        r = v.decode(
            topics[CONTRACT_OF_TYPE[e["event_type"]]],
            0,
            0,
            None,
            orjson.dumps(e),
            now_ms=2_000_000_000_000,
        )
        assert isinstance(r, Accepted), (e, r)


def test_a_real_675_line_invoice_goes_through_the_pipeline_limits(tmp_path: Path) -> None:
    """The largest invoice of the first 50k rows (675 lines, 65 KB; the full data set has
    749-line ones): imported as one sale that the default validator accepts; with a lower
    size limit the importer says it left it out."""
    from operators.privacy import PiiHasher
    from operators.validate import Validator
    from schemas.envelope import Accepted

    big = ROOT / "tests" / "data" / "online_retail_large_invoice.csv"
    out = tmp_path / "big.jsonl"
    res = runner.invoke(app, ["import", "online-retail", str(big), "-o", str(out)])
    assert res.exit_code == 0, res.output
    (event,) = out.read_bytes().splitlines()
    report = json.loads(res.stderr[res.stderr.index("{") :])
    assert report["invoices"] == {"sale": 1}
    assert report["largest_invoice"] == {"lines": 675, "bytes": len(event)}
    v = Validator({"t": "transaction"}, PiiHasher(b"k" * 16))  # the default limits
    assert isinstance(v.decode("t", 0, 0, None, event, 1.9e12), Accepted)

    res = runner.invoke(
        app,
        ["import", "online-retail", str(big), "-o", str(out)],
        env={"OMNICANAL_MAX_EVENT_BYTES": "60000"},
    )
    report = json.loads(res.stderr[res.stderr.index("{") :])
    assert report["invoices"] == {"too_large": 1} and report["invoices_too_large"] == ["537434"]
    assert out.read_bytes() == b""


def test_import_rejects_a_file_that_is_not_online_retail(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a,b,c\n1,2,3\n")
    res = runner.invoke(app, ["import", "online-retail", str(f)])
    assert res.exit_code == 2
    assert "not an Online Retail file" in res.output


def omnicanal_demo(*args: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "demo", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    summary: dict[str, Any] = json.loads(res.stdout)
    return summary


@pytest.mark.services
def test_demo_json_summary_is_consistent() -> None:
    s = omnicanal_demo("--events", "4000", "--seed", "3", "--customers", "500")
    assert s["produced"] == 4000 and s["consistent"] is True
    assert s["processed"] + s["dead_lettered"] == 4000
    assert s["dead_letters_by_reason"] == s["expected_dead_letters"]
    assert s["customers"] > 100 and s["sample_customer"]
    assert s["events_per_second"] > 0
    ids = s["identity"]  # the generator's journeys link cookies, accounts, cards, emails
    assert ids["customers"] == s["customers"] and ids["identifiers"] > s["customers"]
    assert ids["refused"] == 0 and set(ids) >= {"merges", "suppressed", "erased"}
    # Stock alerts as the alerts topic holds them, and the open ones in Redis.
    assert s["stock_alerts"]["out_of_stock"] > 0 and s["stock_alerts"]["low_stock"] > 0
    assert 0 < sum(s["stock_alerts_open"].values()) <= sum(s["stock_alerts"].values())
    assert s["skus_at_risk"] > 0


@pytest.mark.services
def test_demo_replays_the_online_retail_sample() -> None:
    s = omnicanal_demo("--import", str(SAMPLE))
    assert s["consistent"] and s["dead_lettered"] == 0
    assert s["events_by_type"]["sale"] > 50 and s["events_by_type"]["return"] > 0


@pytest.mark.services
def test_produce_then_profile_lookup_by_id_and_by_email(settings: Settings, tmp_path: Path) -> None:
    from omnicanal import runner as pipeline

    f = tmp_path / "events.jsonl"
    events = [
        {
            "event_type": "sale",
            "event_id": "s1",
            "event_time": "2024-05-01T10:00:00Z",
            "channel": "store",
            "currency": "GBP",
            "location_id": "store-001",
            "customer": {"email": "Zoe@Example.com"},
            "lines": [{"sku": "MUG", "quantity": 2, "unit_price_minor": 450}],
        },
        {
            "event_type": "product_view",
            "event_id": "c1",
            "event_time": "2024-05-01T09:00:00Z",
            "channel": "web",
            "session_id": "s",
            "customer": {"email": "zoe@example.com", "cookie_id": "ck-42"},
            "sku": "TEAPOT",
        },
    ]
    f.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\nnot json\n")
    env = env_for(settings)
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "produce", str(f)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "produced 3 events" in res.stderr
    plan = pipeline.plan(settings)
    pipeline.run(settings, plan.starts, until_eof=True, serve_metrics=False)

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omnicanal", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    as_of = ("--as-of", "2024-05-02T00:00:00Z")
    res = cli("profile", "--email", " ZOE@example.com", *as_of)
    assert res.returncode == 0, res.stderr
    p = json.loads(res.stdout)
    assert p["customer_id"].startswith("C") and "zoe" not in res.stdout.lower()
    assert p["channels"]["store"]["spend_minor"] == {"GBP": 900}
    assert p["recently_viewed"][0]["sku"] == "TEAPOT"
    assert p["rfm"]["recency"] == 5 and p["home_store"] == "store-001"
    # Any identifier finds the same 360° view: the canonical id, the cookie that logged
    # in with the email, the email given as type:value.
    for ident in (p["customer_id"], "cookie:ck-42", "email:zoe@EXAMPLE.com"):
        same = cli("profile", ident, *as_of)
        assert same.returncode == 0, same.stderr
        assert json.loads(same.stdout) == p
    missing = cli("profile", "loyalty:nobody")
    assert missing.returncode == 1 and "no customer known by 'loyalty:nobody'" in missing.stderr

    # Right of access, then right to erasure (confirmation refused, then given).
    exported = cli("privacy", "export", "cookie:ck-42", "-o", str(tmp_path / "zoe.json"))
    assert exported.returncode == 0, exported.stderr
    doc = json.loads((tmp_path / "zoe.json").read_text())
    assert doc["customer_id"] == p["customer_id"] and "cookie:ck-42" in doc["identifiers"]
    assert doc["stored"]["viewed"] == {"TEAPOT": 1714554000000}
    assert cli("privacy", "erase", "cookie:ck-42", stdin="n\n").returncode == 1
    assert cli("profile", "cookie:ck-42").returncode == 0
    erased = cli("privacy", "erase", "--email", "zoe@example.com", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout) == {"erased": p["customer_id"], "identifiers": 2}
    assert cli("profile", "cookie:ck-42").returncode == 1
    assert cli("profile", p["customer_id"]).returncode == 1


@pytest.mark.services
def test_alerts_and_stock_commands(settings: Settings, tmp_path: Path) -> None:
    from omnicanal import runner as pipeline

    at = "2024-05-01T10:00:00Z"
    events = [
        {
            "event_type": "stock_snapshot",
            "event_id": "n1",
            "event_time": at,
            "sku": "MUG",
            "location_id": "store-001",
            "on_hand": 2,
        },
        {
            "event_type": "stock_snapshot",
            "event_id": "n2",
            "event_time": at,
            "sku": "TEAPOT",
            "location_id": "store-001",
            "on_hand": 40,
        },
        {
            "event_type": "price_update",
            "event_id": "p1",
            "event_time": at,
            "sku": "MUG",
            "channel": "web",
            "price_minor": 500,
            "currency": "GBP",
        },
        {
            "event_type": "price_update",
            "event_id": "p2",
            "event_time": at,
            "sku": "MUG",
            "channel": "store",
            "price_minor": 650,
            "currency": "GBP",
        },
    ]
    produce(settings, events_from_jsonl(orjson.dumps(e) for e in events))
    pipeline.run(settings, pipeline.plan(settings).starts, until_eof=True, serve_metrics=False)
    env = env_for(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omnicanal", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = cli("alerts", "--json")
    assert res.returncode == 0, res.stderr
    got = {(a["sku"], a["type"], a.get("reason")) for a in json.loads(res.stdout)}
    # MUG: 2 in the store (low), listed online with no online stock (out of stock and low
    # there), 30% dearer in the store than on the web.
    assert got == {
        ("MUG", "low_stock", None),
        ("MUG", "out_of_stock", None),
        ("MUG", "channel_inconsistency", "price_mismatch"),
    }
    res = cli("alerts", "--type", "out_of_stock", "--json")
    assert [(a["sku"], a["channel"]) for a in json.loads(res.stdout)] == [("MUG", "online")]
    res = cli("alerts", "--sku", "TEAPOT", "--json")
    assert json.loads(res.stdout) == []
    res = cli("alerts")  # not a terminal: tab-separated, a header and one line per alert
    lines = [ln.split("\t") for ln in res.stdout.splitlines()]
    assert res.returncode == 0 and lines[0][:3] == ["severity", "type", "sku"]
    assert len(lines) == 5 and lines[1][:2] == ["critical", "out_of_stock"]
    assert "price_mismatch: store 650, web 500" in res.stdout
    assert "4 open alert(s) shown of 4" in res.stderr
    assert cli("alerts", "--type", "nonsense").returncode == 2

    res = cli("stock", "MUG", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["locations"]["store-001"]["level"] == 2
    assert doc["available"] == {"loc:store-001": 2, "ch:online": 0}
    assert doc["prices"]["store"]["minor"] == 650 and len(doc["open_alerts"]) == 4
    missing = cli("stock", "NOPE")
    assert missing.returncode == 1 and "no stock known" in missing.stderr


def test_evaluate_stockouts_json() -> None:
    res = runner.invoke(app, ["evaluate", "stockouts", "--pairs", "5", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["pairs"] == 5 and doc["horizon_hours"] == 72
    for name in ("seasonal", "flat"):
        assert doc[name]["caught"] <= doc[name]["stockouts"]


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        ('{"tv":{"EUR":100}}', "unknown sales channel 'tv'"),
        ('{"web":{"euro":100}}', "'euro' is not an ISO 4217 code"),
        ('{"web":{"EUR":0}}', "web EUR: the target must be above 0"),
        ('{"web":{"EUR":"lots"}}', "sales_targets"),
    ],
)
def test_sales_targets_are_checked_with_a_clear_error(
    targets: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnicanal.config import ConfigError, load

    monkeypatch.setenv("OMNICANAL_SALES_TARGETS", targets)
    with pytest.raises(ConfigError, match="sales_targets") as e:
        load()
    assert says in str(e.value)


def test_sales_targets_reach_their_gauge() -> None:
    from monitoring import metrics as m
    from omnicanal.config import load

    s = load(sales_targets={"web": {"EUR": 1_500_000}, "store": {"EUR": 4_200_000}})
    m.serve(0, targets=s.sales_targets)
    assert m.SALES_TARGET.labels("store", "EUR")._value.get() == 4_200_000


def test_store_regions_are_checked_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from omnicanal.config import ConfigError, load

    monkeypatch.setenv("OMNICANAL_STORE_REGIONS", '{"S1": "north west!"}')
    with pytest.raises(ConfigError, match="store 'S1': region 'north west!' must be"):
        load()
    monkeypatch.setenv("OMNICANAL_STORE_REGIONS", '{"S1": "north-west", "S2": "south"}')
    assert load().store_regions == {"S1": "north-west", "S2": "south"}
