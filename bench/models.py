"""The models benchmark, on the features benchmark's training set (its own isolated lakehouse).

Both models are fitted as ``make train`` fits them (XGBoost: every imbalance strategy with early stopping, then
the refit; Isolation Forest), saved and loaded back as the MLflow pyfunc the stream and the API use, then timed:
batch scoring (rows/s) and single-request scoring (p50/p99 ms, what one API call pays). Quality on the later
days is printed too, for the record. Both are then registered under names of their own, as champions, for the
medallion bench's in-stream decisions.
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

import mlflow.pyfunc
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.run import percentiles, report
from lakehouse.config import Settings
from serving.scorer import Models, Scorer
from training import metrics, registry
from training.dataset import FEATURES, load, matrix
from training.models import fit_isolation_forest, fit_xgboost, refit
from training.pyfunc import model_args
from training.registry import LoadedModel
from training.train import TRAIN_TABLE, operating_thresholds, validation_mask


def run(iso: Settings, start: date, end: date, requests: int = 2000) -> tuple[list[dict], dict]:
    m = iso.models
    frame = load(iso, TRAIN_TABLE, start, end).frame
    days = sorted(frame["event_date"].unique())
    # the first days have little card history (a cold start no production model sees): train after them
    warm, test_days = max(1, len(days) // 4), max(1, len(days) // 4)
    train = frame[frame["event_date"].isin(days[warm:-test_days])].reset_index(drop=True)
    test = frame[frame["event_date"].isin(days[-test_days:])].reset_index(drop=True)
    x, y = matrix(train), train["label"].to_numpy()
    valid = validation_mask(train, m.validation_share)
    rows, out = [], {"train_rows": len(train), "test_rows": len(test), "test_frauds": int(test["label"].sum())}

    t0 = time.perf_counter()
    xgb_fit, _ = fit_xgboost(x[~valid], y[~valid], x[valid], y[valid], m.xgboost, m.seed)
    fitted = {"xgboost": refit(xgb_fit, x, y, m.xgboost, m.isolation_forest, m.seed)}
    rows.append(report("models: fit XGBoost (4 strategies + refit)", len(train), time.perf_counter() - t0))
    t0 = time.perf_counter()
    fitted["isolation_forest"] = refit(fit_isolation_forest(x[~valid], m.isolation_forest, m.seed), x, y,
                                       m.xgboost, m.isolation_forest, m.seed)  # fmt: skip
    rows.append(report("models: fit Isolation Forest (+ refit)", len(train), time.perf_counter() - t0))

    tmp = Path(tempfile.mkdtemp(prefix="bench-models-"))
    singles = test.sample(n=min(requests, len(test)), random_state=0).to_dict("records")
    loaded = {}
    for kind, f in fitted.items():
        path = tmp / kind
        mlflow.pyfunc.save_model(path, **model_args(f, tmp / f"{kind}-artifact"), input_example=matrix(test.head(3)))
        model = mlflow.pyfunc.load_model(str(path))
        valid_score = f.score(x[valid])
        thresholds = operating_thresholds(y[valid], valid_score, iso)
        direct = LoadedModel(kind, "champion", "1", model, {"thresholds": thresholds}, time.time())
        loaded[kind] = _Fixed(direct)
        t0 = time.perf_counter()
        score = model.predict(matrix(test))["score"].to_numpy()
        rows.append(report(f"models: {kind} batch scoring (pyfunc)", len(test), time.perf_counter() - t0))
        # one request: through MLflow's checked predict (a frame), and as the API pays it (the loader's array path)
        checked = [_request_ms(lambda r, m=model: m.predict(matrix([r])), row) for row in singles]
        api = [_request_ms(lambda r, m=direct: m.score([r]), row) for row in singles]
        y_test = test["label"].to_numpy()
        out[kind] = {
            "single_request": percentiles(api),
            "single_request_schema_checked": percentiles(checked),
            "roc_auc": round(float(roc_auc_score(y_test, score)), 4),
            "average_precision": round(float(average_precision_score(y_test, score)), 4),
            "recall_at_fpr_0.005": round(metrics.recall_at_fpr(y_test, score, 0.005), 4),
            "params": {k: v for k, v in f.params.items() if k in ("imbalance_strategy", "n_estimators")},
        }
        s = out[kind]
        print(f"  models: {kind:<17} one request p50 {s['single_request']['p50_ms']} ms  p99 "
              f"{s['single_request']['p99_ms']} ms; test ROC AUC {s['roc_auc']}, AP {s['average_precision']}",
              flush=True)  # fmt: skip

    # the whole decision (rules, statistics, both models, SHAP reasons), as the stream scores a micro-batch
    scorer = Scorer(iso, Models(champion=loaded["xgboost"], anomaly=loaded["isolation_forest"]))
    txs = test[["transaction_id", "card_id", "event_time", "amount"]].to_dict("records")
    vectors = test[list(FEATURES)].astype(object).where(test[list(FEATURES)].notna(), None).to_dict("records")
    t0, batch = time.perf_counter(), 20_000
    decided = [d for i in range(0, len(txs), batch) for d in scorer.decide(txs[i : i + batch], vectors[i : i + batch])]
    rows.append(report("decisions: Scorer.decide (batches of 20,000)", len(decided), time.perf_counter() - t0))
    out["decisions"] = {k: sum(d["decision"] == k for d in decided) for k in ("approve", "review", "block")}
    out["registered"] = register(iso, fitted, {k: v.current.thresholds for k, v in loaded.items()}, train)
    return rows, out


def register(settings: Settings, fitted: dict, thresholds: dict, example) -> dict[str, str]:
    """Register the benchmark's models as champions of their own names (the medallion bench scores with them);
    returns the ``models.*`` settings that name them."""
    stamp = int(time.time())
    names = {"xgboost": f"bench-xgboost-{stamp}", "isolation_forest": f"bench-iforest-{stamp}"}
    mc = registry.client(settings)
    mlflow.set_experiment("bench")
    with mlflow.start_run(run_name=f"bench {stamp}"):
        for kind, f in fitted.items():
            _, version = registry.log_model(f, names[kind], example, {"kind": kind, "thresholds": thresholds[kind]})
            registry.assign_aliases(mc, names[kind], version)
    return {"supervised_name": names["xgboost"], "unsupervised_name": names["isolation_forest"]}


class _Fixed:
    """A loader that always has the same model (the bench has no registry)."""

    def __init__(self, model: LoadedModel):
        self.current = model


def _request_ms(score, row: dict) -> float:
    """One request: the feature row to the model input, then the score (milliseconds)."""
    t0 = time.perf_counter()
    score(row)
    return (time.perf_counter() - t0) * 1000
