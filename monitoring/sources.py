"""What the report reads, at the edges: gold.decisions and the silver labels of a period (delta-rs), the
registered model versions and their training periods (MLflow), and seeded samples of the training-period
feature vectors and of the period's scored vectors.

A model version's reference is its own training period: the ``train_period`` in its metadata, read from the
training-set table at the Delta version its training run recorded (``train_table`` = ``uri@vN``, time travel),
or the table's newest version when that one is gone (vacuumed) or was not recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from mlflow import MlflowClient

from lakehouse import delta
from lakehouse.catalog import DECISIONS_TABLE, TRAINING_SET, TRANSACTIONS
from lakehouse.config import Settings
from training import registry
from training.dataset import FEATURES, matrix

log = logging.getLogger(__name__)

# what the figures need (the feature JSON is sampled apart: ``period_features``)
DECISION_COLUMNS = ["transaction_id", "event_time", "event_date", "decision", "model_name", "model_version",
                    "ml_probability", "shadow_model_version", "shadow_decision", "shadow_probability",
                    "anomaly_model_version", "anomaly_raw", "triggered_rules", "scoring_ms", "latency_ms",
                    "decided_at"]  # fmt: skip


def _between(start: date, end: date) -> list[tuple[str, str, date]]:
    return [("event_date", ">=", start), ("event_date", "<=", end)]


def decision_dates(settings: Settings) -> list[date]:
    """The event dates gold.decisions holds (its partitions), sorted."""
    uri = DECISIONS_TABLE.uri(settings)
    if not delta.table_exists(settings, uri):
        raise FileNotFoundError(f"{DECISIONS_TABLE.full_name} does not exist yet: run the stream (make stream)")
    return sorted({date.fromisoformat(p["event_date"]) for p in delta.open_table(settings, uri).partitions()})


def default_period(settings: Settings, days: int) -> tuple[date, date]:
    """The newest ``days`` event dates of gold.decisions (the last one may still be filling)."""
    dates = decision_dates(settings)
    if not dates:
        raise ValueError(f"{DECISIONS_TABLE.full_name} is empty: run the stream (make stream)")
    return dates[-1] - timedelta(days=days - 1), dates[-1]


def read_decisions(settings: Settings, start: date, end: date) -> tuple[pd.DataFrame, int]:
    """The period's decisions (``DECISION_COLUMNS``) and the table version read."""
    uri = DECISIONS_TABLE.uri(settings)
    version = delta.open_table(settings, uri).version()
    arrow = delta.read_arrow(settings, uri, version, columns=DECISION_COLUMNS, filters=_between(start, end))
    return arrow.to_pandas(), version


def read_labels(settings: Settings, start: date, end: date) -> tuple[pd.DataFrame, int]:
    """silver.transactions' label and amount of the period's transactions, and the table version read."""
    uri = TRANSACTIONS.uri(settings)
    version = delta.open_table(settings, uri).version()
    cols = ["transaction_id", "label", "amount"]
    return delta.read_arrow(settings, uri, version, columns=cols, filters=_between(start, end)).to_pandas(), version


def sample(dataset: ds.Dataset, columns: list[str], where: ds.Expression, n: int, seed: int) -> pa.Table:
    """About ``n`` rows of ``dataset`` matching ``where``, each kept with the same probability (seeded), read a
    batch at a time so memory stays bounded whatever the table's size."""
    total = dataset.count_rows(filter=where)
    keep = 1.0 if total <= n else n / total
    rng = np.random.default_rng(seed)
    parts = []
    for batch in dataset.to_batches(columns=columns, filter=where):
        parts.append(batch if keep == 1.0 else batch.filter(pa.array(rng.random(batch.num_rows) < keep)))
    if not parts:
        return dataset.schema.empty_table().select(columns)
    return pa.Table.from_batches(parts)


def _dataset(settings: Settings, uri: str, version: int | None = None) -> ds.Dataset:
    return delta.open_table(settings, uri, version).to_pyarrow_dataset()


def _where(start: date, end: date) -> ds.Expression:
    return (ds.field("event_date") >= pa.scalar(start, pa.date32())) & (
        ds.field("event_date") <= pa.scalar(end, pa.date32())
    )


