"""The offer decider process (``flows/decider.py``, ``OMNICANAL_OFFER_DECIDER``) on real
services: it decides while the workers run, exports its metrics on the port after the
workers', and its failure stops the run; the in-worker mode decides the same offer."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from omnicanal.config import Settings
from tests.conftest import port_pair
from tests.test_faults import cli, start
from tests.test_offers_stage import MINUTE, add, consent, offers_on_topic, offers_settings, send

pytestmark = pytest.mark.services


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _due_cart(s: Settings) -> None:
    t = (int(time.time() * 1000) // MINUTE - 120) * MINUTE  # a cart two hours old
    send(
        s, [("customer", consent(1, "ANA", t - MINUTE)), ("clickstream", add(1, "ANA", "LAMP", t))]
    )


def _decider(run: psutil.Process) -> psutil.Process | None:
    for child in run.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(child.cmdline())
            if "spawn_main" in cmd:
                return child
    return None


def test_the_decider_decides_while_the_workers_run_and_its_failure_stops_the_run(
    settings: Settings, tmp_path: Path
) -> None:
    port = port_pair()
    s = offers_settings(settings, tmp_path, metrics_port=port, offer_interval_ms=200)
    _due_cart(s)
    log = tmp_path / "run.log"
    proc = start(s, log)
    try:
        deadline = time.monotonic() + 90
        offers: list[object] = []
        decider_metrics = ""
        while time.monotonic() < deadline and not (offers and "ANA" not in decider_metrics):
            offers = offers_on_topic(s)
            decider_metrics = _scrape(port + 1)
            if offers and 'omnicanal_offers_total{campaign="cart-10",channel="email"} 1.0' in (
                decider_metrics
            ):
                break
            time.sleep(0.5)
        assert len(offers) == 1, log.read_text()[-3000:]
        # the decider counts the offer on its own port; the worker decides none
        assert 'omnicanal_offers_total{campaign="cart-10",channel="email"} 1.0' in decider_metrics
        assert 'omnicanal_offers_total{campaign="cart-10"' not in _scrape(port)
        decider = _decider(psutil.Process(proc.pid))
        assert decider is not None
        decider.send_signal(signal.SIGKILL)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert "the offer decider process omnicanal-offer-decider was killed by signal 9" in text, text[
        -3000:
    ]


@pytest.mark.parametrize("where", ["process", "worker"])
def test_both_deciders_send_the_due_offer_once(
    settings: Settings, tmp_path: Path, where: str
) -> None:
    s = offers_settings(settings, tmp_path, offer_decider=where)
    _due_cart(s)
    for _ in range(2):  # a second run over the same input sends nothing more
        res = cli(s, "run", "--until-eof")
        assert res.returncode == 0, res.stderr[-3000:]
    (offer,) = offers_on_topic(s)
    assert offer["campaign_id"] == "cart-10" and offer["channel"] == "email"


def test_the_workers_start_once_the_decider_is_ready_and_not_if_it_fails_to_start(
    settings: Settings, tmp_path: Path
) -> None:
    """The runner waits for the decider's "ready" (imports, Redis, models, producer)
    before starting the workers, so its CPU-heavy start does not slow their first batches;
    a decider that fails while starting is reported as such, and no worker starts."""
    from omnicanal.runner import DeciderProcess, WorkerFailedError

    s = offers_settings(settings, tmp_path)
    d = DeciderProcess(s, allow_demo_key=False, serve_metrics=False, index=1)
    try:
        assert d.wait_ready(120) is True
        assert d.proc.is_alive()
    finally:
        d.finish(grace=60)
    assert d.proc.exitcode == 0

    broken = s.model_copy(update={"campaigns_file": str(tmp_path / "missing.yaml")})
    d = DeciderProcess(broken, allow_demo_key=False, serve_metrics=False, index=1)
    with pytest.raises(WorkerFailedError) as err:
        d.wait_ready(120)
    assert d.proc.exitcode == 1
    assert str(err.value).startswith(
        "the offer decider process omnicanal-offer-decider exited with code 1 while starting; "
        "the workers were not started"
    )


def test_a_run_that_ends_serves_its_final_metrics_until_told_to_stop(
    settings: Settings, tmp_path: Path
) -> None:
    """``run --until-eof`` with ``OMNICANAL_METRICS_LINGER_SECONDS``: once the input is read
    and the due offer decided, the worker and the decider still serve their final counts
    (a run that ends by itself is otherwise gone before Prometheus's next scrape: the last
    offers, decided at its end, would never be seen); a stop request ends the wait."""
    port = port_pair()
    s = offers_settings(settings, tmp_path, metrics_port=port, metrics_linger_seconds=120)
    _due_cart(s)
    log = tmp_path / "run.log"
    proc = start(s, log, "--until-eof")
    try:
        deadline = time.monotonic() + 90
        while "final metrics are served 120 s more" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert len(offers_on_topic(s)) == 1
        assert 'omnicanal_offers_total{campaign="cart-10",channel="email"} 1.0' in _scrape(port + 1)
        assert 'omnicanal_events_total{channel="web",event_type="add_to_cart"' in _scrape(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
