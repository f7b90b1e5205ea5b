"""Scoring a batch of transactions with their feature vectors: rules, statistics and models into decisions.

The stream (``serving.stream``) and the API call the same ``Scorer.decide``, so the same event and state give
the same decision. Models come from the MLflow registry through alias-following loaders: the supervised
``champion`` (and ``challenger``, routed by ``decision.routing``) and the unsupervised champion. A model that
cannot be loaded leaves its tier unscored (the rules and statistics still decide) and is counted in
``Scorer.model_errors``; a loader keeps its last good version when a new one fails to load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from lakehouse.config import Settings
from serving import statistical
from serving.decision import calibrated, decide
from serving.rules import RuleBook
from training.dataset import FEATURES, array
from training.registry import CHALLENGER, CHAMPION, AliasFollower, LoadedModel, ModelLoader

log = logging.getLogger(__name__)


def route(card_id: str, split_percent: float) -> str:
    """``challenger`` for a stable ``split_percent`` % of cards (a hash of the card id, the same in every
    process and run), else ``champion``."""
    bucket = int.from_bytes(hashlib.blake2b(card_id.encode(), digest_size=8).digest(), "big") % 10_000
    return CHALLENGER if bucket < split_percent * 100 else CHAMPION


class Inputs:
    """The feature vectors as each model's input matrix, built once per feature list."""

    def __init__(self, vectors: list[dict]):
        self.vectors, self._by_features = vectors, {}

    def of(self, model: LoadedModel) -> np.ndarray:
        features = model.features
        key = tuple(features)
        if key not in self._by_features:
            self._by_features[key] = array(self.vectors, features)
        return self._by_features[key]


class Loader(Protocol):
    """What scoring asks of a model loader: its ``current`` model (``LookupError`` while it has none)."""

    @property
    def current(self) -> LoadedModel: ...


@dataclass
class Models:
    """The loaders scoring uses; any of them may be None (not registered yet)."""

    champion: Loader | None = None
    challenger: Loader | None = None
    anomaly: Loader | None = None

    @classmethod
    def from_registry(cls, settings: Settings, follower: type[AliasFollower] = ModelLoader) -> Models:
        """Loaders of the configured models (``AliasFollower``: their versions only, for the stream's driver)."""
        m = settings.models
        return cls(
            follower(settings, m.supervised_name, CHAMPION),
            follower(settings, m.supervised_name, CHALLENGER),
            follower(settings, m.unsupervised_name, CHAMPION),
        )


def current(loader: Loader | None) -> LoadedModel | None:
    """The loader's model, or None while it has none (not registered yet, or the registry unreachable)."""
    try:
        return loader.current if loader is not None else None
    except LookupError:
        return None