def features_frame(values: list[str | None], features: list[str]) -> pd.DataFrame:
    """The model input (``matrix``) of decisions' feature JSON; a feature absent from a row is NaN."""
    records = [json.loads(v) if v else {} for v in values]
    return matrix(pd.DataFrame.from_records(records).reindex(columns=features), features)


def period_features(settings: Settings, start: date, end: date, features: list[str]) -> pd.DataFrame:
    """A seeded sample (``monitoring.period_rows``) of the feature vectors the period's decisions were made on."""
    m = settings.monitoring
    table = sample(_dataset(settings, DECISIONS_TABLE.uri(settings)), ["features"], _where(start, end),
                   m.period_rows, m.seed)  # fmt: skip
    return features_frame(table.column("features").to_pylist(), features)


@dataclass
class ModelVersion:
    """A registered version with what the report needs: its scorer, thresholds and training period."""

    model: registry.LoadedModel
    train_start: date
    train_end: date
    table_uri: str
    table_version: int | None
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    @property
    def label(self) -> str:
        return f"{self.model.name} v{self.model.version}"

    @property
    def reference(self) -> str:
        at = "" if self.table_version is None else f"@v{self.table_version}"
        return f"{self.table_uri}{at} {self.train_start}..{self.train_end}"


def training_table(mc: MlflowClient, name: str, version: str, default_uri: str) -> tuple[str, int | None]:
    """The training-set table and Delta version a version's training run read (its parent run's
    ``train_table`` parameter, ``uri@vN``); ``(default_uri, None)`` when the run did not record it."""
    run = mc.get_run(mc.get_model_version(name, version).run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    params = mc.get_run(parent).data.params if parent else run.data.params
    source = params.get("train_table")
    if not source or "@v" not in source:
        return default_uri, None
    uri, _, v = source.rpartition("@v")
    return uri, int(v)


def model_version(settings: Settings, mc: MlflowClient, name: str, version: str) -> ModelVersion:
    """Load ``models:/name/version`` (pyfunc) with its training period and training-set table."""
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    meta = pyfunc.metadata.metadata or {}
    if "train_period" not in meta:
        raise ValueError(f"{name} v{version} records no train_period in its metadata")
    start, _, end = meta["train_period"].partition("..")
    uri, table_version = training_table(mc, name, version, TRAINING_SET.uri(settings))
    loaded = registry.LoadedModel(name, "", str(version), pyfunc, meta, 0.0)
    features = list(meta.get("features") or FEATURES)
    return ModelVersion(loaded, date.fromisoformat(start), date.fromisoformat(end), uri, table_version, features)


def champion(settings: Settings, mc: MlflowClient) -> ModelVersion:
    """The supervised model's champion version."""
    name = settings.models.supervised_name
    version = registry.alias_version(mc, name, registry.CHAMPION)
    if version is None:
        raise LookupError(f"models:/{name}@{registry.CHAMPION} is not set: train a model first (make train)")
    return model_version(settings, mc, name, version)


class References:
    """Seeded samples (``monitoring.reference_rows``) of training periods' feature vectors, read once each."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[tuple, pd.DataFrame] = {}

    def rows(self, mv: ModelVersion) -> pd.DataFrame:
        key = (mv.table_uri, mv.table_version, mv.train_start, mv.train_end)
        if key not in self._cache:
            self._cache[key] = self._read(mv)
        return self._cache[key]

    def _read(self, mv: ModelVersion) -> pd.DataFrame:
        try:
            table = self._sample(mv)
        except Exception as exc:  # that version's log or files were vacuumed (or never recorded): the newest one
            if mv.table_version is None:
                raise
            log.warning("%s at v%s unreadable (%s): reading its newest version", mv.table_uri, mv.table_version, exc)
            mv.table_version = None
            table = self._sample(mv)
        if table.num_rows == 0:
            raise ValueError(f"{mv.reference} holds no rows: the training period's vectors are gone")
        return matrix(table.to_pandas().reindex(columns=FEATURES), FEATURES)

    def _sample(self, mv: ModelVersion) -> pa.Table:
        m = self.settings.monitoring
        dataset = _dataset(self.settings, mv.table_uri, mv.table_version)
        columns = [c for c in FEATURES if c in dataset.schema.names]
        return sample(dataset, columns, _where(mv.train_start, mv.train_end), m.reference_rows, m.seed)
