"""JSON Schema files for channel teams, generated from the contracts (never by hand).

>>> docs = schemas()
>>> " ".join(sorted(docs))
'clickstream customer dead_letter inventory offer_feedback stock_alert transaction'
>>> docs["transaction"]["$defs"]["Sale"]["properties"]["event_type"]["enum"]
['sale']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.alerts import StockAlert
from schemas.deadletter import DeadLetter
from schemas.events import CONTRACTS, SCHEMA_VERSION

JSON_DIR = Path(__file__).with_name("json")


def schemas() -> dict[str, dict[str, Any]]:
    """Contract name -> JSON Schema document."""
    out: dict[str, dict[str, Any]] = {}
    for name, c in CONTRACTS.items():
        doc = msgspec.json.schema(c.union)
        doc = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://omnicanal.dev/schemas/{name}.v{SCHEMA_VERSION}.schema.json",
            "title": f"omnicanal {name} event, version {SCHEMA_VERSION}",
            "description": f"Events on the {c.default_topic} topic. Money in integer minor "
            "units; times RFC 3339 with offset; optional fields absent (never null); "
            "unknown fields rejected.",
            **doc,
        }
        out[name] = doc
    dl = msgspec.json.schema(DeadLetter)
    out["dead_letter"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://omnicanal.dev/schemas/dead_letter.v{SCHEMA_VERSION}.schema.json",
        "title": "omnicanal dead-letter record",
        **dl,
    }
    sa = msgspec.json.schema(StockAlert)
    out["stock_alert"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://omnicanal.dev/schemas/stock_alert.v{SCHEMA_VERSION}.schema.json",
        "title": "omnicanal stock alert message",
        "description": "Messages on the stock-alerts topic, keyed by SKU. Deduplicate on "
        "message_id; follow one alert's lifecycle by alert_id.",
        **sa,
    }
    return out


def filename(name: str) -> str:
    return f"{name}.v{SCHEMA_VERSION}.schema.json"


def render(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in schemas().items():
        p = directory / filename(name)
        p.write_bytes(render(doc))
        paths.append(p)
    return paths
