"""The MLflow Model Registry side: registering a fitted scorer, moving the ``champion``/``challenger`` aliases,
and a loader that follows an alias while the stream or the API runs.

A data scientist promotes a challenger by moving the ``champion`` alias (MLflow UI or ``python -m training
promote``); every running ``AliasFollower`` (the stream's driver) and ``ModelLoader`` (the API) re-resolves its
alias each ``models.refresh_seconds`` and takes the new version without a restart. Each score carries the
version that produced it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from lakehouse.config import Settings
from training.dataset import array, matrix
from training.models import Fitted, top_reasons
from training.pyfunc import model_args

CHAMPION, CHALLENGER = "champion", "challenger"
log = logging.getLogger(__name__)


def client(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)
    return MlflowClient(settings.mlflow.tracking_uri, settings.mlflow.tracking_uri)


def log_model(fitted: Fitted, name: str, example: pd.DataFrame, metadata: dict) -> tuple[str, str]:
    """Log ``fitted`` as a pyfunc to the active run and register it as a new version of ``name``;
    returns (model URI, version)."""
    with tempfile.TemporaryDirectory() as tmp:
        sample = matrix(
            example.head(2000), fitted.features
        )  # enough rows to see which features can be unknown (optional)
        info = mlflow.pyfunc.log_model(
            name="model",
            **model_args(fitted, Path(tmp)),
            signature=infer_signature(sample, pd.DataFrame({"score": fitted.score(sample)})),
            input_example=sample.head(5),
            registered_model_name=name,
            metadata=metadata,
            pip_requirements=_requirements(fitted),
        )
    return info.model_uri, str(info.registered_model_version)


def _requirements(fitted: Fitted) -> list[str]:
    from importlib.metadata import version

    pkgs = ["mlflow", "pandas", "numpy", "scikit-learn", "joblib"]
    pkgs += ["xgboost"] if fitted.kind == "xgboost" else []
    return [f"{p}=={version('xgboost-cpu' if p == 'xgboost' else p)}" for p in pkgs]


def alias_version(mc: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None if it is unset (or the model does not exist); any other
    failure (the registry unreachable) raises."""
    try:
        return str(mc.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def assign_aliases(mc: MlflowClient, name: str, version: str) -> dict[str, str]:
    """A new version becomes the challenger; the first version of a model is also its champion."""
    mc.set_registered_model_alias(name, CHALLENGER, version)
    if alias_version(mc, name, CHAMPION) is None:
        mc.set_registered_model_alias(name, CHAMPION, version)
    return {a: v for a in (CHAMPION, CHALLENGER) if (v := alias_version(mc, name, a))}


def promote(mc: MlflowClient, name: str, version: str | None = None) -> dict[str, str | None]:
    """Point ``champion`` at ``version`` (default: the challenger); the challenger alias is then dropped."""
    version = version or alias_version(mc, name, CHALLENGER)
    if version is None:
        raise ValueError(f"{name} has no challenger to promote: give a version")
    mc.get_model_version(name, version)  # fails clearly on an unknown version
    previous = alias_version(mc, name, CHAMPION)
    mc.set_registered_model_alias(name, CHAMPION, version)
    if alias_version(mc, name, CHALLENGER) == version:
        mc.delete_registered_model_alias(name, CHALLENGER)
    return {"model": name, "champion": version, "previous_champion": previous}


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: str
    model: mlflow.pyfunc.PyFuncModel
    metadata: dict
    loaded_at: float

    @property
    def features(self) -> list[str]:
        """The model input's columns, in order."""
        return self.model.unwrap_python_model().features

    def score(self, rows: pd.DataFrame | list[dict]) -> pd.Series:
        """Scores of feature rows (raw values: booleans, None) — converted as ``matrix`` does in training."""
        x = matrix(rows, self.features).to_numpy() if isinstance(rows, pd.DataFrame) else array(rows, self.features)
        return pd.Series(self.score_matrix(x), name="score")

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of the model input ``x`` (``array(rows, self.features)``). The pyfunc's own scoring is called
        directly: MLflow's schema check and the frames around ``predict`` would cost more than the model on a
        single-row request."""
        return self.model.unwrap_python_model().score_matrix(x)

    def reasons(self, x: pd.DataFrame, k: int = 3) -> list[list[str]]:
        """Per row of the model input ``x`` (``matrix``), the features that raised its score most (SHAP)."""
        model = self.model.unwrap_python_model()
        return top_reasons(model.kind, model.estimator, x, k)

    @property
    def thresholds(self) -> dict[str, float]:
        return self.metadata.get("thresholds", {})


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as the alias pointed when it was resolved."""

    name: str
    alias: str
    version: str


def load(settings: Settings, ref: ModelRef) -> LoadedModel:
    """Load a registered version (its pyfunc and metadata) from the registry."""
    client(settings)  # the tracking and registry URIs of this process
    model = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}")
    return LoadedModel(ref.name, ref.alias, ref.version, model, model.metadata.metadata or {}, time.time())


