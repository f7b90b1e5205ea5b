"""The streaming feature jobs: silver changes → online states (memory + Redis) → feature vectors in Delta.

``features.transactions`` reads silver.transactions' change feed: inserts are new transactions, and rows
whose label became ``fraud`` (a label MERGE, or a transaction inserted with its early label) are fraud-label
events at their reported time. Per micro-batch it applies both to the entity states, computes every
transaction's features (``features.online``), appends the vectors to ``features.transactions`` exactly once
(a Delta app transaction per batch), then writes the touched states to the online store. In that order a
crash before the Delta commit replays the batch on the states before it (the same vectors), and a crash
after it skips the commit and re-applies the batch to the states, which ignores events already in them.
``features.market`` does the same for silver.market_ticks. With ``decision.enabled``, the transactions of a
batch are scored between the vectors' commit and the states' flush (``serving.stream``: gold.decisions and
alerts), so a replayed batch decides on the same vectors; so are the ticks (``serving.market``:
gold.market_anomalies and risk alerts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from features import online
from features.definitions import (
    FEATURE_VERSION,
    MARKET_FEATURES,
    TRANSACTION_FEATURES,
    TRANSACTION_INPUTS,
    Feature,
)
from features.store import OnlineStore, StateCache
from features.tables import MARKET_FEATURES_TABLE, TRANSACTION_FEATURES_TABLE, feature_fields
from lakehouse import delta
from lakehouse.config import Settings
from lakehouse.streaming import QueryIds, checkpoint_dir, start_batches
from lakehouse.tables import TS, TableSpec, conform, ensure
from silver.tables import MARKET_TICKS, TRANSACTIONS

TX_QUERY, TICKS_QUERY = "features.transactions", "features.market"
# what the decision's rules and latency need beside the feature inputs
DECISION_INPUTS = ("merchant_category_code", "ip_hash", "customer_id", "log_time", "event_date")
TX_COLUMNS = (*TRANSACTION_INPUTS, *DECISION_INPUTS, "label", "label_reported_at", "_change_type")


def millis(col: pa.ChunkedArray) -> pa.Array:
    """Timestamps as integer UTC milliseconds (``unix_millis`` in Spark)."""
    return pc.cast(pc.cast(col, pa.timestamp("ms", "UTC"), safe=False), pa.int64())


def fraud_label_events(changes: pa.Table) -> list[dict]:
    """Rows of the change feed whose (latest) label is fraud: one event per transaction, at its reported time."""
    fraud = changes.filter(pc.and_(pc.equal(changes["label"], "fraud"), pc.is_valid(changes["label_reported_at"])))
    return (
        fraud.select(["transaction_id", "terminal_id", "merchant_id"])
        .append_column("reported_ms", millis(fraud["label_reported_at"]))
        .to_pylist()
    )


class FeatureBatch:
    """foreachBatch of a feature query: states (memory + online store) → vectors in Delta, then the states."""

    features: list[Feature]

    def __init__(self, settings: Settings, name: str, output: TableSpec):
        self.settings, self.name, self.output = settings, name, output
        self.cache = StateCache(OnlineStore(settings), settings.features.cache_entities)
        self.retention_ms = online.raw_retention_ms(settings.streaming.allowed_lateness_s)
        self.query_id = QueryIds(checkpoint_dir(settings, name))
        self.app_id = ""

    def compute(self, changes: pa.Table) -> tuple[pa.Table, list[dict], set, str]:
        """(key columns, feature rows, states touched, a note for the progress line) of one batch."""
        raise NotImplementedError

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        self.app_id = self.query_id(batch.sparkSession)
        changes = batch.toArrow()
        if changes.num_rows == 0:
            return
        keys, rows, touched, note = self.compute(changes)
        written = self.write(keys, rows, batch_id)
        if (decided := self.after_write(batch_id, keys, rows)) is not None:
            note = f"{note}; {decided}"
        self.cache.flush(touched, f"{self.name}:{batch_id}")
        print(
            f"[{self.name}] batch {batch_id}: {keys.num_rows} vectors {'written' if written else 'already committed'}"
            f", {note}, in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    def after_write(self, batch_id: int, keys: pa.Table, rows: list[dict]) -> str | None:
        """What runs between the vectors' commit and the states' flush (decisions, anomalies); a note or None."""
        return None

    def write(self, keys: pa.Table, rows: list[dict], batch_id: int) -> bool:
        vectors = pa.Table.from_pylist(rows, schema=pa.schema(feature_fields(self.features)))
        out = pa.Table.from_arrays([*keys.columns, *vectors.columns], names=[*keys.column_names, *vectors.column_names])
        n = out.num_rows
        now = pa.array([datetime.now(UTC)] * n, TS)
        version = pa.array([FEATURE_VERSION] * n, pa.string())
        return delta.write_batch(
            self.settings,
            self.output.uri(self.settings),
            conform(out, self.output, feature_version=version, computed_at=now),
            app_id=self.app_id,
            batch_id=batch_id,
            partition_by=self.output.partition_by,
        )


class TransactionFeaturesBatch(FeatureBatch):
    features = TRANSACTION_FEATURES

    def __init__(self, settings: Settings, decisions: Callable[[str, int, list[dict], list[dict]], str] | None = None):
        super().__init__(settings, TX_QUERY, TRANSACTION_FEATURES_TABLE)
        self.decisions, self._txs = decisions, []

    def after_write(self, batch_id: int, keys: pa.Table, rows: list[dict]) -> str | None:
        if self.decisions is None:
            return None
        return self.decisions(self.app_id, batch_id, self._txs, rows)

    def compute(self, changes: pa.Table) -> tuple[pa.Table, list[dict], set, str]:
        inserts = changes.filter(pc.equal(changes["_change_type"], "insert"))
        inserts = inserts.append_column("ts", millis(inserts["event_time"]))
        labels = fraud_label_events(changes)
        txs = inserts.select([*TRANSACTION_INPUTS, *DECISION_INPUTS, "ts"]).to_pylist()
        self._txs = txs
        keys = [("card", t["card_id"]) for t in txs]
        keys += [(p, r[f"{p}_id"]) for r in (*txs, *labels) for p in online.PLACES if r.get(f"{p}_id") is not None]
        self.cache.prefetch(keys)
        rows, touched = online.transactions_batch(self.cache.get, txs, labels, self.retention_ms)
        key_columns = inserts.select(["transaction_id", "card_id", "event_time", "event_date"])
        return key_columns, rows, touched, f"{len(labels)} fraud labels, {len(touched)} states"


class MarketFeaturesBatch(FeatureBatch):
    features = MARKET_FEATURES

    def __init__(self, settings: Settings, anomalies: Callable[[str, int, list[dict], list[dict]], str] | None = None):
        super().__init__(settings, TICKS_QUERY, MARKET_FEATURES_TABLE)
        self.anomalies = anomalies

    def after_write(self, batch_id: int, keys: pa.Table, rows: list[dict]) -> str | None:
        if self.anomalies is None:
            return None
        return self.anomalies(self.app_id, batch_id, keys.to_pylist(), rows)

    def compute(self, ticks: pa.Table) -> tuple[pa.Table, list[dict], set, str]:
        ticks = ticks.append_column("ts", millis(ticks["event_time"]))
        rows, touched = online.ticks_batch(self.cache.get, ticks.select(["symbol", "ts", "price"]).to_pylist())
        key_columns = ticks.select(["symbol", "event_time", "price", "event_date"])
        return key_columns, rows, touched, f"{len(touched)} symbols"


def start(spark: SparkSession, settings: Settings, trigger: dict | None = None) -> list[StreamingQuery]:
    """Start both feature queries (tables are created first, so they may start before any data)."""
    for spec in (TRANSACTIONS, MARKET_TICKS, TRANSACTION_FEATURES_TABLE, MARKET_FEATURES_TABLE):
        ensure(settings, spec)
    decisions = anomalies = None
    if settings.decision.enabled:  # each batch's vectors are scored (gold.decisions, gold.market_anomalies)
        from serving.market import MarketAnomalyStage
        from serving.stream import DecisionStage

        decisions, anomalies = DecisionStage(settings), MarketAnomalyStage(settings)
    changes = delta.read_stream(spark, TRANSACTIONS.uri(settings), change_feed=True)
    tx = changes.where(F.col("_change_type").isin("insert", "update_postimage")).select(*TX_COLUMNS)
    ticks = delta.read_stream(spark, MARKET_TICKS.uri(settings)).select("symbol", "event_time", "price", "event_date")
    return [
        start_batches(settings, TX_QUERY, tx, TransactionFeaturesBatch(settings, decisions), trigger=trigger),
        start_batches(settings, TICKS_QUERY, ticks, MarketFeaturesBatch(settings, anomalies), trigger=trigger),
    ]
