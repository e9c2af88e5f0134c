"""The offer decider: the offers stage (``flows/offers.py``) in a process of its own,
beside the workers, so that the workers only ingest.

    workers (1..n)    validate, apply (profiles, stock, the offer timers), alerts, health
                        | Redis: timers, profiles, stock, co-purchase counts, health state
    decider (one)     fire the due timers, rank, decide, coupons, outbox -> offers topic

Nothing passes between them but Redis. The apply writes each offer timer with the event
that starts it (``state/lua/apply_batch.lua``); the decider looks for due timers about once
per ``OMNICANAL_OFFER_INTERVAL_MS`` and at once again while a slice came back full. One
decider keeps the frequency caps and campaign budgets exact, as worker 0 did when it ran the
stage between batches (``OMNICANAL_OFFER_DECIDER=worker``). The channels offers avoid come
from the channel-health state worker 0 stores (:class:`flows.health.StoredDown`); the
co-purchase counts it ranks cross-sell items with are those the workers add every few
seconds.

When the input ends (``--until-eof``) or a stop signal arrives, the runner tells the decider
once every worker has finished: it decides what is due then (as the worker's close did) and
waits for the broker to confirm every offer sent.
"""

from __future__ import annotations

from collections.abc import Callable

from flows.health import StoredDown
from flows.kafka import CheckedProducer
from flows.offers import Offers
from flows.pipeline import PipelineSetup, offers
from state.health import HealthStore


class OfferDecider:
    """Runs an :class:`Offers` stage until told to finish, then closes it."""

    #: seconds between looks while nothing is due (:meth:`Offers.due` itself waits for its
    #: interval: a look before it is due costs a clock read)
    POLL = 0.02

    def __init__(self, stage: Offers) -> None:
        self.stage = stage

    def run(self, finish: Callable[[float], bool]) -> None:
        """Decide until ``finish(seconds)`` (which waits up to that long) says to stop, then
        decide what is due now and wait for the broker (:meth:`Offers.close`)."""
        while not finish(self.POLL):
            self.stage.due()
            self.stage.ack()
        self.stage.close()


def build(setup: PipelineSetup) -> OfferDecider | None:
    """The decider, with its own Redis client and producer; None when the setup decides no
    offers (no campaigns, coupon key or offers topic)."""
    store, stock = setup.stores()
    producer = CheckedProducer(setup.kafka, what="offer decider")
    down = StoredDown(HealthStore(store.r, store.prefix)) if setup.health_topic else None
    stage = offers(setup, store, producer, stock=stock, down=down)
    if stage is None:
        return None
    return OfferDecider(stage)
