"""Decisions in the stream: each feature micro-batch's transactions are scored (``serving.scorer``) and written
to ``gold.decisions`` exactly once (a Delta app transaction per batch id), then review and block decisions are
published to ``fraud-review`` / ``fraud-alerts`` at most once per transaction (a Redis ``SET NX`` key per
transaction id claims the alert before it is sent)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pyarrow as pa
import redis

from gold.tables import DECISIONS_TABLE
from lakehouse import delta, eventlog, metrics
from lakehouse.config import Settings
from lakehouse.tables import TS, conform, ensure
from serving.scorer import Scorer, current

ALERT_TTL_S = 14 * 86_400


class DecisionStage:
    """Called by the feature job with each batch's transactions and vectors, after their Delta commit."""

    def __init__(self, settings: Settings, scorer: Scorer | None = None):
        self.settings = settings
        self.scorer = scorer or Scorer(settings)
        self.uri = ensure(settings, DECISIONS_TABLE)
        self.log = eventlog.from_settings(settings)
        self.redis = redis.Redis.from_url(settings.online_store.url)
        topics = settings.eventlog.topics
        self.topics = {"block": topics.fraud_alerts.name, "review": topics.fraud_review.name}
        self.risk_topic = topics.risk_alerts.name

    def __call__(self, app_id: str, batch_id: int, txs: list[dict], vectors: list[dict]) -> str:
        if not txs:  # a batch of label changes only
            return "no transactions to decide"
        errors = self.scorer.model_errors
        rows = self.scorer.decide(txs, vectors)
        if self.scorer.model_errors > errors:
            failure = {"errors": self.scorer.model_errors - errors, "error": self.scorer.last_error}
            model_failure(self.log, self.risk_topic, "decisions", batch_id, failure)
            metrics.observe_model_errors("decisions", failure["errors"])
        models = self.scorer.models
        challenger = models.challenger if self.settings.decision.routing != "off" else None
        metrics.set_models({"champion": current(models.champion), "challenger": current(challenger),
                            "anomaly": current(models.anomaly)})  # fmt: skip
        now = datetime.now(UTC)
        table = pa.Table.from_pylist(rows)
        n = table.num_rows
        log_times = [tx.get("log_time") for tx in txs]
        latency = [(now - t).total_seconds() * 1000 if t is not None else None for t in log_times]
        event_time = pa.array([tx["event_time"] for tx in txs], TS)
        table = table.drop_columns(["event_time"]).append_column("event_time", event_time)
        out = conform(
            table,
            DECISIONS_TABLE,
            log_time=pa.array(log_times, TS),
            decided_at=pa.array([now] * n, TS),
            latency_ms=pa.array(latency, pa.float64()),
            event_date=pa.array([tx["event_date"] for tx in txs], pa.date32()),
        )
        written = delta.write_batch(self.settings, self.uri, out, app_id=f"{app_id}/decisions", batch_id=batch_id,
                                    partition_by=DECISIONS_TABLE.partition_by)  # fmt: skip
        if written:  # a replayed batch was counted when it was first written
            metrics.observe_decisions(rows, latency)
        sent = self.publish(rows)
        counts = Counter(r["decision"] for r in rows)
        state = "" if written else " (already committed)"
        return f"{n} decisions{state} {dict(counts)}, {sent} alerts"

    def publish(self, rows: list[dict]) -> int:
        """Send each review/block decision once (claimed as ``<prefix>:alert:<transaction_id>``)."""
        prefix = self.settings.online_store.key_prefix
        alerts = [(f"{prefix}:alert:{r['transaction_id']}", self.topics[r["decision"]], r["card_id"], alert(r))
                  for r in rows if r["decision"] in self.topics]  # fmt: skip
        sent = send_once(self.redis, self.log, alerts)
        metrics.observe_alerts(event["decision"] for *_, event in sent)
        return len(sent)


def send_once(
    client: redis.Redis, log: eventlog.EventLog, alerts: list[tuple[str, str, str, dict]], ttl_s: int = ALERT_TTL_S
) -> list[tuple[str, str, str, dict]]:
    """Produce each alert ``(claim key, topic, record key, event)`` whose claim key this call sets first (``SET
    NX``, pipelined, kept ``ttl_s``): an alert goes out once however often its batch is replayed. Returns the
    alerts sent."""
    if not alerts:
        return []
    pipe = client.pipeline(transaction=False)
    for claim, *_ in alerts:
        pipe.set(claim, 1, nx=True, ex=ttl_s)
    sent = [a for a, ok in zip(alerts, pipe.execute(), strict=True) if ok]
    by_topic: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for _, topic, key, event in sent:
        by_topic[topic].append((key, json.dumps(event).encode()))
    for topic, records in by_topic.items():
        log.produce_batch(topic, records)
    return sent


def alert(row: dict) -> dict:
    """The alert event of a decision (what an analyst's queue receives)."""
    keys = ("transaction_id", "card_id", "decision", "score", "driver", "triggered_rules", "reasons", "model_name",
            "model_version")  # fmt: skip
    out = {k: row[k] for k in keys}
    out["event_time"] = int(row["event_time"].timestamp() * 1000) if row.get("event_time") else None
    return out


def model_failure(log: eventlog.EventLog, topic: str, stage: str, batch_id: int, detail: dict) -> None:
    """A ``model_failure`` event on ``risk-alerts``: a model failed on a batch of ``stage``; its tier went
    unscored and the stream went on."""
    event = {"kind": "model_failure", "stage": stage, "batch_id": batch_id, **detail,
             "at": int(datetime.now(UTC).timestamp() * 1000)}  # fmt: skip
    log.produce_batch(topic, [(b"model_failure", json.dumps(event).encode())])
