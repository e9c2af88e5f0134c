"""Loading the campaign catalogue (``OMNICANAL_CAMPAIGNS_FILE``, YAML or JSON) with errors
that name the place of every mistake, and reloading it while the pipeline runs.

A catalogue that fails to load at start stops the run with the cause; a bad edit while
running is logged and the last good catalogue stays in force, so a typo never stops offers.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path

import msgspec
import yaml

from omnicanal.config import ConfigError
from schemas.campaigns import Campaign, CampaignCatalogue

log = logging.getLogger(__name__)
#: What a campaign's ``reason`` may mention; the offer fills them in.
REASON_FIELDS = frozenset({"items", "category", "sku", "store"})


class CatalogueError(ConfigError):
    """The catalogue cannot be used; the message says where and why."""


def parse_catalogue(text: str, source: str = "catalogue") -> CampaignCatalogue:
    """Validate a catalogue's text (YAML, of which JSON is a subset).

    >>> parse_catalogue('{"version": 1, "campaigns": [{"id": "c1", "trigger": "win_back",'
    ...   ' "benefit": {"kind": "points", "value": 200}, "reason": "We miss you",'
    ...   ' "channels": ["email"], "valid_days": 14}]}').campaigns[0].id
    'c1'
    >>> try:
    ...     parse_catalogue("version: 1\\ncampaigns:\\n- id: c1\\n  trigger: win-back\\n")
    ... except CatalogueError as e:
    ...     print(e)
    catalogue: Invalid enum value 'win-back' - at `$.campaigns[0].trigger`
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogueError(f"{source}: not valid YAML or JSON: {e}") from None
    try:
        cat = msgspec.convert(data, CampaignCatalogue, strict=True)
    except msgspec.ValidationError as e:
        raise CatalogueError(f"{source}: {e}") from None
    seen: set[str] = set()
    for i, c in enumerate(cat.campaigns):
        where = f"{source}: campaigns[{i}] ({c.id})"
        if c.id in seen:
            raise CatalogueError(f"{where}: the id is used twice")
        seen.add(c.id)
        _check(c, where)
    return cat


def _check(c: Campaign, where: str) -> None:
    b = c.benefit
    if b.kind == "percent_off" and not 1 <= b.value <= 90:
        raise CatalogueError(f"{where}: benefit.value must be 1-90 (percent) for percent_off")
    if b.kind == "amount_off" and (b.value < 1 or not isinstance(b.currency, str)):
        raise CatalogueError(f"{where}: amount_off needs value >= 1 (minor units) and currency")
    if b.kind == "points" and b.value < 1:
        raise CatalogueError(f"{where}: points needs value >= 1")
    unknown = set(re.findall(r"{(\w*)}", c.reason)) - REASON_FIELDS
    try:
        c.reason.format(items=1, sku="", category="", store="")
    except (ValueError, IndexError, KeyError):
        if not unknown:
            raise CatalogueError(
                f"{where}: reason {c.reason!r} has a brace that opens no field "
                "(write {{ and }} for literal braces)"
            ) from None
    if unknown:
        raise CatalogueError(
            f"{where}: reason mentions {{{', '.join(sorted(unknown))}}}; it may use "
            + ", ".join(f"{{{f}}}" for f in sorted(REASON_FIELDS))
        )
    times = {}
    for name in ("starts_at", "ends_at"):
        value = getattr(c, name)
        if isinstance(value, str):
            try:
                t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise CatalogueError(f"{where}: {name} {value!r} is not an RFC 3339 time") from None
            if t.tzinfo is None:
                raise CatalogueError(f"{where}: {name} {value!r} needs a UTC offset")
            times[name] = t
    if len(times) == 2 and times["ends_at"] <= times["starts_at"]:
        raise CatalogueError(f"{where}: ends_at is not after starts_at")


def load_catalogue(path: Path) -> CampaignCatalogue:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogueError(f"{path}: cannot read the campaign catalogue: {e}") from None
    return parse_catalogue(text, str(path))


class CatalogueWatcher:
    """The catalogue in force: reloaded when the file changes (checked at most every
    ``every`` seconds); a file that no longer loads keeps the last good catalogue."""

    def __init__(self, path: Path, every: float = 5.0) -> None:
        self.path = path
        self.every = every
        self.catalogue = load_catalogue(path)  # at start, an error stops the run
        self._stamp = self._stat()
        self._next = 0.0
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self, now: float) -> CampaignCatalogue:
        """The catalogue to use at monotonic time ``now``."""
        if now >= self._next:
            self._next = now + self.every
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.catalogue = load_catalogue(self.path)
                    self.last_error = None
                    log.info(
                        "campaign catalogue reloaded: %d campaign(s)", len(self.catalogue.campaigns)
                    )
                except CatalogueError as e:
                    self.last_error = str(e)
                    log.error("campaign catalogue not reloaded, the last good one stays: %s", e)
        return self.catalogue
