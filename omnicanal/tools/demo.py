"""``omnicanal demo``: real services started locally, events produced, the pipeline run to
the end of the input, and a summary checked against what the broker and Redis hold."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from flows.kafka import CheckedProducer, create_topics, read_topic
from monitoring import metrics as m
from omnicanal import runner
from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator, Message
from omnicanal.tools.services import LocalKafka, LocalRedis
from operators.cross_sell import CrossSellRanker
from operators.guardrails import in_holdout
from operators.offers import MODEL_VERSION
from operators.policy import RedemptionModel
from operators.preferences import PreferenceModel
from state.cross_sell import CoPurchaseStore, RankerStore
from state.health import HealthStore
from state.offers import OfferStore, PolicyStore
from state.preferences import PreferenceStore
from state.profiles import ProfileStore, connect
from state.stock import StockStore

Progress = Callable[[str, int, int | None], None]
#: the demo's daily sales targets, in pence (the sales dashboard shows the last 24 h against them)
DEMO_SALES_TARGETS: dict[str, dict[str, int]] = {
    "store": {"GBP": 20_000_000}, "web": {"GBP": 12_000_000}, "app": {"GBP": 8_000_000}
}  # fmt: skip
#: the demo's campaigns and coupon key (never for production: the key is public)
DEMO_CAMPAIGNS = Path(__file__).with_name("demo_campaigns.yaml")
DEMO_COUPON_KEY = "omnicanal-demo-coupon-key-NOT-SECRET"


@dataclass
class Summary:
    produced: int = 0
    produced_bad: int = 0
    produced_by_contract: dict[str, int] = field(default_factory=dict)
    expected_dead_letters: dict[str, int] = field(default_factory=dict)
    processed: int = 0
    dead_lettered: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    #: identity graph: identifiers linked, merges, refused links, ... (ProfileStore.stats)
    identity: dict[str, int] = field(default_factory=dict)
    #: stock alerts raised, by type, as the alerts topic holds them; open ones in Redis
    stock_alerts: dict[str, int] = field(default_factory=dict)
    stock_alerts_open: dict[str, int] = field(default_factory=dict)
    skus_at_risk: int = 0
    #: offers as the offers topic holds them, per campaign and per channel; suppressions
    #: per reason, timers still pending and the holdout group (Redis)
    offers: int = 0
    offers_by_campaign: dict[str, int] = field(default_factory=dict)
    offers_by_channel: dict[str, int] = field(default_factory=dict)
    offer_suppressions: dict[str, int] = field(default_factory=dict)
    offer_timers_pending: int = 0
    holdout_customers: int = 0
    coupon_redemptions: dict[str, int] = field(default_factory=dict)
    #: channel health: messages on its topic by status, and the channels and stores watched
    channel_health_events: dict[str, int] = field(default_factory=dict)
    channel_health_watched: int = 0
    #: the offer policy: its version and the outcomes it has learnt from (progressive
    #: validation: mean log-loss of its predictions made before learning each)
    offers_model: str = MODEL_VERSION
    offer_outcomes_learnt: int = 0
    offer_model_log_loss: float | None = None
    #: cross-sell: baskets in the co-purchase counts (Redis), the ranker's version and its
    #: progressive validation (ranked items learnt, share bought next, mean log-loss)
    cross_sell_baskets: int = 0
    cross_sell_model: str = "xs-0"
    cross_sell_learnt: int = 0
    cross_sell_hit_rate: float | None = None
    cross_sell_log_loss: float | None = None
    #: the next-basket preference model: its version, the candidate items it learnt from
    #: and its progressive validation (mean log-loss of its predictions before learning)
    next_basket_model: str = "pm-0"
    next_basket_learnt: int = 0
    next_basket_log_loss: float | None = None
    produce_seconds: float = 0.0
    pipeline_seconds: float = 0.0
    sample_customer: str | None = None
    kafka_bootstrap: str = ""
    redis_url: str = ""

    @property
    def consistent(self) -> bool:
        return self.processed + self.dead_lettered == self.produced

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["events_per_second"] = (
            round(self.produced / self.pipeline_seconds, 1) if (self.pipeline_seconds) else None
        )
        d["consistent"] = self.consistent
        return d


def produce(
    settings: Settings,
    messages: Iterable[Message],
    progress: Progress | None = None,
    total: int | None = None,
) -> tuple[int, Counter[str], Counter[str]]:
    """Produce messages to their contract's topic; returns (count, by contract, expected bad)."""
    topics = settings.contract_topics()
    p = CheckedProducer(settings.kafka_config(), what="produce")
    n = 0
    by_contract: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for msg in messages:
        p.produce(topics[msg.contract], msg.value, msg.key)
        n += 1
        by_contract[msg.contract] += 1
        if msg.expected_reason:
            expected[msg.expected_reason] += 1
        if n % 5000 == 0:
            p.poll()
            if progress:
                progress("produce", n, total)
    p.flush(60)
    if progress:
        progress("produce", n, total)
    return n, by_contract, expected


