"""JSON Schema files for channel teams, generated from the contracts (never by hand).

A published schema changes only when a contract does: every ``description`` is written here
from the class docstring (dedented with :func:`inspect.cleandoc`) or the field's ``Meta``, never
left to how a msgspec release renders docstrings.

>>> docs = schemas()
>>> sorted(docs)  # doctest: +NORMALIZE_WHITESPACE
['campaign_catalogue', 'channel_health', 'clickstream', 'customer', 'dead_letter',
 'inventory', 'offer', 'offer_feedback', 'stock_alert', 'transaction']
>>> docs["transaction"]["$defs"]["Sale"]["properties"]["event_type"]["enum"]
['sale']
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.alerts import StockAlert
from schemas.campaigns import CampaignCatalogue
from schemas.deadletter import DeadLetter
from schemas.events import CONTRACTS, SCHEMA_VERSION
from schemas.health import ChannelHealthMessage
from schemas.offers import Offer

JSON_DIR = Path(__file__).with_name("json")


def _structs(tp: object) -> dict[str, type]:
    """Every Struct class reachable from ``tp``, by the name its ``$defs`` entry gets."""
    found: dict[str, type] = {}

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls.__name__ in found:
                return
            found[info.cls.__name__] = info.cls
            for f in info.fields:
                walk(f.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for t in info.types:
                walk(t)
        elif isinstance(info, msgspec.inspect.Metadata):
            walk(info.type)
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.SetType):
            walk(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            walk(info.value_type)

    walk(msgspec.inspect.type_info(tp))
    return found


def _clean(node: Any) -> None:
    r"""Dedent every description in place (field descriptions come from ``Meta``).

    >>> doc = {"a": [{"description": "First line.\n\n    Indented in the source."}]}
    >>> _clean(doc)
    >>> doc["a"][0]["description"]
    'First line.\n\nIndented in the source.'
    """
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                node[k] = inspect.cleandoc(v)
            else:
                _clean(v)
    elif isinstance(node, list):
        for v in node:
            _clean(v)


def schema_of(tp: object) -> dict[str, Any]:
    """msgspec's JSON Schema of ``tp`` with descriptions that do not depend on msgspec.

    >>> schema_of(DeadLetter)["$defs"]["DeadLetter"]["description"]
    'One dead-lettered input. Keyed on the Kafka topic by ``topic:partition:offset``.'
    """
    doc = msgspec.json.schema(tp)
    _clean(doc)
    for name, cls in _structs(tp).items():
        entry = doc.get("$defs", {}).get(name)
        if entry is None:
            continue
        if cls.__doc__:
            entry["description"] = inspect.cleandoc(cls.__doc__)
        else:
            entry.pop("description", None)
    return doc


def schemas() -> dict[str, dict[str, Any]]:
    """Contract name -> JSON Schema document."""
    out: dict[str, dict[str, Any]] = {}
    for name, c in CONTRACTS.items():
        doc = schema_of(c.union)
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
    out["dead_letter"] = _document("dead_letter", DeadLetter, "omnicanal dead-letter record")
    out["stock_alert"] = _document(
        "stock_alert",
        StockAlert,
        "omnicanal stock alert message",
        "Messages on the stock-alerts topic, keyed by SKU. Deduplicate on message_id; follow "
        "one alert's lifecycle by alert_id.",
    )
    out["channel_health"] = _document(
        "channel_health",
        ChannelHealthMessage,
        "omnicanal channel-health message",
        "Messages on the channel-health topic, keyed by the channel or store key. Deduplicate "
        "on message_id.",
    )
    out["offer"] = _document(
        "offer",
        Offer,
        "omnicanal offer message",
        "Offers for channels to deliver. Deduplicate on offer_id; the coupon is redeemable "
        "once, in every sales channel, until expires_on.",
    )
    out["campaign_catalogue"] = _document(
        "campaign_catalogue",
        CampaignCatalogue,
        "omnicanal campaign catalogue (OMNICANAL_CAMPAIGNS_FILE, YAML or JSON)",
    )
    return out


def _document(name: str, tp: object, title: str, description: str | None = None) -> dict[str, Any]:
    """The published document of one output or configuration contract."""
    head: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://omnicanal.dev/schemas/{filename(name)}",
        "title": title,
    }
    if description is not None:
        head["description"] = description
    return {**head, **schema_of(tp)}


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
