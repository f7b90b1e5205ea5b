"""The training package without services: the model input matrix, the imbalance strategies, fitting and refitting
XGBoost and the Isolation Forest on synthetic data, the MLflow pyfunc round trip on a local path, the pure helpers of
``training.train`` and the report (quality verdicts, Markdown, plots)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from lakehouse.config import IsolationForestSettings, XGBoostSettings, get_settings
from training import metrics, report
from training.dataset import FEATURES, matrix
from training.models import (
    STRATEGIES,
    Fitted,
    _weights,
    fit_isolation_forest,
    fit_xgboost,
    importance,
    refit,
)
from training.pyfunc import ARTIFACT, load_estimator, model_args, save_estimator
from training.train import flatten, operating_thresholds, scored, validation_mask

SEED = 11
XGB = XGBoostSettings(n_estimators=60, early_stopping_rounds=10)
IFOREST = IsolationForestSettings(n_estimators=50, max_samples=128)
BOOLEANS = ["card_new_device", "card_new_country", "card_present_channel_mismatch", "is_night", "is_weekend"]
DAY0 = date(2026, 3, 1)
SCENARIOS = ["velocity_burst", "amount_spike", "card_testing"]


def synthetic(n_per_day: int = 1500, days: int = 3, seed: int = 3) -> pd.DataFrame:
    """Transactions over ``days`` days whose fraud (about 4%) is driven by ``card_tx_count_5m`` and
    ``card_amount_zscore_30d``; every other feature is noise, some of it unknown (NaN / None)."""
    rng = np.random.default_rng(seed)
    n = n_per_day * days
    frame = pd.DataFrame({f: rng.gamma(2.0, 10.0, n) for f in FEATURES if f not in BOOLEANS})
    for f in ("card_seconds_since_last", "card_prev_distance_km", "card_prev_speed_kmh", "terminal_fraud_rate_7d"):
        frame.loc[rng.random(n) < 0.15, f] = np.nan
    for f in BOOLEANS:
        values = np.where(rng.random(n) < 0.3, True, False).astype(object)
        values[rng.random(n) < 0.1] = None
        frame[f] = values
    frame["card_tx_count_5m"] = rng.poisson(1.0, n).astype("float64")
    frame["card_amount_zscore_30d"] = rng.normal(0.0, 1.0, n)
    latent = frame["card_tx_count_5m"] + 1.2 * frame["card_amount_zscore_30d"] + rng.normal(0.0, 0.3, n)
    frame.loc[rng.random(n) < 0.02, "card_amount_zscore_30d"] = np.nan  # new cards: no history
    label = (latent > np.quantile(latent, 0.96)).astype("int64")
    day = np.repeat(np.arange(days), n_per_day)
    seconds = np.sort(rng.uniform(0, 86_400, n).reshape(days, n_per_day), axis=1).ravel()
    frame["event_date"] = [DAY0 + timedelta(days=int(d)) for d in day]
    frame["event_time"] = pd.to_datetime(DAY0) + pd.to_timedelta(day, unit="D") + pd.to_timedelta(seconds, unit="s")
    frame["transaction_id"] = [f"t{i:06d}" for i in range(n)]
    frame["card_id"] = [f"c{i:04d}" for i in rng.integers(0, 800, n)]
    frame["amount"] = np.round(rng.gamma(2.0, 30.0, n), 2)
    frame["label"] = label
    frame["label_scenario"] = np.where(label == 1, rng.choice(SCENARIOS, n), None)
    return frame


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return synthetic()


@pytest.fixture(scope="module")
def split(data: pd.DataFrame):
    """(x, y) of the training day, the validation day and the test day."""
    x, y = matrix(data), data["label"].to_numpy()
    days = data["event_date"].to_numpy()
    return [(x[days == d], y[days == d]) for d in (DAY0 + timedelta(days=i) for i in range(3))]


@pytest.fixture(scope="module")
def xgb_fit(split) -> tuple[Fitted, np.ndarray]:
    (x_tr, y_tr), (x_va, y_va), _ = split
    return fit_xgboost(x_tr, y_tr, x_va, y_va, XGB, SEED)


@pytest.fixture(scope="module")
def xgb_final(split, xgb_fit) -> Fitted:
    (x_tr, y_tr), (x_va, y_va), _ = split
    return refit(xgb_fit[0], pd.concat([x_tr, x_va]), np.concatenate([y_tr, y_va]), XGB, IFOREST, SEED)


@pytest.fixture(scope="module")
def forest(split) -> Fitted:
    return fit_isolation_forest(split[0][0], IFOREST, SEED)


# --- the model input ---------------------------------------------------------------------------------------------


def test_matrix_is_every_feature_in_catalogue_order_as_float(data: pd.DataFrame):
    shuffled = data[list(reversed(data.columns))].assign(extra="ignored")
    x = matrix(shuffled)
    assert list(x.columns) == FEATURES
    assert (x.dtypes == "float64").all()
    assert len(x) == len(data)
    for f in BOOLEANS:
        raw = data[f]
        np.testing.assert_array_equal(x[f].isna().to_numpy(), raw.isna().to_numpy())
        assert set(x[f].dropna().unique()) <= {0.0, 1.0}
        np.testing.assert_array_equal(x.loc[raw.eq(True).to_numpy(), f].unique(), [1.0])
        np.testing.assert_array_equal(x.loc[raw.eq(False).to_numpy(), f].unique(), [0.0])
    np.testing.assert_array_equal(x["card_tx_count_5m"].to_numpy(), data["card_tx_count_5m"].to_numpy())
    # a copy: the caller's frame is untouched
    x.loc[:, "card_tx_count_5m"] = -1.0
    assert (data["card_tx_count_5m"] >= 0).all()


def test_matrix_from_records_and_missing_columns():
    row = dict.fromkeys(FEATURES, 1.5) | {"is_night": True, "is_weekend": None, "card_new_device": False}
    x = matrix([row, {**row, "card_prev_speed_kmh": None}])
    assert list(x.columns) == FEATURES
    assert x.loc[0, "is_night"] == 1.0 and x.loc[0, "card_new_device"] == 0.0
    assert math.isnan(x.loc[0, "is_weekend"]) and math.isnan(x.loc[1, "card_prev_speed_kmh"])
    assert x.loc[1, "card_amount_sum_1h"] == 1.5
    with pytest.raises(KeyError, match="card_tx_count_5m"):
        matrix(pd.DataFrame([row]).drop(columns=["card_tx_count_5m"]))


# --- imbalance strategies ----------------------------------------------------------------------------------------

Y_IMBALANCED = np.array([1] * 20 + [0] * 780)


def test_weights_by_strategy():
    neg_per_pos = 780 / 20
    for strategy, scale in (("none", 1.0), ("balanced_weight", neg_per_pos), ("sqrt_weight", math.sqrt(neg_per_pos))):
        weights, got = _weights(Y_IMBALANCED, strategy, SEED)
        np.testing.assert_array_equal(weights, np.ones(len(Y_IMBALANCED)))
        assert got == pytest.approx(scale)


def test_undersampling_keeps_every_fraud_and_ten_genuine_per_fraud():
    weights, scale = _weights(Y_IMBALANCED, "undersample_10", SEED)
    assert scale == 1.0
    assert set(np.unique(weights)) == {0.0, 1.0}
    assert (weights[Y_IMBALANCED == 1] == 1.0).all()
    assert (weights[Y_IMBALANCED == 0] == 1.0).sum() == 200
    np.testing.assert_array_equal(weights, _weights(Y_IMBALANCED, "undersample_10", SEED)[0])
    assert not np.array_equal(weights, _weights(Y_IMBALANCED, "undersample_10", SEED + 1)[0])
    # fewer genuine rows than 10 per fraud: all of them are kept
    few = np.array([1] * 5 + [0] * 30)
    np.testing.assert_array_equal(_weights(few, "undersample_10", SEED)[0], np.ones(len(few)))


def test_unknown_strategy_is_refused():
    with pytest.raises(KeyError):
        _weights(Y_IMBALANCED, "oversample", SEED)


# --- XGBoost -----------------------------------------------------------------------------------------------------


def test_fit_xgboost_keeps_the_strategy_with_the_best_validation_ap(split, xgb_fit):
    _, (x_va, y_va), (x_te, y_te) = split
    fitted, valid_score = xgb_fit
    assert fitted.kind == "xgboost"
    assert set(fitted.validation) == {f"validation_ap_{s}" for s in STRATEGIES}
    assert all(0.0 < v <= 1.0 for v in fitted.validation.values())
    best = max(STRATEGIES, key=lambda s: fitted.validation[f"validation_ap_{s}"])
    assert fitted.params["imbalance_strategy"] == best
    assert fitted.params["n_estimators"] == fitted.estimator.best_iteration + 1 <= XGB.n_estimators
    assert fitted.params["seed"] == SEED
    assert fitted.params["max_depth"] == XGB.max_depth
    # the validation scores are the kept model's
    np.testing.assert_allclose(valid_score, fitted.score(x_va), rtol=0, atol=1e-7)
    assert fitted.validation[f"validation_ap_{best}"] == pytest.approx(average_precision_score(y_va, valid_score))
    test_score = fitted.score(x_te)
    assert test_score.dtype == np.float64 and ((test_score >= 0) & (test_score <= 1)).all()
    assert roc_auc_score(y_te, test_score) > 0.9


def test_fit_xgboost_with_one_strategy_reports_its_scale(split):
    (x_tr, y_tr), (x_va, y_va), _ = split
    fitted, _ = fit_xgboost(x_tr, y_tr, x_va, y_va, XGB, SEED, strategies=("balanced_weight",))
    assert fitted.params["imbalance_strategy"] == "balanced_weight"
    assert list(fitted.validation) == ["validation_ap_balanced_weight"]
    ratio = (y_tr == 0).sum() / y_tr.sum()
    assert fitted.params["scale_pos_weight"] == pytest.approx(ratio)
    assert fitted.estimator.get_params()["scale_pos_weight"] == pytest.approx(ratio)


def test_fit_xgboost_needs_frauds_in_train_and_validation(split):
    (x_tr, y_tr), (x_va, y_va), _ = split
    with pytest.raises(ValueError, match="fraud labels"):
        fit_xgboost(x_tr, np.zeros_like(y_tr), x_va, y_va, XGB, SEED)
    with pytest.raises(ValueError, match="fraud labels"):
        fit_xgboost(x_tr, y_tr, x_va, np.zeros_like(y_va), XGB, SEED)


def test_refit_keeps_strategy_and_tree_count_and_is_reproducible(split, xgb_fit, xgb_final):
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = split
    fitted, _ = xgb_fit
    assert xgb_final.kind == "xgboost"
    assert xgb_final.params == fitted.params and xgb_final.validation == fitted.validation
    assert xgb_final.estimator is not fitted.estimator
    assert xgb_final.estimator.get_booster().num_boosted_rounds() == fitted.params["n_estimators"]
    y_all = np.concatenate([y_tr, y_va])
    expected_scale = _weights(y_all, fitted.params["imbalance_strategy"], SEED)[1]
    assert xgb_final.estimator.get_params()["scale_pos_weight"] == pytest.approx(expected_scale)
    again = refit(fitted, pd.concat([x_tr, x_va]), y_all, XGB, IFOREST, SEED)
    np.testing.assert_array_equal(again.score(x_te), xgb_final.score(x_te))
    assert roc_auc_score(y_te, xgb_final.score(x_te)) > 0.9


@pytest.mark.parametrize("strategy", ["balanced_weight", "undersample_10"])
def test_refit_recomputes_the_strategy_on_all_rows(split, strategy: str):
    (x_tr, y_tr), (x_va, y_va), _ = split
    fitted = Fitted("xgboost", None, {"imbalance_strategy": strategy, "n_estimators": 7, "scale_pos_weight": 1.0})
    x, y = pd.concat([x_tr, x_va]), np.concatenate([y_tr, y_va])
    final = refit(fitted, x, y, XGB, IFOREST, SEED)
    assert final.estimator.get_booster().num_boosted_rounds() == 7
    assert final.estimator.get_params()["scale_pos_weight"] == pytest.approx(_weights(y, strategy, SEED)[1])


def test_importance_ranks_the_fraud_drivers_first(xgb_final):
    gain = importance(xgb_final)
    assert gain.is_monotonic_decreasing
    assert set(gain.index) <= set(FEATURES)
    assert set(gain.index[:2]) == {"card_tx_count_5m", "card_amount_zscore_30d"}


# --- Isolation Forest --------------------------------------------------------------------------------------------


def test_isolation_forest_scores_outliers_higher(split, forest):
    _, _, (x_te, _) = split
    assert forest.kind == "isolation_forest"
    assert forest.params == {**IFOREST.model_dump(), "seed": SEED}
    typical = forest.score(x_te)
    assert typical.dtype == np.float64
    assert ((typical > 0) & (typical <= 1)).all()
    outliers = x_te.head(50).copy()
    numeric = [f for f in FEATURES if f not in BOOLEANS]
    outliers[numeric] = outliers[numeric] * 100 + 1_000
    extreme = forest.score(outliers)
    assert ((extreme > 0) & (extreme <= 1)).all()
    assert extreme.min() > np.median(typical)
    assert extreme.mean() > np.quantile(typical, 0.99)
    # the unknowns are imputed, also a row of nothing but NaN
    unknown = forest.score(pd.DataFrame([dict.fromkeys(FEATURES, np.nan)], dtype="float64"))
    assert np.isfinite(unknown).all() and 0 < unknown[0] <= 1


def test_isolation_forest_is_reproducible_and_refits_on_all_rows(split, forest):
    (x_tr, y_tr), (x_va, y_va), (x_te, _) = split
    np.testing.assert_array_equal(fit_isolation_forest(x_tr, IFOREST, SEED).score(x_te), forest.score(x_te))
    x, y = pd.concat([x_tr, x_va]), np.concatenate([y_tr, y_va])
    final = refit(forest, x, y, XGB, IFOREST, SEED)
    assert final.kind == "isolation_forest" and final.params == forest.params
    assert final.estimator is not forest.estimator
    assert final.estimator.named_steps["forest"].n_features_in_ == len(FEATURES)
    np.testing.assert_array_equal(final.score(x_te), fit_isolation_forest(x, IFOREST, SEED).score(x_te))


def test_isolation_forest_on_fewer_rows_than_max_samples(split):
    x = split[0][0].head(40)
    fitted = fit_isolation_forest(x, IFOREST, SEED)
    assert fitted.estimator.named_steps["forest"].max_samples_ == 40
    assert ((fitted.score(x) > 0) & (fitted.score(x) <= 1)).all()


# --- the MLflow pyfunc -------------------------------------------------------------------------------------------


def _round_trip(fitted: Fitted, tmp_path) -> mlflow.pyfunc.PyFuncModel:
    """Saved as ``make train`` logs it (models-from-code, the estimator in its native format) and loaded back."""
    args = model_args(fitted, tmp_path / "estimator")
    artifact = Path(args["artifacts"][ARTIFACT])
    assert artifact.exists() and artifact.stat().st_size > 0
    mlflow.pyfunc.save_model(
        path=str(tmp_path / "model"),
        **args,
        metadata={"kind": fitted.kind, "features": FEATURES},
        pip_requirements=["xgboost", "scikit-learn"],
    )
    assert not list((tmp_path / "model").rglob("*.pkl")), "the model must not be a pickled object"
    return mlflow.pyfunc.load_model(str(tmp_path / "model"))


@pytest.mark.parametrize("which", ["xgboost_refit", "xgboost_early_stopped", "isolation_forest"])
def test_pyfunc_round_trip_scores_exactly_like_the_fitted_model(which: str, data, xgb_fit, xgb_final, forest, tmp_path):
    fitted = {"xgboost_refit": xgb_final, "xgboost_early_stopped": xgb_fit[0], "isolation_forest": forest}[which]
    model = _round_trip(fitted, tmp_path)
    assert model.metadata.metadata == {"kind": fitted.kind, "features": FEATURES}
    rows = data.tail(300)
    # extra columns (ids, label) and any column order: the model picks its features by name
    shuffled = rows[list(reversed(rows.columns))].assign(unused=1.0)
    got = model.predict(shuffled)
    assert list(got.columns) == ["score"] and len(got) == len(rows)
    np.testing.assert_array_equal(got["score"].to_numpy(), fitted.score(matrix(rows)))


@pytest.mark.parametrize("kind", ["xgboost", "isolation_forest"])
def test_load_estimator_reads_what_save_estimator_wrote(kind: str, data, xgb_final, forest, tmp_path):
    fitted = xgb_final if kind == "xgboost" else forest
    path = save_estimator(fitted, tmp_path / "nested" / "dir")
    assert path.suffix == (".json" if kind == "xgboost" else ".joblib")
    again = Fitted(kind, load_estimator(kind, str(path)), fitted.params)
    x = matrix(data.head(200))
    np.testing.assert_array_equal(again.score(x), fitted.score(x))


def test_pyfunc_refuses_rows_without_the_features(xgb_final, tmp_path, data):
    model = _round_trip(xgb_final, tmp_path)
    with pytest.raises(Exception, match="card_tx_count_5m"):
        model.predict(data.head(5).drop(columns=["card_tx_count_5m"]))


# --- training.train helpers --------------------------------------------------------------------------------------


def _days(n_days: int, per_day: int = 10) -> pd.DataFrame:
    dates = [DAY0 + timedelta(days=d) for d in range(n_days) for _ in range(per_day)]
    times = [datetime(2026, 3, 1) + timedelta(days=d, hours=h) for d in range(n_days) for h in range(per_day)]
    return pd.DataFrame({"event_date": dates, "event_time": pd.to_datetime(times)})


def test_validation_mask_takes_the_last_days():
    frame = _days(5).sample(frac=1.0, random_state=1)  # row order does not matter, the dates do
    mask = validation_mask(frame, 0.2)
    assert mask.dtype == bool
    assert set(frame.loc[mask, "event_date"]) == {DAY0 + timedelta(days=4)}
    assert mask.sum() == 10
    # at least one day when there are two or more
    assert set(_days(2).loc[validation_mask(_days(2), 0.2), "event_date"]) == {DAY0 + timedelta(days=1)}
    ten = _days(10)
    assert set(ten.loc[validation_mask(ten, 0.3), "event_date"]) == {DAY0 + timedelta(days=d) for d in (7, 8, 9)}


def test_validation_mask_splits_a_single_day_by_time():
    frame = _days(1, per_day=20)
    mask = validation_mask(frame, 0.2)
    late = frame["event_time"] >= frame["event_time"].quantile(0.8)
    np.testing.assert_array_equal(mask, late.to_numpy())
    assert 3 <= mask.sum() <= 5
    assert frame.loc[mask, "event_time"].min() > frame.loc[~mask, "event_time"].max()
    utc = frame.assign(event_time=frame["event_time"].dt.tz_localize("UTC"))
    np.testing.assert_array_equal(validation_mask(utc, 0.2), mask)


def _evaluated(data: pd.DataFrame, score: np.ndarray, thresholds: dict[str, float]) -> dict:
    frame = data.assign(score=score)
    return metrics.evaluate(frame, thresholds, k=20, max_fpr=0.01, review_cost=2.5)


def test_flatten_names_every_metric_for_mlflow(data, xgb_final):
    test = data[data["event_date"] == DAY0 + timedelta(days=2)]
    score = xgb_final.score(matrix(test))
    result = _evaluated(test, score, {"review": 0.5, "block": 0.9})
    flat = flatten(result, "test")
    assert all(isinstance(v, float) for v in flat.values())
    assert all(k.startswith("test_") for k in flat)
    assert flat["test_roc_auc"] == result["roc_auc"]
    assert flat["test_rows"] == float(len(test))
    assert flat["test_card_precision_at_20"] == result["card_precision_at_20"]
    assert flat["test_review_precision"] == result["operating_points"]["review"]["precision"]
    assert flat["test_block_recall"] == result["operating_points"]["block"]["recall"]
    assert flat["test_at_fpr_threshold"] == result["operating_points"]["at_fpr"]["threshold"]
    for s in SCENARIOS:
        scenario = result["operating_points"]["review"]["scenarios"][s]
        assert flat[f"test_review_{s}_detection_rate"] == scenario["detection_rate"]
        assert flat[f"test_review_{s}_frauds"] == float(scenario["frauds"])
        assert flat[f"test_review_{s}_card_detection_rate"] == scenario["card_detection_rate"]
    assert flat["test_review_money_net_saved"] == result["operating_points"]["review"]["money"]["net_saved"]
    assert not any("operating_points" in k or "scenarios" in k for k in flat)
    # one metric per leaf number
    leaves = 6 + 3 * (7 + 4 + 5 * len(SCENARIOS))
    assert len(flat) == leaves


def test_flatten_drops_booleans_and_strings():
    flat = flatten({"a": 1, "ok": True, "name": "x", "nested": {"b": 2.5, "flag": False}, "none": None}, "p")
    assert flat == {"p_a": 1.0, "p_nested_b": 2.5}
    assert all(type(v) is float for v in flat.values())


def test_operating_thresholds_respect_the_false_positive_rates(split, xgb_fit):
    settings = get_settings()
    m = settings.models
    _, (_, y_va), _ = split
    _, valid_score = xgb_fit
    t = operating_thresholds(y_va, valid_score, settings)
    assert set(t) == {"review", "block"}
    assert t["block"] >= t["review"]
    review = metrics.at_threshold(y_va, valid_score, t["review"])
    assert review.false_positive_rate <= m.review_fpr
    assert metrics.at_threshold(y_va, valid_score, t["block"]).false_positive_rate <= m.block_fpr
    # nothing is left on the table: the next lower score either exceeds the bound or catches no more fraud
    lower = valid_score[valid_score < t["review"]]
    if len(lower):
        step = metrics.at_threshold(y_va, valid_score, lower.max())
        assert step.false_positive_rate > m.review_fpr or step.true_positives == review.true_positives


def test_operating_thresholds_are_finite_on_a_small_validation_set():
    """A validation period with fewer genuine rows than 1 / block_fpr, whose top score is genuine: the block
    threshold must still be a usable (finite) score."""
    settings = get_settings()
    y = np.array([0] * 300 + [1] * 10)
    score = np.concatenate([np.linspace(0.0, 0.5, 299), [0.99], np.linspace(0.6, 0.9, 10)])
    t = operating_thresholds(y, score, settings)
    assert all(math.isfinite(v) for v in t.values()), t
    assert metrics.at_threshold(y, score, t["block"]).flagged == 0


def test_scored_frame_for_the_evaluator(data):
    from training.dataset import Dataset

    ds = Dataset(data.head(30), "features.training_set", "s3://x", 3, DAY0, DAY0)
    frame = scored(ds, np.linspace(0, 1, 30, dtype="float32"))
    assert list(frame.columns) == [
        "transaction_id",
        "card_id",
        "event_date",
        "amount",
        "label",
        "label_scenario",
        "score",
    ]
    assert frame["score"].dtype == np.float64
    assert ds.source == "s3://x@v3"


# --- the report --------------------------------------------------------------------------------------------------


def _result(scenarios: dict[str, tuple[int, int]]) -> dict:
    """An ``evaluate`` result whose at_fpr point detects ``detected`` of ``frauds`` per scenario."""
    frame_rows = []
    for s, (frauds, detected) in scenarios.items():
        frame_rows += [(1, 0.9 if i < detected else 0.1, s) for i in range(frauds)]
    frame_rows += [(0, 0.05 + 0.001 * i, None) for i in range(200)]
    frame = pd.DataFrame(frame_rows, columns=["label", "score", "label_scenario"]).assign(
        amount=10.0, card_id=[f"c{i}" for i in range(len(frame_rows))], event_date=DAY0
    )
    return metrics.evaluate(frame, {"review": 0.5}, k=10, max_fpr=0.01, review_cost=1.0)


def test_quality_verdicts():
    result = _result({"card_testing": (20, 20), "velocity_burst": (20, 10)})
    assert result["operating_points"]["at_fpr"]["threshold"] == pytest.approx(0.9)
    rows = report.quality(result, ["card_testing", "velocity_burst", "impossible_travel"], 0.95)
    assert rows == [
        ["card_testing", 20, 1.0, "meets", 20, 1.0, "meets"],
        ["velocity_burst", 20, 0.5, "BELOW", 20, 0.5, "BELOW"],
        ["impossible_travel", 0, "-", "no frauds in test", 0, "-", "no frauds in test"],
    ]
    # exactly on the target meets it
    assert report.quality(result, ["velocity_burst"], 0.5)[0][3] == "meets"
    assert report.quality(result, ["card_testing"], 0.95, point="review")[0][-1] == "meets"


def test_markdown_report():
    results = {
        "fraud-xgboost v3": _result({"card_testing": (20, 20), "velocity_burst": (20, 10)}),
        "fraud-isolation-forest v2": _result({"card_testing": (20, 5)}),
    }
    text = report.markdown(
        "Training run abc",
        {"train": "2026-03-01..2026-03-07", "gap (label delay)": "7 days"},
        results,
        ["/tmp/x/roc.png", "/tmp/x/xgboost_shap.png"],
        ["card_testing", "velocity_burst", "amount_spike"],
        0.95,
        0.005,
    )
    assert text.startswith("# Training run abc\n")
    assert "| train | 2026-03-01..2026-03-07 |" in text
    for name in results:
        assert f"\n## {name}\n" in text
    assert text.count("### Operating points") == 2
    assert text.count("(threshold at FPR <= 0.005)") == 2
    assert "| card_testing | 20 | 1.0000 | meets |" in text
    assert "| velocity_burst | 20 | 0.5000 | BELOW |" in text
    assert "| card_testing | 20 | 0.2500 | BELOW |" in text
    assert "| velocity_burst | 0 | - | no frauds in test |" in text
    assert "| amount_spike | 0 | - | no frauds in test |" in text
    assert "| card_testing | 20 | 10 | 0.5000 |" not in text  # the detection table is per scenario of its model
    assert "| velocity_burst | 20 | 10 | 0.5000 |" in text
    assert "| review |" in text and "| at_fpr |" in text
    assert "| roc_auc |" in text and "operating_points" not in text
    assert "![roc](roc.png)" in text and "![xgboost_shap](xgboost_shap.png)" in text
    assert text.endswith("\n")


PNG = b"\x89PNG\r\n\x1a\n"


def _png(path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_plots_write_png_files(data, xgb_final, forest, tmp_path):
    test = data[data["event_date"] == DAY0 + timedelta(days=2)]
    x = matrix(test)
    frames = {
        "xgboost": test.assign(score=xgb_final.score(x)),
        "isolation_forest": test.assign(score=forest.score(x)),
    }
    paths = [
        report.roc_plot(frames, tmp_path / "roc.png"),
        report.pr_plot(frames, tmp_path / "pr.png"),
        report.distribution_plot(frames["xgboost"], {"review": 0.5, "block": 0.9}, "xgb", tmp_path / "dist.png"),
        report.importance_plot(xgb_final, tmp_path / "importance.png"),
        report.shap_plot(xgb_final, x, tmp_path / "shap.png", sample=200, seed=SEED),
    ]
    assert paths == [tmp_path / n for n in ("roc.png", "pr.png", "dist.png", "importance.png", "shap.png")]
    assert all(_png(p) for p in paths)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure closed


def test_shap_values_add_up_to_the_margin(xgb_final, data):
    """The contributions the SHAP plot draws are XGBoost's exact ones: they sum (with the bias) to the margin."""
    import xgboost as xgb

    x = matrix(data.head(100))
    contribs = xgb_final.estimator.get_booster().predict(xgb.DMatrix(x), pred_contribs=True)
    margin = xgb_final.estimator.get_booster().predict(xgb.DMatrix(x), output_margin=True)
    np.testing.assert_allclose(contribs.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_distribution_plot_of_one_class_or_one_value(tmp_path):
    """A test period without any positive (no injected market tick) or with one score still gets its plot."""
    normal = pd.DataFrame({"score": np.linspace(0.1, 0.9, 50), "label": 0})
    one = pd.DataFrame({"score": [0.3] * 5, "label": 0})
    assert _png(report.distribution_plot(normal, {"alert": 0.8}, "ticks", tmp_path / "a.png"))
    assert _png(report.distribution_plot(one, {"alert": 0.8}, "ticks", tmp_path / "b.png"))
