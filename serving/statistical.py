"""Tier 2 of the decision: how far a transaction's amount and its card's velocity deviate from the card's own
history, from the feature vector alone (so the stream and the API compute the same).

- amount, z-score: the amount against the mean and standard deviation of the card's last 30 days
  (``card_amount_zscore_30d``);
- amount, IQR: the amount's distance from the median of the same 30 days in interquartile ranges
  (``card_amount_iqr_score_30d``, used as it is). Unlike the z-score it is not diluted by the card's own past
  outliers (a single large amount inflates the standard deviation, not the quartiles). Its scale: Tukey's
  far-out fence, 3 IQR beyond a quartile, is about 3.5 IQR from the median (the quartiles sit about 0.5 IQR
  either side of it), so ``statistical_review_at`` (4) reviews amounts just past the far-out fence and
  ``statistical_block_at`` (8) blocks those twice as far; for normally distributed amounts (IQR = 1.35 sd),
  4 IQR is 5.4 standard deviations, a little stricter than the z-score at the same threshold;
- velocity over 1 min, 5 min, 15 min and 1 h: the count in the window against the card's 30-day average rate
  for a window that long, as a Poisson deviation ``(observed - expected) / sqrt(expected)``; the expected count
  is at least ``decision.statistical_min_expected`` so that a card with little history is not an outlier by
  default.

The tier score is the largest deviation mapped to the 0-100 scale (``statistical_review_at`` standard
deviations or IQRs → review threshold, ``statistical_block_at`` → block threshold); its name is the reason
(``STAT_<NAME>``, e.g. ``STAT_AMOUNT_IQR_30D``).
"""

from __future__ import annotations

import math

from lakehouse.config import DecisionSettings
from serving.decision import calibrated

MONTH_S = 30 * 86_400
VELOCITY_WINDOWS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3_600}


def deviations(features: dict, min_expected: float) -> dict[str, float | None]:
    """Every deviation of one feature vector (None where the history needed is unknown)."""
    out: dict[str, float | None] = {
        "amount_zscore_30d": features.get("card_amount_zscore_30d"),
        "amount_iqr_30d": features.get("card_amount_iqr_score_30d"),
    }
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
