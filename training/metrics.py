"""Evaluation metrics of a fraud model on a held-out period (pure functions over arrays and DataFrames).

Ranking quality (ROC AUC, average precision) comes from scikit-learn; the operating-point metrics are what a
fraud team reads: precision/recall/F1 at a threshold, recall at a fixed false-positive rate, card precision
among the top k cards per day (the analysts' daily review capacity), detection rate per fraud scenario, and the
money view (fraud amount caught vs missed, review cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class AtThreshold:
    threshold: float
    flagged: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float


def at_threshold(y: np.ndarray, score: np.ndarray, threshold: float) -> AtThreshold:
    """Confusion-matrix metrics when every score ``>= threshold`` is flagged (0 where undefined)."""
    y, flagged = np.asarray(y, dtype=bool), np.asarray(score) >= threshold
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    positives, negatives = int(y.sum()), int((~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AtThreshold(float(threshold), tp + fp, tp, precision, recall, f1, fp / negatives if negatives else 0.0)


def threshold_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold whose false-positive rate does not exceed ``max_fpr`` (flag ``score >= t``)."""
    fpr, _, thresholds = roc_curve(np.asarray(y, dtype=int), score)
    ok = np.flatnonzero(fpr <= max_fpr)
    if ok[-1] == 0:  # even the highest score is a false positive too many: a finite threshold that flags nothing
        return float(np.nextafter(np.max(score), np.inf))
    return float(thresholds[ok[-1]])


def recall_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """The recall (true-positive rate) reachable with a false-positive rate of at most ``max_fpr``."""
    return at_threshold(y, score, threshold_at_fpr(y, score, max_fpr)).recall


def card_precision_at_k(frame: pd.DataFrame, k: int) -> float:
    """Mean over days of the share of fraudulent cards among the day's ``k`` highest-scored cards.

    ``frame`` has one row per transaction with ``event_date``, ``card_id``, ``score`` and ``label``; a card's
    score for the day is its highest transaction score, and it counts as fraudulent if any of its
    transactions that day is. Days with fewer than ``k`` cards use the cards they have.
    """
    cards = frame.groupby(["event_date", "card_id"], as_index=False).agg(score=("score", "max"), fraud=("label", "max"))
    daily = [
        day.sort_values(["score", "card_id"], ascending=[False, True]).head(k)["fraud"].mean()
        for _, day in cards.groupby("event_date")
    ]
    return float(np.mean(daily)) if daily else 0.0


def detection_by_scenario(frame: pd.DataFrame, threshold: float) -> dict[str, dict]:
    """Per fraud scenario (``label_scenario`` of the positives): how many transactions, the share flagged, and
    the same per card — a card counts as detected if any of its fraud transactions of that scenario is flagged
    (an analyst then blocks it), which is what the first, signal-less transaction of an episode allows."""
    fraud = frame[frame["label"] == 1].assign(flagged=lambda f: f["score"] >= threshold)
    out = {}
    for scenario, rows in fraud.groupby(fraud["label_scenario"].fillna("unknown")):
        caught = int(rows["flagged"].sum())
        cards = rows.groupby("card_id")["flagged"].any()
        out[str(scenario)] = {
            "frauds": len(rows),
            "detected": caught,
            "detection_rate": caught / len(rows),
            "cards": len(cards),
            "card_detection_rate": float(cards.mean()),
        }
    return out


def money(frame: pd.DataFrame, threshold: float, review_cost: float) -> dict[str, float]:
    """Fraud amount caught and missed at ``threshold``, and what reviewing every flagged transaction costs."""
    flagged = frame["score"] >= threshold
    fraud = frame["label"] == 1
    caught = float(frame.loc[flagged & fraud, "amount"].sum())
    missed = float(frame.loc[~flagged & fraud, "amount"].sum())
    cost = float(flagged.sum() * review_cost)
    return {
        "fraud_amount_caught": caught,
        "fraud_amount_missed": missed,
        "review_cost": cost,
        "net_saved": caught - cost,
    }


def evaluate(frame: pd.DataFrame, thresholds: dict[str, float], *, k: int, max_fpr: float, review_cost: float) -> dict:
    """Every metric of ``frame`` (label, score, amount, card_id, event_date, label_scenario) as one dict.

    ``thresholds`` names the operating points (e.g. review and block); the FPR-bound threshold is added as
    ``at_fpr``. Scenario detection and the money view are given at each operating point.
    """
    y, score = frame["label"].to_numpy(), frame["score"].to_numpy()
    points = {**thresholds, "at_fpr": threshold_at_fpr(y, score, max_fpr)}
    return {
        "rows": len(frame),
        "frauds": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, score)),
        "average_precision": float(average_precision_score(y, score)),
        f"card_precision_at_{k}": card_precision_at_k(frame, k),
        f"recall_at_fpr_{max_fpr:g}": recall_at_fpr(y, score, max_fpr),
        "operating_points": {
            name: {
                **asdict(at_threshold(y, score, t)),
                "scenarios": detection_by_scenario(frame, t),
                "money": money(frame, t, review_cost),
            }
            for name, t in points.items()
        },
    }
