"""The evaluator's metrics against scikit-learn on fixed inputs, and card precision@k on a hand-made example."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from training import metrics
from training.split import periods

RNG = np.random.default_rng(7)
Y = (RNG.random(2000) < 0.05).astype(int)
SCORE = np.clip(RNG.normal(0.3 + 0.4 * Y, 0.15), 0, 1)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.62, 0.9])
def test_threshold_metrics_agree_with_scikit_learn(threshold: float):
    got = metrics.at_threshold(Y, SCORE, threshold)
    flagged = np.greater_equal(SCORE, threshold).astype(int)
    assert got.precision == pytest.approx(precision_score(Y, flagged, zero_division=0))
    assert got.recall == pytest.approx(recall_score(Y, flagged))
    assert got.f1 == pytest.approx(f1_score(Y, flagged))
    assert got.flagged == flagged.sum()
    assert got.false_positive_rate == pytest.approx(((flagged == 1) & (Y == 0)).sum() / (Y == 0).sum())


@pytest.mark.parametrize("max_fpr", [0.001, 0.005, 0.05])
def test_recall_at_fpr_is_the_best_point_of_the_roc_curve_within_the_bound(max_fpr: float):
    fpr, tpr, _ = roc_curve(Y, SCORE, drop_intermediate=False)
    assert metrics.recall_at_fpr(Y, SCORE, max_fpr) == pytest.approx(tpr[fpr <= max_fpr].max())
    t = metrics.threshold_at_fpr(Y, SCORE, max_fpr)
    assert metrics.at_threshold(Y, SCORE, t).false_positive_rate <= max_fpr


def test_card_precision_at_k_by_hand():
    rows = [
        # day 1: cards by their best score: c1 0.9 (fraud), c2 0.8 (genuine), c3 0.7 (fraud), c4 0.1 (fraud)
        ("2026-03-01", "c1", 0.9, 1), ("2026-03-01", "c1", 0.2, 0), ("2026-03-01", "c2", 0.8, 0),
        ("2026-03-01", "c3", 0.3, 0), ("2026-03-01", "c3", 0.7, 1), ("2026-03-01", "c4", 0.1, 1),
        # day 2: c2 is fraud that day; only two cards
        ("2026-03-02", "c2", 0.95, 1), ("2026-03-02", "c5", 0.5, 0),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["event_date", "card_id", "score", "label"])
    # k=2: day 1 top {c1, c2} -> 1/2; day 2 {c2, c5} -> 1/2
    assert metrics.card_precision_at_k(frame, 2) == pytest.approx(0.5)
    # k=3: day 1 {c1, c2, c3} -> 2/3; day 2 (two cards) -> 1/2
    assert metrics.card_precision_at_k(frame, 3) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_evaluate_scenarios_and_money():
    frame = pd.DataFrame(
        {
            "label": [1, 1, 1, 0, 0, 0],
            "score": [0.9, 0.4, 0.8, 0.7, 0.1, 0.2],
            "amount": [100.0, 50.0, 20.0, 10.0, 5.0, 5.0],
            "card_id": ["a", "a", "c", "d", "e", "f"],
            "event_date": [date(2026, 3, 1)] * 6,
            "label_scenario": ["card_testing", "card_testing", "impossible_travel", None, None, None],
        }
    )
    report = metrics.evaluate(frame, {"review": 0.5}, k=2, max_fpr=0.0, review_cost=2.0)
    assert report["roc_auc"] == pytest.approx(roc_auc_score(frame["label"], frame["score"]))
    review = report["operating_points"]["review"]
    assert review["scenarios"] == {
        # one of card a's two testing transactions is flagged: half the transactions, the whole card
        "card_testing": {"frauds": 2, "detected": 1, "detection_rate": 0.5, "cards": 1, "card_detection_rate": 1.0},
        "impossible_travel": {
            "frauds": 1,
            "detected": 1,
            "detection_rate": 1.0,
            "cards": 1,
            "card_detection_rate": 1.0,
        },
    }
    # flagged: 0.9 (fraud 100), 0.8 (fraud 20), 0.7 (genuine): caught 120, missed 50, 3 reviews at 2.0
    assert review["money"] == {"fraud_amount_caught": 120.0, "fraud_amount_missed": 50.0, "review_cost": 6.0,
                               "net_saved": 114.0}  # fmt: skip
    # no false positive allowed: flag down to 0.8, the best score above the best genuine one (0.7)
    assert report["operating_points"]["at_fpr"]["threshold"] == pytest.approx(0.8)
    assert report["card_precision_at_2"] == pytest.approx(1.0)


def test_periods_leave_a_gap_and_must_fit():
    p = periods(date(2026, 3, 1), date(2026, 3, 31), train_days=14, gap_days=7, test_days=7)
    assert (p.train_end, p.test_start, p.test_end, p.gap_days) == (
        date(2026, 3, 14), date(2026, 3, 22), date(2026, 3, 28), 7
    )  # fmt: skip
    with pytest.raises(ValueError, match="do not fit"):
        periods(date(2026, 3, 1), date(2026, 3, 20), train_days=14, gap_days=7, test_days=7)
