"""``python -m training evaluate --model NAME@ALIAS|NAME/VERSION``: re-evaluate a registered model version on any
period, at the operating thresholds it was registered with, as a new MLflow run with the same report."""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path

import mlflow
import mlflow.pyfunc

from features.training_set import build
from lakehouse.config import Settings
from training import registry, report
from training.dataset import load, matrix
from training.report import progress
from training.train import TEST_TABLE, evaluation, flatten, log_dataset, scored, write_report


def resolve(settings: Settings, ref: str) -> tuple[str, str]:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` (its champion) → (name, version)."""
    mc = registry.client(settings)
    if "/" in ref:
        name, version = ref.split("/", 1)
        mc.get_model_version(name, version)
        return name, version
    name, _, alias = ref.partition("@")
    version = registry.alias_version(mc, name, alias or registry.CHAMPION)
    if version is None:
        raise LookupError(f"models:/{name}@{alias or registry.CHAMPION} is not set")
    return name, version


def evaluate(
    settings: Settings, ref: str, start: date, end: date, label_delay_days: int | None = None, rebuild: bool = True
) -> dict:
    """Score the evaluation set of ``start``..``end`` with a registered version and log the metrics and report."""
    name, version = resolve(settings, ref)
    delay = settings.models.label_delay_days if label_delay_days is None else label_delay_days
    if rebuild:
        from lakehouse.spark import get_spark

        spark = get_spark(settings, "evaluate")
        try:
            build(spark, settings, start, end, timedelta(days=delay), TEST_TABLE)
        finally:
            spark.stop()
    data = load(settings, TEST_TABLE, start, end)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    meta = model.metadata.metadata or {}
    thresholds = meta.get("thresholds", {})
    frame = scored(data, model.predict(matrix(data.frame))["score"].to_numpy())
    result = evaluation(settings, frame, thresholds)
    mlflow.set_experiment(settings.models.experiment)
    out = Path(tempfile.mkdtemp(prefix="evaluate-"))
    kind = meta.get("kind", "model")
    with mlflow.start_run(run_name=f"evaluate {name} v{version} {start}..{end}") as run:
        mlflow.set_tags({"model_name": name, "model_version": version, "evaluation": "true"})
        mlflow.log_params(
            {"model": f"{name}/{version}", "start": start, "end": end, "label_delay_days": delay, "table": data.source}
        )
        log_dataset(data, "evaluation")
        mlflow.log_metrics(flatten(result, "eval"))
        mlflow.log_dict(result, "metrics.json")
        plot = report.distribution_plot(frame, thresholds, f"{name} v{version}: scores", out / f"{kind}_scores.png")
        runs = {
            kind: {
                "name": name,
                "version": version,
                "aliases": {},
                "frame": frame,
                "metrics": result,
                "thresholds": thresholds,
                "plots": [plot],
                "run_id": run.info.run_id,
            }
        }
        context = {
            "model": f"{name} v{version} ({ref})",
            "period": f"{start}..{end}",
            "rows": len(frame),
            "frauds": int(frame["label"].sum()),
            "MLflow run": run.info.run_id,
        }
        summary = write_report(settings, f"Evaluation of {name} v{version} on {start}..{end}", context, runs, out)
    progress(
        f"{name} v{version} on {start}..{end}: ROC AUC {result['roc_auc']:.4f}, AP {result['average_precision']:.4f}"
    )
    return {"model": name, "version": version, "metrics": result, "report": summary["report"]}
