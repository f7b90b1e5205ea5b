"""The final score (0-100) and the decision from the three tiers: rules, statistics, models.

Each tier gives a 0-100 score on the decision's own scale, so that the thresholds mean the same for every tier:

- **rules**: the highest ``score`` of the rules that fire (``conf/rules.yaml``);
- **ml** and **anomaly**: a model's score mapped piecewise-linearly so that the operating thresholds it was
  registered with (``review`` and ``block``, chosen on validation days at a fixed false-positive rate) land on
  ``decision.review_threshold`` and ``decision.block_threshold`` (``calibrated``);
- **statistical**: a deviation (z-score or IQR distance) mapped the same way, ``statistical_review_at`` standard
  deviations to the review threshold and ``statistical_block_at`` to the block threshold.

The final score is the highest tier score times its weight (``decision.weights``): the strongest evidence
decides, and a tier with weight 0 is off. ``score >= block_threshold`` blocks, ``>= review_threshold`` sends to
review, else approves; a rule whose action is ``block`` blocks whatever the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lakehouse.config import DecisionSettings
from serving.rules import Hit

Decision = Literal["approve", "review", "block"]
TIERS = ("rules", "statistical", "ml", "anomaly")


def calibrated(
    value: float | None, review_at: float, block_at: float, top: float, review: float, block: float
) -> float | None:
    """``value`` on the 0-100 decision scale, piecewise linear: 0 → 0, ``review_at`` → ``review``, ``block_at`` →
    ``block``, ``top`` (1.0 for a probability) and above → 100."""
    if value is None:
        return None
    if not 0 < review_at < block_at:
        raise ValueError(f"thresholds must satisfy 0 < review_at ({review_at}) < block_at ({block_at})")
    if value <= review_at:
        return max(0.0, review * value / review_at)
    if value <= block_at:
        return review + (block - review) * (value - review_at) / (block_at - review_at)
    if value >= top:
        return 100.0
    return block + (100 - block) * (value - block_at) / (top - block_at)


@dataclass(frozen=True)
class Verdict:
    score: float
    decision: Decision
    driver: str | None  # the tier that set the score (None when no tier had a value)
    tiers: dict[str, float | None]


def decide(tiers: dict[str, float | None], hits: list[Hit], cfg: DecisionSettings) -> Verdict:
    """Combine the tier scores (0-100, None when a tier could not score) and the rule hits into a verdict."""
    unknown = set(tiers) - set(TIERS)
    if unknown:
        raise KeyError(f"unknown tiers {sorted(unknown)}; tiers are {TIERS}")
    weighted = {t: v * w for t, v in tiers.items() if v is not None and (w := cfg.weights.get(t, 1.0)) > 0}
    driver = max(weighted, key=weighted.get) if weighted else None
    score = round(float(min(100.0, max(0.0, weighted[driver]))), 2) if driver else 0.0
    if any(h.action == "block" for h in hits):
        decision: Decision = "block"
    elif score >= cfg.block_threshold:
        decision = "block"
    elif score >= cfg.review_threshold or any(h.action == "review" for h in hits):
        decision = "review"
    else:
        decision = "approve"
    return Verdict(score, decision, driver, dict(tiers))
