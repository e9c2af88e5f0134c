"""Import the UCI "Online Retail" data sets (original and "II" layouts) as omnicanal events.

Data: Daqing Chen, Sai Liang Sain, Kun Guo (2012), UCI Machine Learning Repository,
CC BY 4.0. A UK online gift retailer; every row is one invoice line.

Mapping, explicit for every kind of row (counted in :class:`ImportReport`):

- consecutive rows with the same invoice become one ``sale`` on the ``web`` channel;
  invoices starting with ``C`` (cancellations) become a ``return`` with positive quantities;
- ``CustomerID`` becomes the ``account_id``; rows without one are anonymous purchases;
- non-product codes become typed lines: POST/DOT/C2 shipping, D discount (an adjustment
  credited back inside a cancellation), M manual adjustment, S sample, AMAZONFEE/BANK
  CHARGES/CRUK fee, gift_* voucher, B bad-debt adjustment;
- rows with no customer and a price of 0 or less, outside cancellations, are stock
  corrections by the warehouse (damages, finds, "?"): they become ``stock_adjustment``
  events at ``location_id`` "uci-warehouse";
- prices are converted to integer pence (half-up); a negative price that is not a stock
  correction cannot be represented and is skipped and counted as ``negative_price``.

>>> import io
>>> csv_text = '''InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
... 536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
... 536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.00,17850.0,United Kingdom
... C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527.0,United Kingdom
... 536414,22139,,56,2010-12-01 11:52:00,0.00,,United Kingdom
... '''
>>> report = ImportReport()
>>> events = list(read_events(io.StringIO(csv_text), report))
>>> [(e["event_type"], len(e.get("lines", []))) for e in events]
[('sale', 2), ('return', 1), ('stock_adjustment', 0)]
>>> events[0]["lines"][1]["kind"], events[0]["lines"][0]["unit_price_minor"]
('shipping', 255)
>>> report.lines_by_kind["shipping"], report.stock_adjustments
(1, 1)
>>> dict(report.invoices)
{'sale': 1, 'return': 1, 'stock_adjustments': 1}
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import orjson

from schemas.events import TransactionLine, line_amount

SPECIAL_CODES = {
    "POST": "shipping",
    "DOT": "shipping",
    "C2": "shipping",
    "D": "discount",
    "M": "adjustment",
    "m": "adjustment",
    "S": "sample",
    "AMAZONFEE": "fee",
    "BANK CHARGES": "fee",
    "CRUK": "fee",
    "B": "adjustment",
}

LAYOUTS = {
    "original": (
        "InvoiceNo",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "UnitPrice",
        "CustomerID",
        "Country",
    ),
    "II": (
        "Invoice",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "Price",
        "Customer ID",
        "Country",
    ),
}


class ImportError_(ValueError):
    """The file is not an Online Retail export; the message says what is missing."""


#: The transaction contract's limit on lines per event.
MAX_LINES = 1000


@dataclass
class ImportReport:
    """What became of every row and every invoice of the file."""

    rows: int = 0
    sales: int = 0
    returns: int = 0
    anonymous_sales: int = 0
    stock_adjustments: int = 0
    lines_by_kind: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    #: invoice numbers -> outcome: "sale", "return", "stock_adjustments" (warehouse rows
    #: only), or why nothing was emitted: "no_lines", "negative_total", "too_large"
    invoices: Counter[str] = field(default_factory=Counter)
    #: the invoices not imported because the event would break a pipeline limit
    too_large: list[str] = field(default_factory=list)
    largest_lines: int = 0
    largest_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sales": self.sales,
            "returns": self.returns,
            "anonymous_sales": self.anonymous_sales,
            "stock_adjustments": self.stock_adjustments,
            "lines_by_kind": dict(self.lines_by_kind),
            "skipped": dict(self.skipped),
            "invoices": dict(self.invoices),
            "invoices_too_large": self.too_large[:50],
            "largest_invoice": {"lines": self.largest_lines, "bytes": self.largest_bytes},
        }


def _kind(code: str) -> str:
    if code in SPECIAL_CODES:
        return SPECIAL_CODES[code]
    if code.lower().startswith("gift_"):
        return "voucher"
    return "product"


def _pence(price: str) -> int:
    return int((Decimal(price) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _parse_time(text: str, tz: ZoneInfo) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=tz)
        except ValueError:
            continue
    raise ValueError(f"unrecognised InvoiceDate {text!r}")


def detect_layout(header: list[str]) -> dict[str, str]:
    """Map our names to the file's column names, for either UCI layout."""
    cols = [h.strip() for h in header]
    for name, layout in LAYOUTS.items():
        if all(c in cols for c in layout):
            return dict(zip(LAYOUTS["original"], layout, strict=True)) | {"_layout": name}
    raise ImportError_(
        f"not an Online Retail file: header {cols} lacks the columns of either layout "
        f"({', '.join(LAYOUTS['original'])}) or ({', '.join(LAYOUTS['II'])})"
    )


