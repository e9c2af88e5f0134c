"""The campaign catalogue: validated with the place of every mistake, reloaded while
running without ever losing the last good one, and checkable from the command line; and the
coupon commands a till or an operator uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from omnicanal.campaigns import CatalogueError, CatalogueWatcher, load_catalogue, parse_catalogue
from operators.coupons import CouponCodec, day_of
from schemas.export import JSON_DIR, filename

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "campaigns.example.yaml"
GOOD = {
    "id": "c1",
    "trigger": "cart_abandonment",
    "benefit": {"kind": "percent_off", "value": 10},
    "reason": "You left {items} items",
    "channels": ["email"],
    "valid_days": 7,
}


def _cat(*campaigns: dict[str, object]) -> str:
    return json.dumps({"version": 1, "campaigns": list(campaigns)})


def test_the_example_catalogue_loads_and_matches_the_published_schema() -> None:
    cat = load_catalogue(EXAMPLE)
    assert [c.trigger for c in cat.campaigns] == [
        "cart_abandonment", "browse_abandonment", "cross_sell", "win_back", "channel_expansion"
    ]  # fmt: skip
    schema = json.loads((JSON_DIR / filename("campaign_catalogue")).read_text())
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(_cat(GOOD | {"trigger": "birthday"})), schema)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trigger": "birthday"}, "Invalid enum value 'birthday' - at `$.campaigns[0].trigger`"),
        ({"valid_day": 7}, "unknown field `valid_day` - at `$.campaigns[0]`"),
        ({"valid_days": "7"}, "Expected `int`, got `str` - at `$.campaigns[0].valid_days`"),
        ({"benefit": {"kind": "percent_off", "value": 95}}, "must be 1-90"),
        ({"benefit": {"kind": "amount_off", "value": 500}}, "amount_off needs"),
        ({"reason": "Hi {name}"}, "reason mentions {name}"),
        ({"starts_at": "2026-02-01T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"}, "not after"),
        ({"starts_at": "2026-02-01T00:00:00"}, "needs a UTC offset"),
        ({"channels": []}, "Expected `array` of length >= 1 - at `$.campaigns[0].channels`"),
        ({"too_late_hours": 0}, "Expected `int` >= 1 - at `$.campaigns[0].too_late_hours`"),
    ],
)
def test_every_mistake_is_named_with_its_place(change: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError) as e:
        parse_catalogue(_cat(GOOD | change), "cat.yaml")
    assert str(e.value).startswith("cat.yaml: ") and message in str(e.value)


def test_duplicate_ids_and_broken_yaml_are_refused() -> None:
    with pytest.raises(CatalogueError, match=r"campaigns\[1\] \(c1\): the id is used twice"):
        parse_catalogue(_cat(GOOD, GOOD))
    with pytest.raises(CatalogueError, match="not valid YAML"):
        parse_catalogue("version: 1\ncampaigns: [\n")


def test_a_bad_edit_keeps_the_last_good_catalogue_and_a_good_one_is_picked_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(_cat(GOOD))
    w = CatalogueWatcher(path, every=0.0)
    assert [c.id for c in w.current(0.0).campaigns] == ["c1"]
    path.write_text(_cat(GOOD | {"trigger": "oops"}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert [c.id for c in w.current(1.0).campaigns] == ["c1"]  # still the last good one
    assert w.last_error is not None and "oops" in w.last_error
    path.write_text(_cat(GOOD, GOOD | {"id": "c2"}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert [c.id for c in w.current(2.0).campaigns] == ["c1", "c2"]
    assert w.last_error is None
    path.unlink()
    assert [c.id for c in w.current(3.0).campaigns] == ["c1", "c2"]
    with pytest.raises(CatalogueError, match="cannot read"):
        CatalogueWatcher(path)  # at start, a missing catalogue stops the run


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OMNICANAL_")} | env
    return subprocess.run(
        [sys.executable, "-m", "omnicanal", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def test_campaigns_check_from_the_command_line(tmp_path: Path) -> None:
    ok = _cli("campaigns", "check", str(EXAMPLE))
    assert ok.returncode == 0 and "5 campaign(s)" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(_cat(GOOD | {"benefit": {"kind": "discount"}}))
    res = _cli("campaigns", "check", str(bad))
    assert res.returncode == 2 and "$.campaigns[0].benefit.kind" in res.stderr
    via_env = _cli("campaigns", "check", "--json", OMNICANAL_CAMPAIGNS_FILE=str(EXAMPLE))
    assert via_env.returncode == 0 and json.loads(via_env.stdout)["campaigns"][0]["id"] == "cart-10"


def test_coupons_verify_checks_a_code_as_a_till_does() -> None:
    key = "till-key-0123456789abcdef"
    today = day_of(int(time.time() * 1000))
    code = CouponCodec(key.encode()).issue("offer-9", today + 3)
    ok = _cli("coupons", "verify", code.lower(), "--json", OMNICANAL_COUPON_KEY=key)
    assert ok.returncode == 0 and json.loads(ok.stdout)["code"] == code
    typo = code[:3] + ("X" if code[3] != "X" else "Y") + code[4:]
    bad = _cli("coupons", "verify", typo, OMNICANAL_COUPON_KEY=key)
    assert bad.returncode == 1 and "mistyped" in bad.stdout
    other = _cli("coupons", "verify", code, OMNICANAL_COUPON_KEY="another-key-0123456789")
    assert other.returncode == 1 and "bad_signature" in other.stdout
    nokey = _cli("coupons", "verify", code)
    assert nokey.returncode == 2 and "OMNICANAL_COUPON_KEY" in nokey.stderr
