"""Tier 2 of the decision: how far a transaction's amount and its card's velocity deviate from the card's own
history, from the feature vector alone (so the stream and the API compute the same).

- amount: the z-score of the amount against the card's last 30 days (``card_amount_zscore_30d``);
- velocity over 1 min, 5 min and 1 h: the count in the window against the card's 30-day average rate for a
  window that long, as a Poisson deviation ``(observed - expected) / sqrt(expected)``; the expected count is at
  least ``decision.statistical_min_expected`` so that a card with little history is not an outlier by default.

The tier score is the largest deviation mapped to the 0-100 scale (``statistical_review_at`` standard
deviations → review threshold, ``statistical_block_at`` → block threshold).
"""

from __future__ import annotations

import math

from lakehouse.config import DecisionSettings
from serving.decision import calibrated

MONTH_S = 30 * 86_400
VELOCITY_WINDOWS = {"1m": 60, "5m": 300, "1h": 3_600}


def deviations(features: dict, min_expected: float) -> dict[str, float | None]:
    """Every deviation of one feature vector (None where the history needed is unknown)."""
    out: dict[str, float | None] = {"amount_zscore_30d": features.get("card_amount_zscore_30d")}
    month = features.get("card_tx_count_30d")
    for window, seconds in VELOCITY_WINDOWS.items():
        observed = features.get(f"card_tx_count_{window}")
        if observed is None or month is None:
            out[f"velocity_{window}"] = None
            continue
        expected = max(month * seconds / MONTH_S, min_expected)
        out[f"velocity_{window}"] = (observed - expected) / math.sqrt(expected)
    return out


def tier(features: dict, cfg: DecisionSettings) -> tuple[float | None, str | None, dict[str, float | None]]:
    """(tier score 0-100, the deviation that set it, every deviation) of one feature vector."""
    devs = deviations(features, cfg.statistical_min_expected)
    known = {k: v for k, v in devs.items() if v is not None}
    if not known:
        return None, None, devs
    worst = max(known, key=known.get)
    top = 2 * cfg.statistical_block_at
    score = calibrated(max(known[worst], 0.0), cfg.statistical_review_at, cfg.statistical_block_at, top,
                       cfg.review_threshold, cfg.block_threshold)  # fmt: skip
    return score, worst, devs
