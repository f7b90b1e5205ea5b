"""The market anomaly model without services: the training profile and reasons, detection per scenario, and the
stream's scoring of a batch of ticks through a pyfunc saved and loaded like a registered version."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from lakehouse.config import IsolationForestSettings
from serving.market import anomalies, risk_alert
from training import market
from training.dataset import matrix
from training.models import fit_isolation_forest
from training.pyfunc import model_args
from training.registry import LoadedModel

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def ticks(n: int = 3000, seed: int = 2) -> pd.DataFrame:
    """Feature rows of calm ticks, every 100th a spike (a 6 % return, its z-scores far out)."""
    rng = np.random.default_rng(seed)
    ret = rng.normal(0, 0.0005, n)
    spike = np.arange(n) % 100 == 50
    ret[spike] = 0.06
    frame = pd.DataFrame({f: rng.normal(0, 1, n) for f in market.FEATURES})
    frame["tick_log_return"] = ret
    frame["tick_return_zscore_10"] = np.where(spike, 80.0, rng.normal(0, 1, n))
    frame["tick_return_zscore_50"] = np.where(spike, 90.0, rng.normal(0, 1, n))
    frame["tick_volatility_10"] = np.abs(rng.normal(0.0005, 0.0001, n))
    frame.loc[:5, "tick_momentum_50"] = np.nan  # the first ticks of a symbol have no 50-tick history
    frame["symbol"] = np.where(np.arange(n) % 2 == 0, "ACME", "WAYNE")
    frame["event_time"] = [T0 + timedelta(seconds=i) for i in range(n)]
    frame["event_date"] = date(2026, 3, 1)
    frame["price"] = 100.0
    frame["scenario"] = np.where(spike, "spike", None)
    return frame


def test_profile_is_the_median_and_iqr_of_each_feature():
    x = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 100.0], "b": [5.0] * 5, "c": [np.nan] * 5})
    prof = market.profile(x)
    assert prof["a"] == [3.0, 2.0]  # quartiles 2 and 4 (linear interpolation)
    assert prof["b"][0] == 5.0 and 0 < prof["b"][1] <= 1e-12  # a constant feature divides safely
    assert "c" not in prof  # never known: no reason can name it


def test_reasons_name_the_features_furthest_from_the_training_median():
    prof = {"a": [0.0, 1.0], "b": [10.0, 2.0], "c": [0.0, 1.0]}
    x = pd.DataFrame({"a": [0.5, np.nan], "b": [2.0, 10.0], "c": [-3.0, 0.2]})
    assert market.reasons(x, prof, 2) == [["b=-4.0iqr", "c=-3.0iqr"], ["c=+0.2iqr", "b=+0.0iqr"]]
    assert market.reasons(x, prof, 5)[1] == ["c=+0.2iqr", "b=+0.0iqr"]  # an unknown value is never a reason


def test_detection_counts_alerts_against_injected_ticks():
    frame = pd.DataFrame({"scenario": [None, None, "spike", "spike", "crash", None]})
    flagged = np.array([True, False, True, False, True, False])
    got = market.detection(frame, flagged)
    assert got["ticks"] == 6
    assert got["alert_rate"] == pytest.approx(0.5)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["recall_spike"] == pytest.approx(0.5) and got["recall_crash"] == 1.0


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> tuple[LoadedModel, pd.DataFrame]:
    """A market forest fitted on calm-plus-spike ticks, saved as the pyfunc the registry holds, loaded back."""
    train = ticks()
    x = matrix(train, market.FEATURES)
    fitted = fit_isolation_forest(x, IsolationForestSettings(n_estimators=50, max_samples=256), 7)
    threshold = float(np.quantile(fitted.score(x), 1 - 0.01))
    tmp = tmp_path_factory.mktemp("market")
    metadata = {"kind": fitted.kind, "features": market.FEATURES, "thresholds": {"alert": threshold},
                "profile": market.profile(x)}  # fmt: skip
    mlflow.pyfunc.save_model(str(tmp / "model"), **model_args(fitted, tmp / "artifact"), metadata=metadata)
    model = mlflow.pyfunc.load_model(str(tmp / "model"))
    return LoadedModel("market-if", "champion", "3", model, metadata, time.time()), ticks(600, seed=5)


def test_the_loaded_pyfunc_scores_market_rows_by_its_own_features(loaded):
    model, frame = loaded
    assert model.model.unwrap_python_model().features == market.FEATURES
    rows = frame.drop(columns=["scenario"]).to_dict("records")
    np.testing.assert_array_equal(model.score(rows).to_numpy(), model.score(frame[market.FEATURES]).to_numpy())


def test_a_batch_of_ticks_yields_the_anomalies_above_the_threshold_with_reasons(loaded):
    model, frame = loaded
    keys = frame[["symbol", "event_time", "price", "event_date"]].to_dict("records")
    vectors = frame[market.FEATURES].astype(object).where(frame[market.FEATURES].notna(), None).to_dict("records")
    rows = anomalies(model, keys, vectors, k=2)
    score = model.score(frame[market.FEATURES]).to_numpy()
    expected = np.flatnonzero(score >= model.thresholds["alert"])
    assert [r["event_time"] for r in rows] == [keys[i]["event_time"] for i in expected]
    spikes = set(frame.loc[frame["scenario"].notna(), "event_time"])
    assert spikes and spikes <= {r["event_time"] for r in rows}  # every injected spike is found
    for r in rows:
        assert r["score"] >= r["threshold"] == model.thresholds["alert"]
        assert (r["model_name"], r["model_version"]) == ("market-if", "3") and len(r["reasons"]) == 2
    spike = next(r for r in rows if r["event_time"] in spikes)
    assert {reason.split("=")[0] for reason in spike["reasons"]} <= {"tick_return_zscore_10", "tick_return_zscore_50",
                                                                    "tick_log_return"}  # fmt: skip
    event = risk_alert(spike)
    assert event["kind"] == "market_anomaly" and event["event_time"] == int(spike["event_time"].timestamp() * 1000)
    assert event["reasons"] == spike["reasons"]


def test_a_batch_without_anomalies_yields_nothing(loaded):
    model, frame = loaded
    calm = frame[frame["scenario"].isna()].head(20)
    score = model.score(calm[market.FEATURES]).to_numpy()
    calm = calm[score < model.thresholds["alert"]]
    keys = calm[["symbol", "event_time", "price", "event_date"]].to_dict("records")
    assert anomalies(model, keys, calm[market.FEATURES].to_dict("records"), k=2) == []