def events_from_jsonl(lines: Iterable[bytes]) -> Iterator[Message]:
    """Messages from JSON lines of events, routed by ``event_type`` (bad lines kept as-is
    on the transactions topic, so the pipeline dead-letters them)."""
    from schemas.events import CONTRACT_OF_TYPE

    for n, line in enumerate(lines, 1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        contract = "transaction"
        key = b""
        with contextlib.suppress(ValueError):
            obj = orjson.loads(line)
            if isinstance(obj, dict):
                contract = CONTRACT_OF_TYPE.get(str(obj.get("event_type")), "transaction")
                cust = obj.get("customer") or {}
                if isinstance(cust, dict):
                    key = str(cust.get("loyalty_id") or cust.get("account_id") or "").encode()
                key = key or str(obj.get("sku") or obj.get("event_id") or n).encode()
        yield Message(contract, key, line)


def run_demo(
    *,
    events: int,
    seed: int,
    customers: int,
    bad_share: float,
    partitions: int,
    import_file: Path | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    progress: Progress | None = None,
    metrics_port: int = 0,
    metrics_linger: float = 0.0,
) -> Summary:
    """Start Tansu and redis-server, produce, run the pipeline to the end, summarise."""
    own_dir = workdir is None
    base = workdir or Path(tempfile.mkdtemp(prefix="omnicanal-demo-"))
    kafka = LocalKafka(base / "kafka")
    redis_srv = LocalRedis(base / "redis")
    summary = Summary()
    try:
        kafka.start()
        redis_srv.start()
        settings = Settings(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis_srv.url,
            partitions=partitions,
            metrics_port=metrics_port,
            metrics_linger_seconds=metrics_linger,
            coupon_key=DEMO_COUPON_KEY,
            campaigns_file=str(DEMO_CAMPAIGNS),
            sales_targets=DEMO_SALES_TARGETS,
        )
        summary.kafka_bootstrap, summary.redis_url = kafka.bootstrap, redis_srv.url
        create_topics(settings.kafka_config(), settings.all_topics(), partitions)

        if import_file is not None:
            from omnicanal.tools.online_retail import ImportReport, read_events

            report = ImportReport()
            with open(import_file, encoding="utf-8", errors="strict") as f:
                lines = (orjson.dumps(e) for e in read_events(f, report))
                msgs: Iterable[Message] = events_from_jsonl(lines)
                t0 = time.perf_counter()
                n, by_contract, expected = produce(settings, msgs, progress, None)
        else:
            gen = Generator(seed=seed, customers=customers, bad_share=bad_share)
            t0 = time.perf_counter()
            n, by_contract, expected = produce(settings, gen.messages(events), progress, events)
        summary.produce_seconds = time.perf_counter() - t0
        summary.produced = n
        summary.produced_by_contract = dict(by_contract)
        summary.expected_dead_letters = dict(expected)
        summary.produced_bad = sum(expected.values())

        plan = runner.plan(settings)
        before = _applied_totals()
        done = threading.Event()
        if progress:
            threading.Thread(target=_watch, args=(done, before, n, progress), daemon=True).start()
        t0 = time.perf_counter()
        try:
            runner.run(
                settings,
                plan.starts,
                until_eof=True,
                allow_demo_key=True,
                serve_metrics=bool(metrics_port),
            )
        finally:
            done.set()
        summary.pipeline_seconds = time.perf_counter() - t0
        processed_now, _ = _applied_totals()
        summary.processed = int(processed_now - before[0])
        summary.events_by_type = {
            k: int(v) for k, v in m.counter_by(m.EVENTS, "event_type").items()
        }
        # Dead letters as the broker holds them, not as this process counted them.
        dlq = read_topic(settings.kafka_config(), settings.topic_dead_letters)
        reasons: Counter[str] = Counter(
            orjson.loads(v or b"{}").get("reason") for _, _, _, v in dlq
        )
        summary.dead_lettered = sum(reasons.values())
        summary.dead_letters_by_reason = dict(reasons.most_common())
        sent = read_topic(settings.kafka_config(), settings.topic_stock_alerts)
        raised: Counter[str] = Counter()
        for _, _, _, v in sent:
            a = orjson.loads(v or b"{}")
            if a.get("status") == "raised":
                raised[a["type"]] += 1
        summary.stock_alerts = dict(sorted(raised.items()))
        stats = StockStore(connect(settings.redis_url), settings.redis_prefix).alert_stats()
        summary.stock_alerts_open = stats["open"]
        summary.skus_at_risk = stats["skus_at_risk"]
        _offers(settings, summary)
        store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
        summary.identity = store.stats()
        summary.customers = summary.identity["customers"]
        summary.sample_customer = _busiest(store)
        store.close()
        if progress:
            progress("done", n, n)
        return summary
    finally:
        if not keep:
            kafka.stop()
            redis_srv.stop()
            if own_dir:
                shutil.rmtree(base, ignore_errors=True)


def _offers(settings: Settings, summary: Summary) -> None:
    """Offers as the broker holds them; suppressions, timers and the holdout from Redis."""
    by_campaign: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    for _, _, _, v in read_topic(settings.kafka_config(), settings.topic_offers):
        o = orjson.loads(v or b"{}")
        by_campaign[o["campaign_id"]] += 1
        by_channel[o["channel"]] += 1
    summary.offers = sum(by_campaign.values())
    summary.offers_by_campaign = dict(by_campaign.most_common())
    summary.offers_by_channel = dict(by_channel.most_common())
    client = connect(settings.redis_url)
    stats = OfferStore(client, settings.redis_prefix).stats()
    summary.offer_suppressions = stats["suppressed"]
    summary.offer_timers_pending = stats["timers_pending"]
    ids = ProfileStore(client, settings.redis_prefix).customer_ids()
    summary.holdout_customers = sum(in_holdout(c, settings.offer_holdout_share) for c in ids)
    summary.coupon_redemptions = {
        k: int(v) for k, v in m.counter_by(m.COUPON_REDEMPTIONS, "outcome").items() if v
    }
    health: Counter[str] = Counter()
    for _, _, _, v in read_topic(settings.kafka_config(), settings.topic_channel_health):
        health[orjson.loads(v or b"{}")["status"]] += 1
    summary.channel_health_events = dict(health)
    board, _ = HealthStore(client, settings.redis_prefix).load()
    summary.channel_health_watched = len(board or {})
    # The models' quality as they stored it (progressive validation): the offer decider that
    # learnt them runs in a process of its own.
    state, _ = PolicyStore(client, settings.redis_prefix).load()
    policy = RedemptionModel.from_state(state) if state else RedemptionModel()
    if settings.offer_policy == "learnt":
        summary.offer_outcomes_learnt = policy.learnt
        summary.offers_model = policy.version
    summary.offer_model_log_loss = round(policy.log_loss, 4) if policy.learnt else None
    summary.cross_sell_baskets = CoPurchaseStore(client, settings.redis_prefix).baskets()
    stored = RankerStore(client, settings.redis_prefix).load()
    ranker = CrossSellRanker.from_state(stored) if stored else CrossSellRanker()
    summary.cross_sell_learnt = ranker.learnt
    summary.cross_sell_model = ranker.version
    summary.cross_sell_log_loss = round(ranker.log_loss, 4) if ranker.learnt else None
    summary.cross_sell_hit_rate = round(ranker.hit_rate, 4) if ranker.learnt else None
    prefs = PreferenceStore(client, settings.redis_prefix).load()
    if prefs:
        model = PreferenceModel.from_state(prefs)
        summary.next_basket_model, summary.next_basket_learnt = model.version, model.learnt
        summary.next_basket_log_loss = round(model.log_loss, 4) if model.learnt else None
    client.close()


def _applied_totals() -> tuple[float, float]:
    return m.counter_total(m.EVENTS), m.counter_total(m.DEAD_LETTERS)


def _watch(
    done: threading.Event, before: tuple[float, float], total: int, progress: Progress
) -> None:
    while not done.wait(0.25):
        ev, dl = _applied_totals()
        progress("pipeline", int(ev - before[0] + dl - before[1]), total)


def _busiest(store: ProfileStore, sample: int = 200) -> str | None:
    """A customer with activity in several channels, to show in the summary."""
    best: tuple[int, str] | None = None
    for i, cid in enumerate(store.customer_ids()):
        if i >= sample:
            break
        p = store.read_profile(cid)
        if p is None:
            continue
        score = len(p["channels"]) * 100 + p["orders"]
        if best is None or score > best[0]:
            best = (score, cid)
    return best[1] if best else None