def read_events(
    f: TextIO,
    report: ImportReport,
    *,
    timezone: str = "Europe/London",
    currency: str = "GBP",
    max_bytes: int = 256 * 1024,
) -> Iterator[dict[str, Any]]:
    """Yield events (dicts following the contracts) from an Online Retail CSV.

    An invoice whose event would exceed ``max_bytes`` (the pipeline's
    OMNICANAL_MAX_EVENT_BYTES) or the contract's 1,000 lines is not emitted (the pipeline
    would dead-letter it) and is listed in the report; with the defaults, every invoice of
    the real data set goes through (the largest has 749 lines, 72 KB)."""
    try:
        tz = ZoneInfo(timezone)
    except ZoneInfoNotFoundError:
        raise ImportError_(f"unknown timezone {timezone!r}") from None
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_("empty file") from None
    col = detect_layout(header)
    idx = {
        ours: [h.strip() for h in header].index(theirs)
        for ours, theirs in col.items()
        if ours != "_layout"
    }

    current: str | None = None
    group: list[list[str]] = []
    for row in reader:
        if not row:
            continue
        report.rows += 1
        inv = row[idx["InvoiceNo"]].strip()
        if inv != current and group:
            yield from _invoice(current or "", group, idx, tz, currency, report, max_bytes)
            group = []
        current = inv
        group.append(row)
    if group:
        yield from _invoice(current or "", group, idx, tz, currency, report, max_bytes)


def _invoice(
    invoice: str,
    rows: list[list[str]],
    idx: dict[str, int],
    tz: ZoneInfo,
    currency: str,
    report: ImportReport,
    max_bytes: int,
) -> Iterator[dict[str, Any]]:
    cancelled = invoice.upper().startswith("C")
    adjustments = report.stock_adjustments
    lines: list[dict[str, Any]] = []
    customer = ""
    when: datetime | None = None
    for n, row in enumerate(rows):
        code = row[idx["StockCode"]].strip()
        desc = " ".join(row[idx["Description"]].split())
        try:
            qty = int(float(row[idx["Quantity"]]))
            price = _pence(row[idx["UnitPrice"]])
            ts = _parse_time(row[idx["InvoiceDate"]], tz)
        except (ValueError, InvalidOperation):
            report.skipped["unparseable_row"] += 1
            continue
        cust = row[idx["CustomerID"]].strip()
        cust = cust[:-2] if cust.endswith(".0") else cust
        if not cust and price <= 0 and not cancelled:
            # Warehouse stock correction, not a customer transaction.
            if qty == 0:
                report.skipped["zero_quantity"] += 1
                continue
            report.stock_adjustments += 1
            yield {
                "event_type": "stock_adjustment",
                "event_id": f"uci-{invoice}-{n}",
                "event_time": ts.isoformat(),
                "sku": code,
                "location_id": "uci-warehouse",
                "delta": qty,
                "reason": "damage" if qty < 0 else "correction",
            }
            continue
        if price < 0:
            report.skipped["negative_price"] += 1
            continue
        if qty == 0:
            report.skipped["zero_quantity"] += 1
            continue
        kind = _kind(code)
        if cancelled and kind == "discount":
            kind = "adjustment"  # a discount credited back to the customer
        if (qty < 0) != cancelled:
            report.skipped["quantity_sign_mismatch"] += 1
            continue
        line: dict[str, Any] = {"sku": code[:64], "quantity": abs(qty), "unit_price_minor": price}
        if kind != "product":
            line["kind"] = kind
        if desc:
            line["description"] = desc[:512]
        lines.append(line)
        report.lines_by_kind[kind] += 1
        customer = customer or cust
        when = when or ts
    if not lines or when is None:
        report.invoices[
            "stock_adjustments" if report.stock_adjustments > adjustments else "no_lines"
        ] += 1
        return
    total = sum(line_amount(msgspec.convert(ln, TransactionLine)) for ln in lines)
    if total < 0:
        report.skipped["negative_total_invoice"] += 1
        report.invoices["negative_total"] += 1
        return
    ev: dict[str, Any] = {
        "event_type": "return" if cancelled else "sale",
        "event_id": f"uci-{invoice}",
        "event_time": when.isoformat(),
        "channel": "web",
        "order_id": invoice,
        "currency": currency,
        "lines": lines,
    }
    if customer:
        ev["customer"] = {"account_id": customer}
    size = len(orjson.dumps(ev))
    report.largest_lines = max(report.largest_lines, len(lines))
    report.largest_bytes = max(report.largest_bytes, size)
    if size > max_bytes or len(lines) > MAX_LINES:
        report.invoices["too_large"] += 1
        report.too_large.append(invoice)
        report.skipped["lines_of_too_large_invoices"] += len(lines)
        return
    if not customer and not cancelled:
        report.anonymous_sales += 1
    if cancelled:
        report.returns += 1
    else:
        report.sales += 1
    report.invoices["return" if cancelled else "sale"] += 1
    yield ev
