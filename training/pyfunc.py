"""The MLflow model both scorers are registered as: one pyfunc whose ``predict`` takes feature rows and returns
a ``score`` column in [0, 1], whatever the algorithm — so the stream and the API load ``models:/NAME@champion``
without knowing which kind it is.

The estimator is stored in its own format (XGBoost JSON, a joblib'd scikit-learn pipeline); the model's
metadata carries its kind, feature list and version, and the operating thresholds.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import mlflow.pyfunc
import pandas as pd

from training.dataset import matrix
from training.models import Fitted, Kind, score

ARTIFACT = "estimator"


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
    """``predict(rows) -> DataFrame[score]`` for an XGBoost or an Isolation Forest estimator."""

    def __init__(self, kind: Kind):
        self.kind = kind
        self.estimator = None

    def load_context(self, context) -> None:
        self.estimator = load_estimator(self.kind, context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"score": score(self.kind, self.estimator, matrix(model_input))})
