"""Market anomalies in the stream: each market feature micro-batch is scored by the registered market Isolation
Forest (``training.market``, followed through its ``champion`` alias). Ticks at or above the model's alert
threshold are written to ``gold.market_anomalies`` exactly once (a Delta app transaction per batch id) and
raise one ``risk-alerts`` event each (a Redis ``SET NX`` key per symbol and tick time claims it first), with
the features that deviated most from the training ticks as the reason. No model yet, or a model that fails,
scores nothing and is counted (``errors``): the stream goes on."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import redis

from gold.tables import MARKET_ANOMALIES_TABLE
from lakehouse import delta, eventlog, metrics
from lakehouse.config import Settings
from lakehouse.tables import TS, conform, ensure
from serving.scorer import current
from serving.stream import model_failure, send_once
from training import market
from training.dataset import matrix
from training.registry import CHAMPION, LoadedModel, ModelLoader

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


class MarketAnomalyStage:
    """Called by the market feature job with each batch's ticks and vectors, after their Delta commit."""

    def __init__(self, settings: Settings, loader: ModelLoader | None = None):
        self.settings = settings
        self.loader = loader or ModelLoader(settings, settings.models.market_name, CHAMPION)
        self.uri = ensure(settings, MARKET_ANOMALIES_TABLE)
        self.log = eventlog.from_settings(settings)
        self.redis = redis.Redis.from_url(settings.online_store.url)
        self.topic = settings.eventlog.topics.risk_alerts.name
        self.errors = 0

    def __call__(self, app_id: str, batch_id: int, ticks: list[dict], vectors: list[dict]) -> str:
        model = current(self.loader)
        metrics.set_models({"market": model})
        if model is None or not ticks:
            return "no market model" if model is None else "no ticks"
        try:
            rows = anomalies(model, ticks, vectors, self.settings.models.market_reasons)
        except Exception as exc:  # a broken version: no market alerts from this batch, counted
            self.errors += 1
            metrics.observe_model_errors("market", 1)
            log.error("%s v%s failed to score ticks: %s", model.name, model.version, exc)
            detail = {"errors": 1, "error": f"{model.name} v{model.version} failed to score ticks: {exc}"}
            model_failure(self.log, self.topic, "market", batch_id, detail)
            return f"market model v{model.version} failed ({exc})"
        if not rows:
            return "0 anomalies"
        table = pa.Table.from_pylist(rows).drop_columns(["event_time"])
        out = conform(
            table.append_column("event_time", pa.array([r["event_time"] for r in rows], TS)),
            MARKET_ANOMALIES_TABLE,
            decided_at=pa.array([datetime.now(UTC)] * len(rows), TS),
        )
        written = delta.write_batch(self.settings, self.uri, out, app_id=f"{app_id}/anomalies", batch_id=batch_id,
                                    partition_by=MARKET_ANOMALIES_TABLE.partition_by)  # fmt: skip
        if written:
            metrics.observe_anomalies(rows)
        sent = self.publish(rows)
        return f"{len(rows)} anomalies{'' if written else ' (already committed)'}, {sent} risk alerts"

    def publish(self, rows: list[dict]) -> int:
        """Send each anomaly once (claimed as ``<prefix>:risk:<symbol>:<tick ms>``)."""
        prefix = self.settings.online_store.key_prefix
        alerts = [(f"{prefix}:risk:{r['symbol']}:{int(r['event_time'].timestamp() * 1000)}", self.topic, r["symbol"],
                   risk_alert(r)) for r in rows]  # fmt: skip
        return len(send_once(self.redis, self.log, alerts))
