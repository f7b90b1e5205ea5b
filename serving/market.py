"""Market anomalies in the stream, on Spark's executors: each market feature micro-batch is scored by the
registered market Isolation Forest (``training.market``; the driver pins its ``champion`` version per batch,
``serving.pinned``). Ticks at or above the model's alert threshold are written to ``gold.market_anomalies``
exactly once (a Delta app transaction per batch id) and raise one ``risk-alerts`` event each (a Redis ``SET NX``
key per symbol and tick time claims it first), with the features that deviated most from the training ticks as
the reason. No model yet, or a model that fails, scores nothing and is counted (``fraud_model_errors``, a
``model_failure`` event): the stream goes on."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse import delta, metrics
from lakehouse.catalog import MARKET_ANOMALIES_TABLE
from lakehouse.config import Settings
from lakehouse.feature_definitions import MARKET_FEATURE_NAMES
from lakehouse.tables import conform_df, ensure, spark_schema
from serving import pinned
from serving.scorer import current
from serving.stream import model_failure
from training import market
from training.dataset import matrix
from training.registry import CHAMPION, AliasFollower, LoadedModel

log = logging.getLogger(__name__)


def anomalies(model: LoadedModel, ticks: list[dict], vectors: list[dict], k: int) -> list[dict]:
    """The rows of ``gold.market_anomalies`` for the ticks (symbol, event_time, price) whose vector scores at or
    above the model's alert threshold."""
    x = matrix(vectors, model.features)  # the frame the reasons read, and its array the model scores
    score = model.score_matrix(x.to_numpy())
    threshold = model.thresholds["alert"]
    hit = np.flatnonzero(score >= threshold)
    why = market.reasons(x.iloc[hit], model.metadata.get("profile", {}), k) if len(hit) else []
    return [
        {
            "symbol": ticks[i]["symbol"],
            "event_time": ticks[i]["event_time"],
            "price": ticks[i]["price"],
            "score": float(score[i]),
            "threshold": float(threshold),
            "reasons": reasons,
            "model_name": model.name,
            "model_version": model.version,
            "features": json.dumps({f: vectors[i].get(f) for f in x.columns}, separators=(",", ":")),
            "event_date": ticks[i]["event_date"],
        }
        for i, reasons in zip(hit, why, strict=True)
    ]


def risk_alert(row: dict) -> dict:
    """The ``risk-alerts`` event of an anomalous tick."""
    keys = ("symbol", "price", "score", "threshold", "reasons", "model_name", "model_version")
    return {"kind": "market_anomaly", **{k: row[k] for k in keys},
            "event_time": int(row["event_time"].timestamp() * 1000)}  # fmt: skip


def anomaly_batches(plan: pinned.Plan):
    """The ``mapInArrow`` function scoring ticks with their vectors into ``FOUND`` rows: the anomalies, or one
    row with only ``model_error`` for a call in which the market model failed to load or score."""
    k = plan.settings.models.market_reasons

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = pinned.PinnedModel(plan.settings, plan.models["market"])
        for batch in batches:
            rows = batch.to_pylist()
            try:
                found = anomalies(model.current, rows, rows, k)
            except Exception as exc:  # a broken version: no market alerts from these ticks, counted
                error = model.error or f"{model.ref.name} v{model.ref.version} failed to score ticks: {exc}"
                yield pa.RecordBatch.from_pylist([{"model_error": error}], schema=FOUND_ARROW)
                continue
            if found:
                now = datetime.now(UTC)
                yield pa.RecordBatch.from_pylist([{**r, "decided_at": now} for r in found], schema=FOUND_ARROW)

    return score


FOUND = f"{spark_schema(MARKET_ANOMALIES_TABLE)}, model_error string"
FOUND_ARROW = MARKET_ANOMALIES_TABLE.schema.append(pa.field("model_error", pa.string()))
TICK_COLUMNS = ("symbol", "event_time", "price", "event_date", *MARKET_FEATURE_NAMES)


class MarketAnomalyStage:
    """Called by the market feature job with each batch's vectors, after their Delta commit."""

    def __init__(self, settings: Settings, follower: AliasFollower | None = None):
        self.settings = settings
        self.follower = follower or AliasFollower(settings, settings.models.market_name, CHAMPION)
        self.uri = ensure(settings, MARKET_ANOMALIES_TABLE)
        self.topic = settings.eventlog.topics.risk_alerts.name

    def __call__(self, app_id: str, batch_id: int, vectors: DataFrame) -> str:
        ref = current(self.follower)
        metrics.set_models({"market": ref})
        if ref is None:
            return "no market model"
        started_ms = int(time.time() * 1000)
        plan = pinned.Plan(self.settings, {"market": ref})
        found = vectors.select(*TICK_COLUMNS).mapInArrow(anomaly_batches(plan), FOUND).persist()
        try:
            failed = found.where(F.col("model_error").isNotNull())
            errors = failed.agg(F.count("*").alias("n"), F.first("model_error").alias("error")).first()
            if errors["n"]:
                log.error("%s", errors["error"])
                metrics.observe_model_errors("market", errors["n"])
                detail = {"errors": errors["n"], "error": errors["error"]}
                model_failure(self.settings, self.topic, "market", batch_id, detail)
            rows = found.where(F.col("model_error").isNull())
            by_symbol = {r["symbol"]: r["n"] for r in rows.groupBy("symbol").agg(F.count("*").alias("n")).collect()}
            if not by_symbol:
                return f"0 anomalies{', market model failed' if errors['n'] else ''}"
            app = f"{app_id}/anomalies"
            delta.write_batch_spark(conform_df(rows, MARKET_ANOMALIES_TABLE), self.uri, app_id=app, batch_id=batch_id,
                                    partition_by=MARKET_ANOMALIES_TABLE.partition_by)  # fmt: skip
            _, written = delta.commit_of(vectors.sparkSession, self.uri, app, batch_id, started_ms)
            if written:
                metrics.observe_anomalies(by_symbol)
            alerts = tick_alert(self.settings.online_store.key_prefix, self.topic)
            sent = pinned.publish(rows, self.settings, alerts)
        finally:
            found.unpersist()
        n = sum(by_symbol.values())
        return f"{n} anomalies{'' if written else ' (already committed)'}, {sum(sent.values())} risk alerts"


def tick_alert(prefix: str, topic: str):
    """An anomalous tick's claim key (``<prefix>:risk:<symbol>:<tick ms>``), topic, record key and event."""

    def make(row: dict) -> pinned.Alert:
        tick_ms = int(row["event_time"].timestamp() * 1000)
        return f"{prefix}:risk:{row['symbol']}:{tick_ms}", topic, row["symbol"], risk_alert(row)

    return make
