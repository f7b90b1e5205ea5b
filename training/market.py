"""The market's anomaly model: an Isolation Forest on the tick features of ``features.market_ticks``.

It is fitted on the training days' ticks (labels unseen), its alert threshold is the (1 - ``market_alert_rate``)
quantile of their scores, and it is registered as ``models.market_name`` with the median and IQR of every
feature on the training ticks: the stream explains an anomalous tick by the features furthest from them.
Synthetic ticks carry the anomaly they were injected with (``scenario`` in silver), so detection per scenario is
measured on the test days.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from lakehouse import delta
from lakehouse.catalog import MARKET_FEATURES_TABLE, MARKET_TICKS
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION, MARKET_FEATURE_NAMES
from training import registry, report
from training.dataset import matrix
from training.models import fit_isolation_forest
from training.report import progress

FEATURES: list[str] = list(MARKET_FEATURE_NAMES)


def load_ticks(settings: Settings, start: date, end: date) -> pd.DataFrame:
    """The feature rows of the ticks of ``start``..``end`` with their injected anomaly (null: a normal tick)."""
    dates = [("event_date", ">=", start), ("event_date", "<=", end)]
    uri = MARKET_FEATURES_TABLE.uri(settings)
    if not delta.table_exists(settings, uri):
        return pd.DataFrame(columns=["symbol", "event_time", "scenario", *FEATURES])
    vectors = delta.read_arrow(settings, uri, columns=["symbol", "event_time", *FEATURES], filters=dates).to_pandas()
    truth = delta.read_arrow(
        settings, MARKET_TICKS.uri(settings), columns=["symbol", "event_time", "scenario"], filters=dates
    ).to_pandas()
    frame = vectors.merge(truth.drop_duplicates(["symbol", "event_time"]), on=["symbol", "event_time"], how="left")
    return frame.sort_values(["event_time", "symbol"], ignore_index=True)


def profile(x: pd.DataFrame) -> dict[str, list[float]]:
    """Per feature, [median, IQR] of the training ticks (IQR floored so a constant feature divides safely)."""
    q1, med, q3 = (x.quantile(q) for q in (0.25, 0.5, 0.75))
    return {f: [float(med[f]), float(max(q3[f] - q1[f], 1e-12))] for f in x.columns if not np.isnan(med[f])}


def reasons(x: pd.DataFrame, prof: dict[str, list[float]], k: int) -> list[list[str]]:
    """Per row, the ``k`` features furthest from the training median, in IQRs: ``"tick_log_return=-6.3iqr"``."""
    cols = [f for f in x.columns if f in prof]
    med = np.array([prof[f][0] for f in cols])
    iqr = np.array([prof[f][1] for f in cols])
    dev = (x[cols].to_numpy() - med) / iqr
    size = np.nan_to_num(np.abs(dev), nan=-1.0)
    out = []
    for i in range(len(x)):
        top = np.argsort(-size[i], kind="stable")[:k]
        out.append([f"{cols[j]}={dev[i, j]:+.1f}iqr" for j in top if size[i, j] >= 0])
    return out


def detection(frame: pd.DataFrame, flagged: np.ndarray) -> dict:
    """Alert rate, the share of alerts on injected ticks (precision), and the share of injected ticks alerted
    per scenario (recall)."""
    injected = frame["scenario"].notna().to_numpy()
    out = {
        "ticks": len(frame),
        "alert_rate": float(flagged.mean()) if len(frame) else 0.0,
        "precision": float(injected[flagged].mean()) if flagged.any() else 0.0,
        "recall": float(flagged[injected].mean()) if injected.any() else 0.0,
    }
    for scenario, rows in frame.groupby("scenario").groups.items():
        out[f"recall_{scenario}"] = float(flagged[frame.index.get_indexer(rows)].mean())
    return out


def train_market(settings: Settings, train: tuple[date, date], test: tuple[date, date], out: Path) -> dict | None:
    """Fit, evaluate and register the market model as a nested run of the active run; None without ticks."""
    m = settings.models
    frame = load_ticks(settings, *train)
    if len(frame) < 100:
        progress(f"market: {len(frame)} ticks in {train[0]}..{train[1]}, no market model fitted")
        return None
    x = matrix(frame, FEATURES)
    fitted = fit_isolation_forest(x, m.isolation_forest, m.seed)
    threshold = float(np.quantile(fitted.score(x), 1 - m.market_alert_rate))
    test_frame = load_ticks(settings, *test)
    test_score = fitted.score(matrix(test_frame, FEATURES)) if len(test_frame) else np.array([])
    result = detection(test_frame, test_score >= threshold)
    with mlflow.start_run(run_name="market_isolation_forest", nested=True) as run:
        mlflow.log_params({f"market.{k}": v for k, v in fitted.params.items()})
        mlflow.log_params({"market.alert_rate": m.market_alert_rate, "market.train_ticks": len(frame)})
        mlflow.log_metrics({"market_threshold": threshold, **{f"market_test_{k}": v for k, v in result.items()}})
        mlflow.log_dict(result, "market_metrics.json")
        if len(test_frame):
            plotted = test_frame.assign(score=test_score, label=test_frame["scenario"].notna().astype(int))
            plot = report.distribution_plot(
                plotted, {"alert": threshold}, "market: test tick scores", out / "market_scores.png",
                names=("normal", "injected"),
            )  # fmt: skip
            mlflow.log_artifact(str(plot), "plots")
        metadata = {
            "kind": "isolation_forest",
            "features": FEATURES,
            "feature_version": FEATURE_VERSION,
            "thresholds": {"alert": threshold},
            "profile": profile(x),
            "train_period": f"{train[0]}..{train[1]}",
            "test_period": f"{test[0]}..{test[1]}",
        }
        uri, version = registry.log_model(fitted, m.market_name, frame, metadata)
        mc = registry.client(settings)
        mc.set_model_version_tag(m.market_name, version, "run_id", run.info.run_id)
        aliases = registry.assign_aliases(mc, m.market_name, version)
    progress(
        f"market: {len(frame)} training ticks, alert threshold {threshold:.4f}; test recall {result['recall']:.3f}, "
        f"precision {result['precision']:.3f}; registered {m.market_name} v{version}, aliases {aliases}"
    )
    return {"name": m.market_name, "version": version, "uri": uri, "aliases": aliases, "threshold": threshold,
            "metrics": result, "run_id": run.info.run_id}  # fmt: skip
