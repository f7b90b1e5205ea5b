"""Training and evaluation frames read from the feature layer's training-set tables (Delta), and the model
input matrix every scorer uses — the stream, the API and training all build it with ``matrix``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from lakehouse import delta
from lakehouse.catalog import training_set
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION, TRANSACTION_FEATURE_NAMES

FEATURES: list[str] = list(TRANSACTION_FEATURE_NAMES)
# what the evaluator needs beside the features
COLUMNS = ["transaction_id", "card_id", "event_time", "event_date", "amount", "label", "label_scenario"]


@dataclass(frozen=True)
class Dataset:
    """Rows of one training-set table for a date range, with where they came from."""

    frame: pd.DataFrame
    table: str
    uri: str
    version: int
    start: date
    end: date

    @property
    def source(self) -> str:
        return f"{self.uri}@v{self.version}"


def matrix(rows: pd.DataFrame | list[dict], features: list[str] = FEATURES) -> pd.DataFrame:
    """The model input: every feature (the transaction catalogue unless told) in catalogue order as float64,
    booleans as 0/1, unknown as NaN."""
    frame = pd.DataFrame(rows) if isinstance(rows, list) else rows
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise KeyError(f"feature columns missing from the model input: {missing}")
    return frame[features].astype("float64", copy=True).fillna(np.nan)


def array(rows: list[dict], features: list[str] = FEATURES) -> np.ndarray:
    """``matrix(rows, features).to_numpy()`` without pandas, for a request's few rows (tens of times faster)."""
    try:
        return np.array([[row[f] for f in features] for row in rows], dtype="float64").reshape(len(rows), len(features))
    except KeyError:
        missing = sorted({f for row in rows for f in features if f not in row}, key=features.index)
        raise KeyError(f"feature columns missing from the model input: {missing}") from None


def load(settings: Settings, table: str, start: date, end: date) -> Dataset:
    """The rows of ``features.<table>`` with event dates ``start``..``end``, sorted by event time."""
    spec = training_set(table)
    uri = spec.uri(settings)
    if not delta.table_exists(settings, uri):
        raise FileNotFoundError(
            f"{spec.full_name} does not exist: build it with `python -m features build-training-set`"
        )
    version = delta.open_table(settings, uri).version()
    arrow = delta.read_arrow(
        settings,
        uri,
        version,
        columns=[*COLUMNS, *FEATURES, "feature_version"],
        filters=[("event_date", ">=", start), ("event_date", "<=", end)],
    )
    frame = arrow.to_pandas().sort_values(["event_time", "transaction_id"], ignore_index=True)
    versions = set(frame["feature_version"].unique())
    if versions - {FEATURE_VERSION}:
        raise ValueError(
            f"{spec.full_name} holds feature versions {sorted(versions)}, this code computes "
            f"{FEATURE_VERSION}: rebuild the training set"
        )
    if frame.empty:
        raise ValueError(f"{spec.full_name} has no rows for {start}..{end}")
    return Dataset(frame, spec.full_name, uri, version, start, end)