class Scorer:
    def __init__(self, settings: Settings, models: Models | None = None, rules: RuleBook | None = None):
        self.settings, self.cfg = settings, settings.decision
        self.rules = rules or RuleBook(settings.path(self.cfg.rules_file), self.cfg.rules_reload_seconds)
        self.models = models if models is not None else Models.from_registry(settings)
        self.model_errors, self.last_error = 0, ""

    def _ml(self, model: LoadedModel | None, inputs: Inputs) -> np.ndarray | None:
        """Probabilities of ``model`` on its input; None when it is missing or fails (counted)."""
        if model is None:
            return None
        try:
            return model.score_matrix(inputs.of(model))
        except Exception as exc:  # a broken version: decide without it, and count it
            self.model_errors += 1
            self.last_error = f"{model.name} v{model.version} failed to score: {exc}"
            log.error("%s; its tier is skipped", self.last_error)
            return None

    def _explain(self, model: LoadedModel, inputs: Inputs, rows: list[int]) -> dict[int, list[str]]:
        """The top SHAP features of ``rows`` by ``model``; a failing explanation only loses them."""
        try:
            x = pd.DataFrame(inputs.of(model)[rows], columns=model.features)
            return dict(zip(rows, model.reasons(x, self.cfg.reasons), strict=True))
        except Exception as exc:
            self.model_errors += 1
            self.last_error = f"{model.name} v{model.version} failed to explain its scores: {exc}"
            log.error("%s", self.last_error)
            return {}

    def _tier(self, model: LoadedModel | None, value: float | None) -> float | None:
        t = model.thresholds if model is not None else {}
        if value is None or "review" not in t or "block" not in t or not 0 < t["review"] < t["block"]:
            return None
        return calibrated(value, t["review"], t["block"], 1.0, self.cfg.review_threshold, self.cfg.block_threshold)

    def decide(self, txs: list[dict], vectors: list[dict]) -> list[dict]:
        """One decision row per transaction (``txs[i]`` with its feature vector ``vectors[i]``). Reasons are the
        rules' codes, ``STAT_*`` when the statistical tier reached review, and for a review or block decision the
        acting model's top SHAP features (``ML_<FEATURE>``)."""
        if not txs:
            return []
        t0 = time.perf_counter()
        rules = self.rules.current
        x = Inputs(vectors)
        champion, challenger = current(self.models.champion), current(self.models.challenger)
        anomaly_model = current(self.models.anomaly)
        if self.cfg.routing == "off" or (challenger and champion and challenger.version == champion.version):
            challenger = None
        split = self.cfg.routing == "split"
        p_champ, p_chall, anomaly = self._ml(champion, x), self._ml(challenger, x), self._ml(anomaly_model, x)
        out, acted = [], []
        for i, (tx, vec) in enumerate(zip(txs, vectors, strict=True)):
            hits = rules.evaluate({**tx, **vec})
            stat, stat_reason, _ = statistical.tier(vec, self.cfg)
            a = None if anomaly is None else float(anomaly[i])
            base = {"rules": max((h.score for h in hits), default=None), "statistical": stat,
                    "anomaly": self._tier(anomaly_model, a)}  # fmt: skip
            scored = {CHAMPION: (champion, p_champ)}
            if challenger is not None:
                scored[CHALLENGER] = (challenger, p_chall)
            verdicts = {}
            for role, (model, p) in scored.items():
                prob = None if p is None else float(p[i])
                verdicts[role] = (decide({**base, "ml": self._tier(model, prob)}, hits, self.cfg), model, prob)
            acting = CHAMPION
            if split and p_chall is not None:
                acting = route(tx["card_id"], self.cfg.split_percent)
                if acting == CHAMPION and p_champ is None:  # act with the model that could score
                    acting = CHALLENGER
            verdict, model, prob = verdicts[acting]
            acted.append((acting, model if prob is not None else None, verdict.decision))
            reasons = [h.reason for h in hits]
            if stat is not None and stat >= self.cfg.review_threshold:
                reasons.append(f"STAT_{stat_reason.upper()}")
            other = CHALLENGER if acting == CHAMPION else CHAMPION
            shadow, shadow_model, shadow_prob = verdicts.get(other, (None, None, None))
            out.append({
                "transaction_id": tx["transaction_id"],
                "card_id": tx["card_id"],
                "event_time": tx["event_time"],
                "decision": verdict.decision,
                "score": verdict.score,
                "driver": verdict.driver,
                "rules_score": base["rules"],
                "statistical_score": stat,
                "ml_score": verdict.tiers["ml"],
                "ml_probability": prob,
                "anomaly_score": base["anomaly"],
                "anomaly_raw": a,
                "triggered_rules": [h.rule_id for h in hits],
                "reasons": reasons,
                "route": acting,
                "model_name": model.name if model else None,
                "model_version": model.version if model else None,
                "anomaly_model_version": anomaly_model.version if anomaly_model else None,
                "shadow_model_version": shadow_model.version if shadow_model else None,
                "shadow_probability": shadow_prob if shadow_model else None,
                "shadow_decision": shadow.decision if shadow_model else None,
                "rules_version": rules.version,
                "features": json.dumps({f: vec.get(f) for f in FEATURES}, separators=(",", ":")),
            })  # fmt: skip
        # the model's reasons (tree SHAP, ~0.5 ms a row) for what an analyst will see: the flagged decisions
        for role in (CHAMPION, CHALLENGER):
            model = next((m for r, m, _ in acted if r == role and m is not None), None)
            flagged = [i for i, (r, m, d) in enumerate(acted) if r == role and m is not None and d != "approve"]
            if model is not None and flagged:
                for i, features in self._explain(model, x, flagged).items():
                    out[i]["reasons"] += [f"ML_{f.upper()}" for f in features]
        spent = (time.perf_counter() - t0) * 1000 / len(txs)
        for row in out:
            row["scoring_ms"] = spent
        return out
