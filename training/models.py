"""The two scorers and how they are fitted: a supervised XGBoost classifier and an unsupervised Isolation Forest.

Both give a score in [0, 1] where higher means more suspicious: XGBoost the fraud probability (under the
imbalance strategy chosen on the validation days), Isolation Forest the anomaly score of Liu et al. (2008),
``2 ** (-E[h(x)] / c(n))``, which is ``-score_samples``. Both take ``training.dataset.matrix`` as input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.metrics import average_precision_score
from sklearn.pipeline import Pipeline

from lakehouse.config import IsolationForestSettings, XGBoostSettings
from training.dataset import FEATURES

Kind = Literal["xgboost", "isolation_forest"]
STRATEGIES = ("none", "sqrt_weight", "balanced_weight", "undersample_10")


@dataclass
class Fitted:
    """A fitted scorer and what fitting it decided."""

    kind: Kind
    estimator: xgb.XGBClassifier | Pipeline
    params: dict
    validation: dict = field(default_factory=dict)
    features: list[str] = field(default_factory=lambda: list(FEATURES))  # the model input's columns, in order

    def score(self, x: pd.DataFrame) -> np.ndarray:
        return score(self.kind, self.estimator, x)


def score(kind: Kind, estimator, x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Suspicion in [0, 1] of every row of the model input ``x`` (a frame; XGBoost also takes its array)."""
    if kind == "xgboost":  # the booster's in-place prediction: predict_proba's values, a fifth of its overhead
        try:  # an early-stopped model keeps the trees after its best iteration: predict with the best only
            trees = (0, int(estimator.best_iteration) + 1)
        except AttributeError:
            trees = (0, 0)
        return estimator.get_booster().inplace_predict(np.asarray(x), iteration_range=trees).astype("float64")
    return -estimator.score_samples(x)


def _weights(y: np.ndarray, strategy: str, seed: int) -> tuple[np.ndarray, float]:
    """Sample weights (0 drops a row) and ``scale_pos_weight`` for an imbalance ``strategy``."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    ratio = neg / max(pos, 1)
    weights = np.ones(len(y))
    if strategy == "undersample_10":
        rng = np.random.default_rng(seed)
        negatives = np.flatnonzero(y == 0)
        keep = rng.choice(negatives, size=min(len(negatives), 10 * max(pos, 1)), replace=False)
        weights[negatives] = 0.0
        weights[keep] = 1.0
        return weights, 1.0
    scale = {"none": 1.0, "sqrt_weight": math.sqrt(ratio), "balanced_weight": ratio}[strategy]
    return weights, scale


def _classifier(cfg: XGBoostSettings, seed: int, scale_pos_weight: float, n_estimators: int, early: bool):
    return xgb.XGBClassifier(
        n_estimators=n_estimators,
        max_depth=cfg.max_depth,
        learning_rate=cfg.learning_rate,
        subsample=cfg.subsample,
        colsample_bytree=cfg.colsample_bytree,
        min_child_weight=cfg.min_child_weight,
        scale_pos_weight=scale_pos_weight,
        tree_method="hist",
        eval_metric="aucpr",
        early_stopping_rounds=cfg.early_stopping_rounds if early else None,
        random_state=seed,
        n_jobs=2,
    )


def fit_xgboost(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    cfg: XGBoostSettings,
    seed: int,
    strategies: tuple[str, ...] = STRATEGIES,
) -> tuple[Fitted, np.ndarray]:
    """Try every imbalance strategy with early stopping on the validation rows and keep the best by average
    precision; return it and its validation scores (refit on train + validation with ``refit``)."""
    if y_train.sum() == 0 or y_valid.sum() == 0:
        raise ValueError("the training and the validation days both need fraud labels to fit a classifier")
    trials = {}
    for strategy in strategies:
        weights, scale = _weights(y_train, strategy, seed)
        keep = weights > 0
        clf = _classifier(cfg, seed, scale, cfg.n_estimators, early=True)
        clf.fit(x_train[keep], y_train[keep], eval_set=[(x_valid, y_valid)], verbose=False)
        valid_score = clf.predict_proba(x_valid)[:, 1]
        trials[strategy] = (float(average_precision_score(y_valid, valid_score)), clf, scale, valid_score)
    best = max(trials, key=lambda s: trials[s][0])
    _, clf, scale, valid_score = trials[best]
    params = {
        **cfg.model_dump(),
        "n_estimators": int(clf.best_iteration) + 1,
        "imbalance_strategy": best,
        "scale_pos_weight": scale,
        "seed": seed,
    }
    validation = {f"validation_ap_{s}": t[0] for s, t in trials.items()}
    return Fitted("xgboost", clf, params, validation, list(x_train.columns)), valid_score


def fit_isolation_forest(x_train: pd.DataFrame, cfg: IsolationForestSettings, seed: int) -> Fitted:
    """Median-impute the unknowns (no history yet) and fit the forest on every row, labels unseen."""
    pipe = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            (
                "forest",
                IsolationForest(
                    n_estimators=cfg.n_estimators,
                    max_samples=min(cfg.max_samples, len(x_train)),
                    max_features=cfg.max_features,
                    random_state=seed,
                    n_jobs=1,
                ),
            ),
        ]
    )
    pipe.fit(x_train)
    return Fitted("isolation_forest", pipe, {**cfg.model_dump(), "seed": seed}, features=list(x_train.columns))


def refit(
    fitted: Fitted, x: pd.DataFrame, y: np.ndarray, xgb_cfg: XGBoostSettings, if_cfg: IsolationForestSettings, seed: int
) -> Fitted:
    """The same model (strategy, tree count) fitted again on all of ``x`` (train + validation days)."""
    if fitted.kind == "isolation_forest":
        return Fitted(
            "isolation_forest",
            fit_isolation_forest(x, if_cfg, seed).estimator,
            fitted.params,
            fitted.validation,
            list(x.columns),
        )
    p = fitted.params
    weights, scale = _weights(y, p["imbalance_strategy"], seed)
    keep = weights > 0
    clf = _classifier(xgb_cfg, seed, scale, p["n_estimators"], early=False)
    clf.fit(x[keep], y[keep], verbose=False)
    return Fitted("xgboost", clf, p, fitted.validation, list(x.columns))


def importance(fitted: Fitted) -> pd.Series:
    """Feature importance by total gain (XGBoost only), highest first."""
    gain = fitted.estimator.get_booster().get_score(importance_type="total_gain")
    return pd.Series(gain, dtype="float64").sort_values(ascending=False)


def top_reasons(kind: Kind, estimator, x: pd.DataFrame, k: int = 3) -> list[list[str]]:
    """Per row, the ``k`` features that pushed its score up most: XGBoost's exact tree SHAP contributions
    (positive ones only, largest first); an Isolation Forest has none."""
    if kind != "xgboost" or len(x) == 0:
        return [[] for _ in range(len(x))]
    # from the array, one thread for a few rows: a DMatrix of a pandas frame costs ~15 ms, ~3 ms with threads
    data = xgb.DMatrix(x.to_numpy(), feature_names=list(x.columns), nthread=1 if len(x) <= 1000 else None)
    contribs = estimator.get_booster().predict(data, pred_contribs=True)[:, :-1]
    names = np.asarray(x.columns)
    top = np.argsort(-contribs, axis=1)[:, :k]
    return [[str(names[j]) for j in row if contribs[i, j] > 0] for i, row in enumerate(top)]
