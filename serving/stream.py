"""Decisions in the stream, on Spark's executors: each feature micro-batch's transactions are scored
(``serving.scorer``, with the models and rules the driver pinned for the batch: ``serving.pinned``) and written
to ``gold.decisions`` exactly once (a Delta app transaction per batch id), then review and block decisions are
published to ``fraud-review`` / ``fraud-alerts`` at most once per transaction (a Redis ``SET NX`` key per
transaction id claims the alert before it is sent). Only aggregates reach the driver: the metrics' counts and
sums (``observations``) and the alerts sent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse import delta, eventlog, metrics
from lakehouse.catalog import DECISIONS_TABLE
from lakehouse.config import Settings
from lakehouse.feature_definitions import TRANSACTION_FEATURES, TRANSACTION_INPUTS
from lakehouse.tables import TS, conform, conform_df, ensure, spark_schema
from serving import pinned
from serving.rules import RuleBook
from serving.scorer import Models, Scorer, current
from training.registry import CHALLENGER, CHAMPION, AliasFollower

# what the rules and the latency need beside the feature inputs
DECISION_INPUTS = ("merchant_category_code", "ip_hash", "customer_id", "log_time", "event_date")
DECISION_COLUMNS = (*TRANSACTION_INPUTS, *DECISION_INPUTS, *(f.name for f in TRANSACTION_FEATURES))
SCORED = f"{spark_schema(DECISIONS_TABLE)}, model_error string"


def decide_batches(plan: pinned.Plan):
    """The ``mapInArrow`` function scoring transactions with their vectors into ``SCORED`` rows: the decisions,
    and on the first row of a call in which a model failed (to load, score or explain), its error."""
    names = [f.name for f in TRANSACTION_FEATURES]
    inputs = (*TRANSACTION_INPUTS, *DECISION_INPUTS)

    def decide(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        models = pinned.pinned_models(plan)
        scorer = Scorer(plan.settings, Models(**models), rules=pinned.fixed_rules(plan.rules))
        for batch in batches:
            rows = batch.to_pylist()
            if not rows:
                continue
            txs = [{c: r[c] for c in inputs} for r in rows]
            errors = scorer.model_errors
            decided = scorer.decide(txs, [{n: r[n] for n in names} for r in rows])
            error = (scorer.last_error if scorer.model_errors > errors else "") or pinned.load_errors(models)
            yield from decisions_table(txs, decided, error).to_batches()

    return decide


def decisions_table(txs: list[dict], rows: list[dict], error: str = "") -> pa.Table:
    """``Scorer.decide``'s rows as ``SCORED``: with their event-log time, decision time and latency."""
    now = datetime.now(UTC)
    log_times = [tx["log_time"] for tx in txs]
    latency = [(now - t).total_seconds() * 1000 if t is not None else None for t in log_times]
    table = pa.Table.from_pylist(rows).drop_columns(["event_time"])
    out = conform(
        table.append_column("event_time", pa.array([tx["event_time"] for tx in txs], TS)),
        DECISIONS_TABLE,
        log_time=pa.array(log_times, TS),
        decided_at=pa.array([now] * len(rows), TS),
        latency_ms=pa.array(latency, pa.float64()),
        event_date=pa.array([tx["event_date"] for tx in txs], pa.date32()),
    )
    return out.append_column("model_error", pa.array([error or None] + [None] * (len(rows) - 1), pa.string()))


def _bucket(value: Column, bounds: tuple[float, ...]) -> Column:
    """The index of the Prometheus bucket (``le``) ``value`` falls in."""
    return sum((F.when(value > b, 1).otherwise(0) for b in bounds), F.lit(0))


def _obs(metric: str, a: Column | None = None, b: Column | None = None, value: Column | None = None) -> Column:
    bounds = metrics.HISTOGRAM_BUCKETS.get(metric)
    return F.struct(
        F.lit(metric).alias("metric"),
        (a if a is not None else F.lit(None)).cast("string").alias("a"),
        (b if b is not None else F.lit(None)).cast("string").alias("b"),
        (value if value is not None else F.lit(None)).cast("double").alias("value"),
        (_bucket(value, bounds) if bounds else F.lit(0)).alias("bucket"),
    )


def observations(decided: DataFrame) -> DataFrame:
    """The batch's decisions as the Prometheus metrics' increments (``metrics.observe_decisions``): a row per
    (metric, labels, histogram bucket) with its count ``n`` and the sum of its values ``total``. An aggregate
    of a few dozen rows, computed on the executors."""
    shadow = F.col("shadow_decision").isNotNull()
    other = F.when(F.col("route") == CHAMPION, F.lit(CHALLENGER)).otherwise(F.lit(CHAMPION))
    seen = F.array(
        _obs("decision", F.col("decision"), F.coalesce("route", F.lit(CHAMPION))),
        F.when(shadow, _obs("shadow", F.col("decision"), F.col("shadow_decision"))),
        F.when(F.col("ml_probability").isNotNull(),
               _obs("probability", F.coalesce("route", F.lit(CHAMPION)), value=F.col("ml_probability"))),
        F.when(shadow & F.col("shadow_probability").isNotNull(),
               _obs("probability", other, value=F.col("shadow_probability"))),
        F.when(F.col("scoring_ms").isNotNull(), _obs("scoring", value=F.col("scoring_ms") / 1000)),
        F.when(F.col("latency_ms").isNotNull(), _obs("latency", value=F.greatest("latency_ms", F.lit(0.0)) / 1000)),
        F.when(F.col("model_error").isNotNull(), _obs("model_error", F.col("model_error"))),
    )  # fmt: skip
    rows = decided.select(F.explode(F.filter(seen, lambda o: o.isNotNull())).alias("o")).select("o.*")
    return rows.groupBy("metric", "a", "b", "bucket").agg(F.count("*").alias("n"), F.sum("value").alias("total"))


