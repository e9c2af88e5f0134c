"""``omnicanal webhook`` reached by a real Alertmanager (Debian package
``prometheus-alertmanager``, installed by the quick start) routing with the repository's
``docker/alertmanager.yml``: a channel whose sales stopped is marked down for offers while
the alert fires, and up again when it resolves; bad notifications are refused with a
reason."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from flows import pipeline
from flows.kafka import CheckedProducer
from omnicanal.config import Settings
from omnicanal.runner import free_port
from omnicanal.wiring import pipeline_setup
from state.health import HealthStore
from state.profiles import ProfileStore, connect
from tests.test_run_command import env_for, wait_for

pytestmark = pytest.mark.services
AM_CONFIG = Path(__file__).resolve().parents[1] / "docker" / "alertmanager.yml"
STOPPED = "OmnicanalChannelSalesStopped"


def alertmanager_bin() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        pytest.fail(
            "Alertmanager is missing: ./quickstart test installs the Debian package "
            "prometheus-alertmanager"
        )
    return path


def request(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def webhook(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``omnicanal webhook`` as users start it, on a free port."""
    port = free_port()
    log = (tmp_path / "webhook.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnicanal", "webhook", "--port", str(port)],
        env=env_for(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url + "/healthz"), 30, "omnicanal webhook to listen")
        yield url
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, (tmp_path / "webhook.log").read_text()


def _up(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except OSError:
        return False


@pytest.fixture
def alertmanager(webhook: str, tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with the repository's routing; the omnicanal receiver points at
    the webhook, the people's receivers at a closed port; only the timings are shortened."""
    text = AM_CONFIG.read_text()
    text = text.replace("http://omnicanal-webhook:9470", webhook)
    for bridge in ("http://pager-bridge:8080", "http://chat-bridge:8080"):
        text = text.replace(bridge, "http://127.0.0.1:9")
    text = text.replace("group_interval: 1m", "group_interval: 1s")
    assert webhook in text and "group_interval: 1s" in text
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(text)
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [alertmanager_bin(), f"--config.file={cfg}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url + "/-/ready"), 30, "Alertmanager to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _alert(channel: str, ends: datetime | None = None) -> dict[str, object]:
    now = datetime.now(UTC)
    a: dict[str, object] = {
        "labels": {"alertname": STOPPED, "severity": "critical", "channel": channel},
        "annotations": {"summary": f"{channel} stopped selling"},
        "startsAt": (now - timedelta(minutes=15)).isoformat(),
    }
    if ends is not None:
        a["endsAt"] = ends.isoformat()
    return a


def test_a_firing_alert_marks_its_channel_down_for_offers_until_it_resolves(
    settings: Settings, alertmanager: str, webhook: str
) -> None:
    s = settings
    store = HealthStore(connect(s.redis_url), s.redis_prefix)
    now_ms = lambda: int(time.time() * 1000)  # noqa: E731
    post = f"{alertmanager}/api/v2/alerts"
    code, body = request(post, orjson.dumps([_alert("web")]))
    assert code == 200, body
    wait_for(lambda: store.external_down(now_ms()) == {"web"}, 30, "web marked down")

    # the pipeline's health stage reads it: offers avoid the web and what depends on it
    p = ProfileStore(connect(s.redis_url), s.redis_prefix)
    producer = CheckedProducer(s.kafka_config(), what="test webhook")
    stage = pipeline.health(pipeline_setup(s), p, producer)
    stage.due()
    assert "web" in stage.down() and "store" not in stage.down()

    # resolved: Alertmanager sends the resolution, the channel is up again
    ended = datetime.now(UTC) - timedelta(seconds=1)
    assert request(post, orjson.dumps([_alert("web", ended)]))[0] == 200
    wait_for(lambda: store.external_down(now_ms()) == frozenset(), 30, "web marked up")
    stage._external_at = float("-inf")  # the stage reads it at most every 15 s
    stage.due()
    assert "web" not in stage.down()
    stage.close()

    code, metrics = request(webhook + "/metrics")
    assert code == 200
    lines = metrics.decode().splitlines()
    for status in ("firing", "resolved"):
        sample = f'omnicanal_webhook_alerts_total{{alertname="{STOPPED}",status="{status}"}}'
        assert any(line.startswith(sample) for line in lines), status


def test_the_webhook_refuses_what_is_not_a_notification(settings: Settings, webhook: str) -> None:
    store = HealthStore(connect(settings.redis_url), settings.redis_prefix)
    code, body = request(webhook + "/alertmanager", b'{"alerts": "none"}')
    assert code == 400 and b"not an Alertmanager webhook" in body
    code, body = request(webhook + "/alertmanager", b"{" * 10_000)
    assert code == 400
    host, port = webhook.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/alertmanager")  # announces 2 MiB: refused before reading it
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    assert request(webhook + "/elsewhere", b"{}")[0] == 404
    # an unknown channel is ignored, the others act
    note = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": STOPPED, "channel": "teleshop"}},
        {"status": "firing", "labels": {"alertname": STOPPED, "channel": "app"}}]}  # fmt: skip
    code, body = request(webhook + "/alertmanager", orjson.dumps(note))
    assert code == 200
    answer = orjson.loads(body)
    assert answer["down"] == ["app"] and "teleshop" in answer["ignored"][0]
    assert store.external_down(int(time.time() * 1000)) == {"app"}
    # two hours without a new notification: no longer down
    assert store.external_down(int(time.time() * 1000) + 2 * 3_600_000 + 1000) == frozenset()


def test_a_notification_while_redis_is_down_is_refused_for_alertmanager_to_retry() -> None:
    from monitoring import metrics as m
    from omnicanal.webhook import WebhookReceiver

    before = m.counter_total(m.WEBHOOK_REQUESTS, outcome="unavailable")
    closed = HealthStore(connect(f"redis://127.0.0.1:{free_port()}/0", retries=0), "oc:")
    note = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": STOPPED, "channel": "web"}}]}  # fmt: skip
    code, answer = WebhookReceiver(closed).handle(orjson.dumps(note))
    assert code == 503 and "Redis unavailable" in answer["error"]
    assert m.counter_total(m.WEBHOOK_REQUESTS, outcome="unavailable") - before == 1


def test_with_a_token_set_only_notifications_carrying_it_act(settings: Settings) -> None:
    import threading

    from omnicanal.webhook import WebhookReceiver, server

    store = HealthStore(connect(settings.redis_url), settings.redis_prefix)
    httpd = server(WebhookReceiver(store), "127.0.0.1", 0, token="s3cret-token")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/alertmanager"
    note = orjson.dumps({"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": STOPPED, "channel": "web"}}]})  # fmt: skip
    try:
        assert request(url, note)[0] == 401
        req = urllib.request.Request(url, data=note, method="POST")
        req.add_header("Authorization", "Bearer wrong")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
        assert store.external_down(int(time.time() * 1000)) == frozenset()
        req = urllib.request.Request(url, data=note, method="POST")
        req.add_header("Authorization", "Bearer s3cret-token")
        with urllib.request.urlopen(req, timeout=10) as res:
            assert res.status == 200
        assert store.external_down(int(time.time() * 1000)) == {"web"}
    finally:
        httpd.shutdown()
        httpd.server_close()
