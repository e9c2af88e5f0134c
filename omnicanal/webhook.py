"""``omnicanal webhook``: the receiver Alertmanager's webhooks reach (``POST
/alertmanager``), so that Prometheus alerts act on the pipeline, not only on people.

A firing ``OmnicanalChannelSalesStopped`` marks its channel down in Redis, where the
offers stage's contingency reads it (``operators/ops_alerts.py`` decides; ``flows/health.py``
reads): offers for the channel are rerouted or held until the alert resolves. Every alert
is counted in ``omnicanal_webhook_alerts_total{alertname,status}`` and logged. The same
port serves ``/metrics`` and ``/healthz``.

Answers: 200 with what was done; 401 without the bearer token ``OMNICANAL_WEBHOOK_TOKEN``
(when one is set); 400 for a body that is not an Alertmanager webhook (the reason says
why); 413 past 1 MiB; 503 while Redis cannot be written (Alertmanager sends the
notification again).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import msgspec
import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from monitoring import metrics as m
from operators.ops_alerts import DOWN_HOLD_MS, actions
from schemas.alertmanager import AlertmanagerWebhook
from state.connection import StateError, redact_url
from state.health import HealthStore

log = logging.getLogger(__name__)
#: bytes a notification may have (Alertmanager's are a few KB per alert)
MAX_BODY: Final = 1 << 20
PATH: Final = "/alertmanager"


def _label(name: str) -> str:
    """An alertname for the counter's label: omnicanal's own names, every other "other"."""
    ok = name.startswith("Omnicanal") and len(name) <= 64 and name.isalnum()
    return name if ok else "other"


class WebhookReceiver:
    """What a notification does: pure of HTTP, so tests call it directly too."""

    def __init__(self, store: HealthStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = msgspec.json.decode(body, type=AlertmanagerWebhook)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            m.WEBHOOK_REQUESTS.labels("invalid").inc()
            return 400, {"error": f"step 'webhook': not an Alertmanager webhook: {e}"}
        a = actions(payload)
        until = int(self._clock() * 1000) + DOWN_HOLD_MS
        try:
            self.store.mark(sorted(a.down), sorted(a.up), until)
        except (StateError, redis.RedisError) as e:
            m.WEBHOOK_REQUESTS.labels("unavailable").inc()
            log.error("step 'webhook': Redis cannot be written (%s); Alertmanager retries", e)
            return 503, {"error": f"step 'webhook': Redis unavailable: {e}"}
        for name, status in a.seen:
            m.WEBHOOK_ALERTS.labels(_label(name), status).inc()
            log.info("webhook: %s %s", name, status)
        for why in a.ignored:
            log.warning("step 'webhook': %s: ignored", why)
        for channel in sorted(a.down):
            log.warning("webhook: sales channel %s marked down for offers", channel)
        m.WEBHOOK_REQUESTS.labels("ok").inc()
        return 200, {"down": sorted(a.down), "up": sorted(a.up), "ignored": a.ignored}


def server(receiver: WebhookReceiver, addr: str, port: int, token: str = "") -> ThreadingHTTPServer:
    """The HTTP server (not started: call ``serve_forever``). With a ``token``, a POST
    must carry ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode() if token else b""

    class Handler(BaseHTTPRequestHandler):
        server_version = "omnicanal-webhook"

        def _answer(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._answer(200, b"ok\n", "text/plain")
            else:
                self._answer(404, orjson.dumps({"error": f"no {self.path}: POST {PATH}"}))

        def do_POST(self) -> None:
            if self.path != PATH:
                self._answer(404, orjson.dumps({"error": f"no {self.path}: POST {PATH}"}))
                return
            given = self.headers.get("Authorization", "").encode()
            if expected and not hmac.compare_digest(given, expected):
                m.WEBHOOK_REQUESTS.labels("unauthorized").inc()
                self._answer(401, orjson.dumps({"error": "a bearer token is required"}))
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, orjson.dumps({"error": "Content-Length is required"}))
                return
            if length > MAX_BODY:
                m.WEBHOOK_REQUESTS.labels("too_large").inc()
                self._answer(413, orjson.dumps({"error": f"over {MAX_BODY} bytes"}))
                return
            code, answer = receiver.handle(self.rfile.read(length))
            self._answer(code, orjson.dumps(answer))

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("webhook: " + format, *args)

    return ThreadingHTTPServer((addr, port), Handler)


def describe(url: str, addr: str, port: int) -> str:
    return (
        f"omnicanal webhook: POST http://{addr}:{port}{PATH} (Alertmanager), GET /metrics; "
        f"Redis {redact_url(url)}"
    )
