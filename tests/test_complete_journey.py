"""The Dunnhumby Complete Journey replay: valid events whose amounts are what was paid."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from omnicanal.config import Settings
from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.envelope import Accepted
from schemas.events import line_amount

cj = pytest.importorskip("omnicanal.tools.complete_journey")


def test_baskets_become_valid_sales_with_the_paid_amounts() -> None:
    report: Counter[str] = Counter()
    events = list(cj.read_events(500, report))
    t = cj.load_transactions(500)
    assert report["lines"] == len(t)
    assert report["baskets"] + report["baskets_without_sale_lines"] == t["basket_id"].nunique()
    assert report["baskets"] == len(events)
    s = Settings()
    v = Validator(s.topic_contracts(), PiiHasher(b"k" * 16))
    paid = t[t["quantity"] > 0].groupby("basket_id")["sales_value"].sum()
    for e in events:
        a = v.decode(s.topic_transactions, 0, 0, None, orjson.dumps(e), 2e12)
        assert isinstance(a, Accepted), (e, a)
        assert a.customer == f"loyalty:{e['customer']['loyalty_id']}"
        total = sum(line_amount(line) for line in a.event.lines)
        basket = int(e["order_id"])
        assert total == sum(
            round(x * 100)
            for x in t[(t["basket_id"] == basket) & (t["quantity"] > 0)]["sales_value"]
        )
        assert abs(total - round(paid[basket] * 100)) <= len(a.event.lines)
