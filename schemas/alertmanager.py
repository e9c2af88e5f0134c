"""The Alertmanager webhook payload (version 4) that ``omnicanal webhook`` receives: an
input contract omnicanal does not own, so unknown fields are allowed (Alertmanager adds
some between versions) and only what omnicanal reads is required.

>>> import msgspec
>>> w = msgspec.json.decode(b'{"version":"4","status":"firing","receiver":"omnicanal",'
...     b'"groupKey":"g","alerts":[{"status":"firing","labels":{"alertname":"A",'
...     b'"channel":"web"},"startsAt":"2026-12-02T10:00:00Z"}]}', type=AlertmanagerWebhook)
>>> w.alerts[0].labels["channel"], w.alerts[0].status
('web', 'firing')
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct, field


class AlertmanagerAlert(Struct, kw_only=True):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    startsAt: str = ""
    endsAt: str = ""
    fingerprint: str = ""


class AlertmanagerWebhook(Struct, kw_only=True):
    version: str
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[AlertmanagerAlert]
