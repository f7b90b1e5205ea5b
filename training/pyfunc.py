"""The MLflow model both scorers are registered as: one pyfunc whose ``predict`` takes feature rows and returns
a ``score`` column in [0, 1], whatever the algorithm — so the stream and the API load ``models:/NAME@champion``
without knowing which kind it is.

The estimator is stored in its own format (XGBoost JSON, a joblib'd scikit-learn pipeline); the model's
metadata carries its kind, feature list and version, and the operating thresholds. The model is logged from
code (``training/pyfunc_entry.py``, MLflow's models-from-code), not as a pickled object: loading it runs no
pickled code but needs this package installed, as the stream and the API have it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import mlflow.pyfunc
import numpy as np
import pandas as pd

from training.dataset import FEATURES, matrix
from training.forest import CompiledForest
from training.models import Fitted, Kind, score

ARTIFACT = "estimator"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
COMPILED_MAX_ROWS = 1000  # above this, scikit-learn's tree walk is the faster one


def save_estimator(fitted: Fitted, directory: Path) -> Path:
    """Write the estimator in its native format under ``directory``; the path is the pyfunc's artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    if fitted.kind == "xgboost":
        path = directory / "model.xgb.json"
        fitted.estimator.save_model(path)
    else:
        path = directory / "model.joblib"
        joblib.dump(fitted.estimator, path)
    return path


def load_estimator(kind: Kind, path: str):
    if kind == "xgboost":
        import xgboost as xgb

        clf = xgb.XGBClassifier()
        clf.load_model(path)
        return clf
    return joblib.load(path)


class FraudModel(mlflow.pyfunc.PythonModel):
    """``predict(rows) -> DataFrame[score]`` for an XGBoost or an Isolation Forest estimator; the kind and the
    input's feature columns come from the model config (``model_config={"kind": ..., "features": [...]}``; the
    transaction catalogue when a model has no list) when the model is loaded."""

    def __init__(self, kind: Kind | None = None, features: list[str] | None = None):
        self.kind = kind
        self.features = features or FEATURES
        self.estimator = None
        self.forest: CompiledForest | None = None

    def load_context(self, context) -> None:
        self.kind = self.kind or context.model_config["kind"]
        self.features = context.model_config.get("features") or self.features
        self.estimator = load_estimator(self.kind, context.artifacts[ARTIFACT])
        self.forest = CompiledForest.of(self.estimator) if self.kind == "isolation_forest" else None
        if self.kind == "xgboost":  # one thread: a pool's hand-off costs more than a request's or a batch's trees
            self.estimator.get_booster().set_param({"nthread": 1})

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"score": self.score_matrix(matrix(model_input, self.features).to_numpy())})

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of the model input ``x`` (rows of ``self.features`` as float64, NaN for unknown). A forest scores
        up to ``COMPILED_MAX_ROWS`` rows compiled (the same values, without scikit-learn's per-call cost)."""
        if self.forest is not None and len(x) <= COMPILED_MAX_ROWS:
            return self.forest.score(x)
        if self.kind == "xgboost":
            return score(self.kind, self.estimator, x)
        return score(self.kind, self.estimator, pd.DataFrame(x, columns=self.features))


def model_args(fitted: Fitted, directory: Path) -> dict[str, Any]:
    """What ``mlflow.pyfunc.log_model``/``save_model`` need for ``fitted``: the code entry, the estimator saved
    under ``directory`` as the artifact, and its kind and feature columns as model config."""
    artifact = save_estimator(fitted, directory)
    config = {"kind": fitted.kind, "features": fitted.features}
    return {"python_model": str(ENTRY), "artifacts": {ARTIFACT: str(artifact)}, "model_config": config}