class DecisionStage:
    """Called by the feature job with each batch's vectors (transactions only), after their Delta commit."""

    def __init__(self, settings: Settings, models: Models | None = None, rules: RuleBook | None = None):
        self.settings, cfg = settings, settings.decision
        self.models = models or Models.from_registry(settings, AliasFollower)
        self.rules = rules or RuleBook(settings.path(cfg.rules_file), cfg.rules_reload_seconds)
        self.uri = ensure(settings, DECISIONS_TABLE)
        topics = settings.eventlog.topics
        self.topics = {"block": topics.fraud_alerts.name, "review": topics.fraud_review.name}
        self.risk_topic = topics.risk_alerts.name

    def plan(self) -> pinned.Plan:
        """The model versions and rules in force now, for one batch."""
        m = self.models
        refs = {"champion": current(m.champion), "challenger": current(m.challenger), "anomaly": current(m.anomaly)}
        challenger = refs["challenger"] if self.settings.decision.routing != "off" else None
        metrics.set_models({**refs, "challenger": challenger})
        return pinned.Plan(self.settings, refs, self.rules.current)

    def __call__(self, app_id: str, batch_id: int, vectors: DataFrame) -> str:
        started_ms = int(time.time() * 1000)
        decided = vectors.select(*DECISION_COLUMNS).mapInArrow(decide_batches(self.plan()), SCORED).persist()
        try:
            app = f"{app_id}/decisions"
            delta.write_batch_spark(conform_df(decided, DECISIONS_TABLE), self.uri, app_id=app, batch_id=batch_id,
                                    partition_by=DECISIONS_TABLE.partition_by)  # fmt: skip
            n, written = delta.commit_of(vectors.sparkSession, self.uri, app, batch_id, started_ms)
            seen = [r.asDict() for r in observations(decided).collect()]
            if written:  # a replayed batch was counted when it was first written
                metrics.observe_decisions(seen)
            failures = [r for r in seen if r["metric"] == "model_error"]
            if failures:
                detail = {"errors": sum(r["n"] for r in failures), "error": failures[0]["a"]}
                model_failure(self.settings, self.risk_topic, "decisions", batch_id, detail)
                metrics.observe_model_errors("decisions", detail["errors"])
            flagged = decided.where(F.col("decision").isin(list(self.topics)))
            alerts = flagged_alert(self.settings.online_store.key_prefix, self.topics)
            sent = pinned.publish(flagged, self.settings, alerts)
        finally:
            decided.unpersist()
        by_topic = {t: d for d, t in self.topics.items()}
        metrics.observe_alerts(by_topic[t] for t, k in sent.items() for _ in range(k))
        counts = {r["a"]: 0 for r in seen if r["metric"] == "decision"}
        for r in seen:
            if r["metric"] == "decision":
                counts[r["a"]] += r["n"]
        state = "" if written else " (already committed)"
        return f"{n} decisions{state} {counts}, {sum(sent.values())} alerts"


def flagged_alert(prefix: str, topics: dict[str, str]):
    """A flagged decision's claim key (``<prefix>:alert:<transaction_id>``), topic, record key and event (a plain
    function: it is shipped to the executors)."""

    def make(row: dict) -> pinned.Alert:
        return f"{prefix}:alert:{row['transaction_id']}", topics[row["decision"]], row["card_id"], alert(row)

    return make


def alert(row: dict) -> dict:
    """The alert event of a decision (what an analyst's queue receives)."""
    keys = ("transaction_id", "card_id", "decision", "score", "driver", "triggered_rules", "reasons", "model_name",
            "model_version")  # fmt: skip
    out = {k: row[k] for k in keys}
    out["event_time"] = int(row["event_time"].timestamp() * 1000) if row.get("event_time") else None
    return out


def model_failure(settings: Settings, topic: str, stage: str, batch_id: int, detail: dict) -> None:
    """A ``model_failure`` event on ``risk-alerts``: a model failed on a batch of ``stage``; its tier went
    unscored and the stream went on."""
    event = {"kind": "model_failure", "stage": stage, "batch_id": batch_id, **detail,
             "at": int(datetime.now(UTC).timestamp() * 1000)}  # fmt: skip
    log = eventlog.from_settings(settings)
    try:
        log.produce_batch(topic, [(b"model_failure", json.dumps(event).encode())])
    finally:
        log.close()
