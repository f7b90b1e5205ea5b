"""``python -m training train``: build the train and test sets from the feature layer, fit XGBoost and Isolation
Forest, evaluate both on the later held-out period, log everything to MLflow and register both models.

The split is by time: ``train_days``, a gap as long as the label delay, then ``test_days``. The last
``validation_share`` of the training days chooses XGBoost's imbalance strategy, its tree count (early stopping)
and both models' operating thresholds (review at ``review_fpr``, block at ``block_fpr``); the models are then
refitted on every training day. Test labels never touch training.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource

from lakehouse import delta
from lakehouse.catalog import EVALUATION_SET, TRAINING_SET, TRANSACTIONS
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION
from training import metrics, registry, report
from training.dataset import FEATURES, Dataset, load, matrix
from training.market import train_market
from training.models import Fitted, fit_isolation_forest, fit_xgboost, refit
from training.report import progress
from training.split import Periods, periods

TRAIN_TABLE, TEST_TABLE = TRAINING_SET.name, EVALUATION_SET.name


def default_range(settings: Settings, days: int) -> tuple[date, date]:
    """The last ``days`` complete event dates of silver.transactions (the newest date may still be filling)."""
    uri = TRANSACTIONS.uri(settings)
    dates = sorted(date.fromisoformat(p["event_date"]) for p in delta.open_table(settings, uri).partitions())
    if len(dates) < days + 1:
        raise ValueError(
            f"silver.transactions has {len(dates)} event dates, training needs {days} complete ones: generate "
            f"history first, e.g. `python -m tools.traffic generate --days {days + 1} --speedup 0`"
        )
    end = dates[-2]
    return end - timedelta(days=days - 1), end


def build_sets(settings: Settings, p: Periods, label_delay: timedelta) -> tuple[Dataset, Dataset]:
    """Build (or rebuild) the point-in-time train and test sets with Spark and read them back."""
    from features.training_set import build
    from lakehouse.spark import get_spark

    spark = get_spark(settings, "train")
    try:
        build(spark, settings, p.train_start, p.train_end, label_delay, TRAIN_TABLE)
        build(spark, settings, p.test_start, p.test_end, label_delay, TEST_TABLE)
    finally:
        spark.stop()
    return load(settings, TRAIN_TABLE, p.train_start, p.train_end), load(settings, TEST_TABLE, p.test_start, p.test_end)


def validation_mask(frame: pd.DataFrame, share: float) -> np.ndarray:
    """True for the rows of the last ``share`` of the training days (at least one day, if there are two)."""
    days = sorted(frame["event_date"].unique())
    n = max(1, round(len(days) * share)) if len(days) > 1 else 0
    if n:
        return frame["event_date"].isin(days[-n:]).to_numpy()
    cut = frame["event_time"].quantile(1 - share)  # a single day: split it by time
    return (frame["event_time"] >= cut).to_numpy()


def operating_thresholds(y: np.ndarray, score: np.ndarray, settings: Settings) -> dict[str, float]:
    m = settings.models
    return {
        "review": metrics.threshold_at_fpr(y, score, m.review_fpr),
        "block": metrics.threshold_at_fpr(y, score, m.block_fpr),
    }


def scored(ds: Dataset, score: np.ndarray) -> pd.DataFrame:
    cols = ["transaction_id", "card_id", "event_date", "amount", "label", "label_scenario"]
    return ds.frame[cols].assign(score=np.asarray(score, dtype="float64"))


def evaluation(settings: Settings, frame: pd.DataFrame, thresholds: dict[str, float]) -> dict:
    m = settings.models
    return metrics.evaluate(frame, thresholds, k=m.top_k_cards, max_fpr=m.review_fpr, review_cost=m.review_cost)


def flatten(result: dict, prefix: str) -> dict[str, float]:
    """MLflow metrics from an ``evaluate`` result: ``test_roc_auc``, ``test_review_precision``,
    ``test_review_card_testing_detection_rate``, ``test_at_fpr_money_net_saved``..."""
    out: dict[str, float] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, key if k in ("operating_points", "scenarios") else f"{key}_{k}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)

    walk(result, prefix)
    return out


def log_dataset(ds: Dataset, context: str) -> None:
    source = DeltaDatasetSource(path=ds.uri, delta_table_version=ds.version)
    data = mlflow.data.from_pandas(ds.frame, source=source, name=ds.table, targets="label")
    mlflow.log_input(data, context=context)


def _fit_and_log(settings: Settings, kind: str, train: Dataset, test: Dataset, valid: np.ndarray, out: Path) -> dict:
    """One nested run: fit on the training days minus validation, choose thresholds, refit, test, register."""
    m = settings.models
    x, y = matrix(train.frame), train.frame["label"].to_numpy()
    if kind == "xgboost":
        fitted, valid_score = fit_xgboost(x[~valid], y[~valid], x[valid], y[valid], m.xgboost, m.seed)
        name = m.supervised_name
    else:
        fitted = fit_isolation_forest(x[~valid], m.isolation_forest, m.seed)
        valid_score, name = fitted.score(x[valid]), m.unsupervised_name
    thresholds = operating_thresholds(y[valid], valid_score, settings)
    final: Fitted = refit(fitted, x, y, m.xgboost, m.isolation_forest, m.seed)
    frame = scored(test, final.score(matrix(test.frame)))
    result = evaluation(settings, frame, thresholds)
    with mlflow.start_run(run_name=kind, nested=True) as run:
        mlflow.log_params({f"{kind}.{k}": v for k, v in final.params.items()})
        mlflow.log_metrics({**fitted.validation, **flatten(result, "test")})
        mlflow.log_dict(result, "metrics.json")
        mlflow.log_dict(thresholds, "thresholds.json")
        plots = [report.distribution_plot(frame, thresholds, f"{kind}: test scores", out / f"{kind}_scores.png")]
        if kind == "xgboost":
            plots += [
                report.importance_plot(final, out / "xgboost_importance.png"),
                report.shap_plot(final, matrix(test.frame), out / "xgboost_shap.png", seed=m.seed),
            ]
        for p in plots:
            mlflow.log_artifact(str(p), "plots")
        metadata = {
            "kind": kind,
            "features": FEATURES,
            "feature_version": FEATURE_VERSION,
            "thresholds": thresholds,
            "train_period": f"{train.start}..{train.end}",
            "test_period": f"{test.start}..{test.end}",
        }
        uri, version = registry.log_model(final, name, train.frame, metadata)
        mc = registry.client(settings)
        for key, value in {
            "run_id": run.info.run_id,
            "feature_version": FEATURE_VERSION,
            "test_average_precision": f"{result['average_precision']:.4f}",
            **{f"threshold_{k}": f"{v:.6f}" for k, v in thresholds.items()},
        }.items():
            mc.set_model_version_tag(name, version, key, value)
        aliases = registry.assign_aliases(mc, name, version)
    progress(
        f"{kind}: test ROC AUC {result['roc_auc']:.4f}, AP {result['average_precision']:.4f}; "
        f"registered {name} v{version}, aliases {aliases}"
    )
    return {
        "name": name,
        "version": version,
        "uri": uri,
        "aliases": aliases,
        "frame": frame,
        "metrics": result,
        "thresholds": thresholds,
        "plots": plots,
        "run_id": run.info.run_id,
        "fitted": final,
    }


def train(
    settings: Settings,
    start: date | None = None,
    end: date | None = None,
    *,
    train_days: int | None = None,
    test_days: int | None = None,
    label_delay_days: int | None = None,
    build: bool = True,
) -> dict:
    """Build the sets, fit, evaluate, log and register both models; returns a summary (and writes the report)."""
    m = settings.models
    train_days, test_days = train_days or m.train_days, test_days or m.test_days
    delay = m.label_delay_days if label_delay_days is None else label_delay_days
    if start is None or end is None:
        start, end = default_range(settings, train_days + delay + test_days)
    p = periods(start, end, train_days, delay, test_days)
    progress(f"train {p.train_start}..{p.train_end}, gap {p.gap_days} d, test {p.test_start}..{p.test_end}")
    if build:
        train_set, test_set = build_sets(settings, p, timedelta(days=delay))
    else:
        train_set = load(settings, TRAIN_TABLE, p.train_start, p.train_end)
        test_set = load(settings, TEST_TABLE, p.test_start, p.test_end)
    valid = validation_mask(train_set.frame, m.validation_share)
    registry.client(settings)
    mlflow.set_experiment(m.experiment)
    out = Path(tempfile.mkdtemp(prefix="train-"))
    with mlflow.start_run(run_name=f"train {p.train_start}..{p.test_end}") as parent:
        mlflow.log_params(
            {
                "train_start": p.train_start,
                "train_end": p.train_end,
                "gap_days": p.gap_days,
                "test_start": p.test_start,
                "test_end": p.test_end,
                "label_delay_days": delay,
                "validation_days": int(train_set.frame.loc[valid, "event_date"].nunique()),
                "feature_version": FEATURE_VERSION,
                "n_features": len(FEATURES),
                "seed": m.seed,
                "train_table": train_set.source,
                "test_table": test_set.source,
            }
        )
        mlflow.log_dict({"features": FEATURES, "feature_version": FEATURE_VERSION}, "features.json")
        log_dataset(train_set, "training")
        log_dataset(test_set, "testing")
        mlflow.log_metrics(
            {
                "train_rows": len(train_set.frame),
                "train_frauds": int(train_set.frame["label"].sum()),
                "test_rows": len(test_set.frame),
                "test_frauds": int(test_set.frame["label"].sum()),
            }
        )
        runs = {
            kind: _fit_and_log(settings, kind, train_set, test_set, valid, out)
            for kind in ("xgboost", "isolation_forest")
        }
        market = train_market(settings, (p.train_start, p.train_end), (p.test_start, p.test_end), out)
        context = {
            "MLflow run": parent.info.run_id,
            "train": f"{p.train_start}..{p.train_end} ({len(train_set.frame)} tx, "
            f"{int(train_set.frame['label'].sum())} fraud)",
            "gap (label delay)": f"{p.gap_days} days",
            "test": f"{p.test_start}..{p.test_end} ({len(test_set.frame)} tx, "
            f"{int(test_set.frame['label'].sum())} fraud)",
            "feature version": FEATURE_VERSION,
            **{f"{r['name']}": f"v{r['version']} {r['aliases']}" for r in runs.values()},
        }
        if market:
            context[market["name"]] = (
                f"v{market['version']} {market['aliases']}, alert threshold {market['threshold']:.4f}, test "
                f"recall {market['metrics']['recall']:.3f}, precision {market['metrics']['precision']:.3f}"
            )
        summary = write_report(settings, f"Training run {parent.info.run_id}", context, runs, out)
        summary.update(run_id=parent.info.run_id, periods=p, market=market)
        for kind, r in runs.items():
            summary[kind]["fitted"] = r["fitted"]
    return summary


def write_report(settings: Settings, title: str, context: dict, runs: dict[str, dict], out: Path) -> dict:
    """ROC and PR of every model, the Markdown report, logged to the active run and copied to reports_dir."""
    m = settings.models
    frames = {kind: r["frame"] for kind, r in runs.items()}
    plots = [report.roc_plot(frames, out / "roc.png"), report.pr_plot(frames, out / "pr.png")]
    plots += [p for r in runs.values() for p in r["plots"]]
    results = {f"{r['name']} v{r['version']}": r["metrics"] for r in runs.values()}
    text = report.markdown(
        title, context, results, [str(p) for p in plots], m.detectable_scenarios, m.detection_target, m.review_fpr
    )
    (out / "report.md").write_text(text)
    mlflow.log_artifacts(str(out), "report")
    run_id = mlflow.active_run().info.run_id
    dest = settings.path(m.reports_dir) / run_id
    shutil.copytree(out, dest, dirs_exist_ok=True)
    progress(f"report: {dest / 'report.md'}")
    summary = {
        kind: {k: r[k] for k in ("name", "version", "aliases", "thresholds", "run_id")} for kind, r in runs.items()
    }
    for kind, r in runs.items():
        summary[kind]["metrics"] = {k: v for k, v in r["metrics"].items() if isinstance(v, int | float)}
        summary[kind]["quality"] = report.quality(r["metrics"], m.detectable_scenarios, m.detection_target)
    (dest / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return {**summary, "report": str(dest / "report.md")}
