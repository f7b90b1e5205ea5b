"""Models on real services: trained from the feature lake's training sets, registered in the MLflow server,
loaded back by alias with the same predictions, re-evaluated by version, and promoted while a loader runs.

The feature lake (conftest) holds two days of generated traffic: the first day trains, the second tests
(no gap: the test traffic's labels arrive within hours).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient
from support import FEATURE_LAKE_START, run_json

from training import registry
from training.dataset import load, matrix
from training.train import TEST_TABLE, train

DAY1 = FEATURE_LAKE_START.date()
DAY2 = DAY1 + timedelta(days=1)


def test_registered_versions_load_back_by_alias_with_the_same_predictions(trained):
    settings, _, summary = trained
    test = load(settings, TEST_TABLE, DAY2, DAY2).frame
    for kind in ("xgboost", "isolation_forest"):
        s = summary[kind]
        assert s["version"] == "1" and s["aliases"] == {"champion": "1", "challenger": "1"}
        loaded = mlflow.pyfunc.load_model(f"models:/{s['name']}@champion")
        np.testing.assert_array_equal(loaded.predict(matrix(test))["score"].to_numpy(), s["fitted"].score(matrix(test)))
        meta = loaded.metadata.metadata
        assert meta["kind"] == kind and meta["thresholds"] == s["thresholds"]
        assert loaded.metadata.get_input_schema().input_names()[:3] == meta["features"][:3]
    xgb = summary["xgboost"]["metrics"]
    # a day of training on ~5,000 rows: far better than chance (the fraud share is ~1 %), not production quality
    assert xgb["roc_auc"] > 0.9 and xgb["average_precision"] > 0.2, xgb
    assert summary["xgboost"]["fitted"].params["imbalance_strategy"] in {"none", "sqrt_weight", "balanced_weight",
                                                                         "undersample_10"}  # fmt: skip


def test_training_run_is_logged_with_report(trained):
    settings, _, summary = trained
    mc = registry.client(settings)
    parent = mc.get_run(summary["run_id"])
    assert parent.data.params["test_start"] == str(DAY2) and parent.data.params["feature_version"]
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} == {
        "features.training_set",
        "features.evaluation_set",
    }
    artifacts = {a.path for a in mc.list_artifacts(summary["run_id"], "report")}
    assert {"report/report.md", "report/roc.png", "report/pr.png", "report/xgboost_shap.png"} <= artifacts
    child = mc.get_run(summary["xgboost"]["run_id"])
    assert child.data.metrics["test_roc_auc"] == pytest.approx(summary["xgboost"]["metrics"]["roc_auc"])
    assert "test_review_precision" in child.data.metrics and "xgboost.imbalance_strategy" in child.data.params
    text = Path(summary["report"]).read_text()
    assert "Detection per scenario" in text and summary["xgboost"]["name"] in text


def test_evaluate_a_registered_version_reproduces_the_test_metrics(trained):
    _, env, summary = trained
    name = summary["xgboost"]["name"]
    out = run_json(env, "-m", "training", "evaluate", "--model", f"{name}/1", "--start", str(DAY2), "--end",
                   str(DAY2), "--no-build")  # fmt: skip
    assert out["version"] == "1"
    for key in ("roc_auc", "average_precision", "card_precision_at_100"):
        assert out["metrics"][key] == pytest.approx(summary["xgboost"]["metrics"][key]), key


def test_alias_change_is_seen_by_a_running_loader(trained):
    settings, env, summary = trained
    name = summary["xgboost"]["name"]
    loader = registry.ModelLoader(settings, name, refresh_seconds=0.5)
    try:
        assert loader.current.version == "1"
        again = train(settings, DAY1, DAY2, train_days=1, test_days=1, label_delay_days=0, build=False)
        assert again["xgboost"]["aliases"] == {"champion": "1", "challenger": "2"}
        out = run_json(env, "-m", "training", "promote", "--model", name)
        assert out == {"model": name, "champion": "2", "previous_champion": "1"}
        deadline = time.monotonic() + 30
        while loader.current.version != "2" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loader.current.version == "2"
        # the registry goes away: the loader keeps scoring with the version it has
        loader._client = MlflowClient("http://127.0.0.1:1")
        time.sleep(1.5)
        assert loader.current.version == "2"
        rows = load(settings, TEST_TABLE, DAY2, DAY2).frame.head(50)
        np.testing.assert_array_equal(loader.current.score(rows).to_numpy(), again["xgboost"]["fitted"].score(
            matrix(rows)))  # fmt: skip
    finally:
        loader.close()
