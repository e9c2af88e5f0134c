"""What omnicanal does with the alerts Alertmanager sends it (``omnicanal webhook``): pure
logic, no I/O.

A firing ``OmnicanalChannelSalesStopped`` (Prometheus saw a channel's sales stop) marks the
channel down for offers, exactly as the in-stream detector's collapse does: offers for it
are rerouted or held. Its resolution marks it up again. A firing alert is held for
:data:`DOWN_HOLD_MS` after its last notification: Alertmanager repeats a firing critical
alert every hour (``docker/alertmanager.yml``), so a lost resolution never keeps a channel
down for good. Other alerts are counted and logged only.

>>> from schemas.alertmanager import AlertmanagerAlert as A, AlertmanagerWebhook as W
>>> stopped = "OmnicanalChannelSalesStopped"
>>> w = W(version="4", status="firing", alerts=[
...     A(status="firing", labels={"alertname": stopped, "channel": "web"}),
...     A(status="resolved", labels={"alertname": stopped, "channel": "app"}),
...     A(status="firing", labels={"alertname": stopped, "channel": "tv"}),
...     A(status="firing", labels={"alertname": "OmnicanalDeadLetterRate", "topic": "t"})])
>>> a = actions(w)
>>> sorted(a.down), sorted(a.up), a.ignored
(['web'], ['app'], ['OmnicanalChannelSalesStopped: unknown channel tv'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, get_args

from schemas.alertmanager import AlertmanagerWebhook
from schemas.events import SalesChannel

#: alerts that mean a whole sales channel stopped (their ``channel`` label says which)
CHANNEL_DOWN_ALERTS: Final = frozenset({"OmnicanalChannelSalesStopped"})
#: how long a firing notification keeps a channel down without a new one (2 h: the
#: critical route repeats every hour)
DOWN_HOLD_MS: Final = 2 * 3_600_000
_CHANNELS: Final = frozenset(get_args(SalesChannel))


@dataclass
class Actions:
    #: sales channels to mark down (firing) and up (resolved)
    down: set[str] = field(default_factory=set)
    up: set[str] = field(default_factory=set)
    #: (alertname, status) of every alert, for the counter
    seen: list[tuple[str, str]] = field(default_factory=list)
    #: alerts that should have acted and could not, with why (logged)
    ignored: list[str] = field(default_factory=list)


def actions(payload: AlertmanagerWebhook) -> Actions:
    """The channels a notification marks down or up. A channel both firing and resolved in
    one notification (two rules, one still firing) stays down."""
    out = Actions()
    for alert in payload.alerts:
        name = alert.labels.get("alertname", "")
        out.seen.append((name, alert.status))
        if name not in CHANNEL_DOWN_ALERTS:
            continue
        channel = alert.labels.get("channel", "")
        if channel not in _CHANNELS:
            out.ignored.append(f"{name}: unknown channel {channel[:64] or '(none)'}")  # (logged)
            continue
        (out.down if alert.status == "firing" else out.up).add(channel)
    out.up -= out.down
    return out