class AliasFollower:
    """Follows ``models:/NAME@ALIAS``: resolves it once, then again every ``refresh_seconds`` in a background
    thread, and keeps what ``resolved`` makes of each new version (here the ``ModelRef``). A failed refresh keeps
    what it has (and retries); ``current`` never blocks on the registry."""

    def __init__(self, settings: Settings, name: str, alias: str = CHAMPION, refresh_seconds: float | None = None):
        # MLflow retries an unreachable server for minutes by default; a follower would rather retry on its own
        # next refresh (unless the process configured these itself)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.settings, self.name, self.alias = settings, name, alias
        self.refresh_seconds = refresh_seconds or settings.models.refresh_seconds
        self._client = client(settings)
        self._current = None
        self._stop = threading.Event()
        try:
            self.refresh()
        except Exception as exc:  # the registry down at start: nothing until a background refresh gets it
            log.warning("models:/%s@%s unavailable (retrying every %s s): %s", name, alias, self.refresh_seconds, exc)
        self._thread = threading.Thread(target=self._run, name=f"model-loader-{name}@{alias}", daemon=True)
        self._thread.start()

    def resolved(self, ref: ModelRef):
        return ref

    @property
    def current(self):
        if self._current is None:
            raise LookupError(f"models:/{self.name}@{self.alias} is not set")
        return self._current

    def refresh(self) -> bool:
        """Re-resolve the alias now; True if a new version was taken."""
        version = alias_version(self._client, self.name, self.alias)
        if version is None or (self._current is not None and self._current.version == version):
            return False
        self._current = self.resolved(ModelRef(self.name, self.alias, version))
        log.info("models:/%s@%s is now version %s", self.name, self.alias, version)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception as exc:  # the registry may be down: keep the version we have
                log.warning(
                    "refreshing models:/%s@%s failed (keeping version %s): %s",
                    self.name,
                    self.alias,
                    self._current.version if self._current else None,
                    exc,
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ModelLoader(AliasFollower):
    """An ``AliasFollower`` that loads each version it follows (the API's and the tests' in-process scoring)."""

    def resolved(self, ref: ModelRef) -> LoadedModel:
        return load(self.settings, ref)

    @property
    def current(self) -> LoadedModel:
        return super().current


def describe(mc: MlflowClient, names: list[str]) -> dict[str, list[dict]]:
    """Every version of each registered model: its aliases, run and tags."""
    out: dict[str, list[dict]] = {}
    for name in names:
        try:
            aliases = mc.get_registered_model(name).aliases  # alias -> version
        except MlflowException:
            out[name] = []
            continue
        versions = sorted(mc.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        out[name] = [
            {
                "version": v.version,
                "aliases": sorted(a for a, n in aliases.items() if str(n) == str(v.version)),
                "run_id": v.run_id,
                "tags": v.tags,
            }
            for v in versions
        ]
    return out
