"""Upstream duplicates: the same ``event_id`` sent twice (a till retrying after a timeout, a
producer's at-least-once retry, a file replayed by hand) must count once.

Offsets make replays of the *same* message harmless; this catches the same event in two
messages. Each event is reduced to a 63-bit hash of its contract and ``event_id`` and its
event day; the batch script (``state/lua/apply_batch.lua``) checks the hashes against the
sets of their day before writing anything and adds them with the batch. The sets expire
after the dedupe window, so Redis holds about 8 bytes per event of the window.

The first copy wins: a second copy is dropped and counted
(``omnicanal_duplicate_events_total``) even if its content differs.

>>> a = event_key("transaction", "txn-1", 1_714_557_600_000)
>>> a == event_key("transaction", "txn-1", 1_714_557_600_000), a[0]
(True, 19844)
>>> a[1] == event_key("clickstream", "txn-1", 1_714_557_600_000)[1]
False
>>> 0 <= a[1] < 2**63
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

DAY_MS: Final = 86_400_000
#: Default window: a copy arriving up to 7 days after the first is still recognised.
DEFAULT_WINDOW_HOURS: Final = 7 * 24


def event_key(contract: str, event_id: str, ts_ms: int) -> tuple[int, int]:
    """(event day, 63-bit hash of contract and event id): where a copy would be found."""
    digest = hashlib.blake2b(
        f"{contract}\x00{event_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return ts_ms // DAY_MS, int.from_bytes(digest, "big") >> 1


def first_copies(keys: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Indexes of the first copy of each event in a batch, and of the later copies.

    >>> first_copies([(1, 5), (1, 6), (1, 5)])
    ([0, 1], [2])
    """
    seen: set[tuple[int, int]] = set()
    first, later = [], []
    for i, k in enumerate(keys):
        if k in seen:
            later.append(i)
        else:
            seen.add(k)
            first.append(i)
    return first, later
