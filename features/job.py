"""The streaming feature jobs: silver changes → Spark's state store (``features.stateful``) → vectors in Delta.

``features.transactions`` reads silver.transactions' change feed: inserts are new transactions, and rows
whose label became ``fraud`` (a label MERGE, or a transaction inserted with its early label) are fraud-label
events at their reported time. The card, terminal and merchant operators apply them to the entity states in
Spark's state store (and copy the touched states to the online store), and each micro-batch's vectors are
appended to ``features.transactions`` with Spark's Delta writer, exactly once (a Delta app transaction per
batch). ``features.market`` does the same for silver.market_ticks. With ``decision.enabled``, the transactions
of a batch are scored on the executors after the vectors' commit (``serving.stream``: gold.decisions and alerts)
and so are the ticks (``serving.market``: gold.market_anomalies and risk alerts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from features import stateful
from lakehouse import delta, metrics
from lakehouse.catalog import MARKET_FEATURES_TABLE, MARKET_TICKS, TRANSACTION_FEATURES_TABLE, TRANSACTIONS
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION, MARKET_FEATURES, TRANSACTION_FEATURES
from lakehouse.streaming import QueryIds, checkpoint_dir, start_batches
from lakehouse.tables import TableSpec, conform_df, ensure

TX_QUERY, TICKS_QUERY = "features.transactions", "features.market"


def transaction_events(changes: DataFrame) -> DataFrame:
    """silver.transactions' change feed as the operators' events: an insert is a transaction (at its event
    time), a row whose label is fraud is a fraud-label event (at its reported time); an insert with its early
    fraud label is both."""
    fraud = (F.col("label") == "fraud") & F.col("label_reported_at").isNotNull()
    kinds = F.array(F.when(F.col("_change_type") == "insert", F.lit(stateful.TX)), F.when(fraud, F.lit(stateful.LABEL)))
    events = changes.withColumn("kind", F.explode(F.filter(kinds, lambda k: k.isNotNull())))
    return events.withColumns(
        {
            "ts": F.unix_millis("event_time"),
            "reported_ms": F.when(F.col("kind") == stateful.LABEL, F.unix_millis("label_reported_at")),
            "log_ms": F.unix_millis("log_time"),
            "event_date": F.date_format("event_date", "yyyy-MM-dd"),
            "feats": F.lit("{}"),
            stateful.WATERMARK: F.col("_commit_timestamp"),
        }
    )


def vectors(out: DataFrame, features: list, spec: TableSpec) -> DataFrame:
    """The operators' rows as ``spec``'s table (plus the inputs scoring needs): typed features, times back."""
    parsed = stateful.parse(out, features)
    return parsed.withColumns(
        {
            "event_time": F.timestamp_millis("ts"),
            "event_date": F.to_date("event_date"),
            **({"log_time": F.timestamp_millis("log_ms")} if "log_ms" in out.columns else {}),
            "feature_version": F.lit(FEATURE_VERSION),
            "computed_at": F.current_timestamp(),
        }
    )


class FeatureBatch:
    """foreachBatch of a feature query: the batch's vectors (computed once by the stateful operators) → Delta,
    then the scoring stage, if any, on the same vectors."""

    def __init__(self, settings: Settings, name: str, output: TableSpec, after: Callable | None = None):
        self.settings, self.name, self.output, self.after = settings, name, output, after
        self.uri = output.uri(settings)
        self.query_id = QueryIds(checkpoint_dir(settings, name))

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0, started_ms = time.monotonic(), int(time.time() * 1000)
        app_id = self.query_id(batch.sparkSession)
        batch = batch.persist()
        try:
            # runs the stateful operators once, also when the write below is a replay Delta skips (a state store
            # whose operators never ran in a batch fails the batch's commit)
            if batch.count() == 0:
                return
            delta.write_batch_spark(
                conform_df(batch, self.output), self.uri, app_id=app_id, batch_id=batch_id,
                partition_by=self.output.partition_by,
            )  # fmt: skip
            rows, new = delta.commit_of(batch.sparkSession, self.uri, app_id, batch_id, started_ms)
            if new:
                metrics.observe_written(self.name, self.output.name, rows)
            note = self.after(app_id, batch_id, batch) if self.after else None
        finally:
            batch.unpersist()
        print(
            f"[{self.name}] batch {batch_id}: {rows} vectors {'written' if new else 'already committed'}"
            f"{f', {note}' if note else ''} in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )


def start(spark: SparkSession, settings: Settings, trigger: dict | None = None) -> list[StreamingQuery]:
    """Start both feature queries (tables are created first, so they may start before any data)."""
    for spec in (TRANSACTIONS, MARKET_TICKS, TRANSACTION_FEATURES_TABLE, MARKET_FEATURES_TABLE):
        ensure(settings, spec)
    after_tx = after_ticks = None
    if settings.decision.enabled:  # each batch's vectors are scored (gold.decisions, gold.market_anomalies)
        from serving.market import MarketAnomalyStage
        from serving.stream import DecisionStage

        after_tx, after_ticks = DecisionStage(settings), MarketAnomalyStage(settings)
    changes = delta.read_stream(spark, TRANSACTIONS.uri(settings), change_feed=True)
    events = transaction_events(changes.where(F.col("_change_type").isin("insert", "update_postimage")))
    tx = vectors(stateful.transaction_features(events, settings, TX_QUERY), TRANSACTION_FEATURES,
                 TRANSACTION_FEATURES_TABLE)  # fmt: skip
    ticks = delta.read_stream(spark, MARKET_TICKS.uri(settings)).select(
        "symbol", "price", F.unix_millis("event_time").alias("ts"),
        F.date_format("event_date", "yyyy-MM-dd").alias("event_date"),
    )  # fmt: skip
    market = vectors(stateful.market_features(ticks, settings, TICKS_QUERY), MARKET_FEATURES, MARKET_FEATURES_TABLE)
    tx_batch = FeatureBatch(settings, TX_QUERY, TRANSACTION_FEATURES_TABLE, after_tx)
    ticks_batch = FeatureBatch(settings, TICKS_QUERY, MARKET_FEATURES_TABLE, after_ticks)
    return [
        start_batches(settings, TX_QUERY, tx, tx_batch, trigger=trigger),
        start_batches(settings, TICKS_QUERY, market, ticks_batch, trigger=trigger),
    ]
