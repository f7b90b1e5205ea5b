"""The silver streaming jobs: bronze Delta tables → typed, deduplicated, enriched, labelled silver tables.

Two queries, each the only writer of its tables, both reading bronze with Spark's Delta source:
- ``silver.transactions`` reads bronze.transactions and bronze.labels (one union stream, so labels and
  transactions never race for the same table). Per micro-batch: late rows (event time before the watermark
  the previous batch left) → ``silver.late_events``; repeats within the batch and repeats of rows already in
  silver (an insert-only MERGE bounded to the batch's event-time range) are counted, not inserted; new rows
  are enriched with the reference tables and checked by the quality suite (failures quarantined); labels
  are upserted into ``silver.labels`` and MERGEd into the transactions they label.
- ``silver.market_ticks`` reads bronze.market_ticks the same way, deduplicated on (symbol, event_time).

Everything runs as Spark operations on the executors; the driver only sees counts and the MERGEs' metrics.
Every write is a Delta app transaction (query id + output, batch id), so a batch replayed after a crash skips
what it already wrote. The watermark a batch leaves is recorded in ``silver.stream_batches`` (its last write).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from lakehouse import delta, metrics, quality
from lakehouse.catalog import (
    EXPECTATION_RESULTS,
    LABELS_TABLE,
    LATE_EVENTS,
    MARKET_TICKS,
    QUARANTINE,
    STREAM_BATCHES,
    TRANSACTIONS,
    get,
)
from lakehouse.config import Settings
from lakehouse.streaming import QueryIds, checkpoint_dir, start_batches
from lakehouse.tables import TableSpec, conform_df, ensure, spark_schema
from silver import expectations, reference
from silver.transforms import classify, enrich, late_events, latest_labels, parse_events, tick_id

TX_QUERY = "silver.transactions"
TICKS_QUERY = "silver.market_ticks"

# A label replaces the one a row has if it was reported later, or at the same time but says something else (a
# correction). An identical label delivered again (an at-least-once producer, a replay) changes nothing, so
# ``labeled_at`` stays the time silver first learnt it: the instant an audit of "what did we know" turns on.
NEWER_LABEL = (
    "(s.label_reported_at > t.label_reported_at) OR ((s.label_reported_at = t.label_reported_at) AND "
    "((s.label IS DISTINCT FROM t.label) OR (s.label_source IS DISTINCT FROM t.label_source)))"
)
LABEL_COLUMNS = ("label", "label_source", "label_scenario", "label_reported_at", "labeled_at")


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}'"


def _date(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


def _utc(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)


@dataclass
class ReferenceCache:
    """The silver reference tables as small in-memory DataFrames, re-read when a table gets a new Delta version.

    They are local relations (a few thousand rows that live in the driver), so broadcasting them in a join
    costs no Spark job per batch.
    """

    spark: SparkSession
    settings: Settings
    _frames: dict[str, tuple[int, DataFrame]] = field(default_factory=dict)

    def frames(self) -> dict[str, DataFrame]:
        out = {}
        for name, ref in reference.REFERENCES.items():
            uri = ref.spec.uri(self.settings)
            version = delta.latest_version(self.spark, uri)
            cached = self._frames.get(name)
            if cached is None or cached[0] != version:
                rows = delta.read(self.spark, uri, version=version).collect()  # a reference table, not a batch
                cached = (version, self.spark.createDataFrame(rows, spark_schema(ref.spec)))
                self._frames[name] = cached
            out[name] = cached[1]
        return out


@dataclass
class BatchReport:
    rows_in: int = 0
    inserted: int = 0
    duplicates_in_batch: int = 0
    duplicates_seen_before: int = 0
    late: int = 0
    quarantined: int = 0
    labels_in: int = 0
    labels_applied: int = 0
    max_event_time: datetime | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        """Time a part of the batch (shown in the progress line)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - t0


@dataclass(frozen=True)
class Counts:
    """What one Spark job tells the driver about a classified batch."""

    rows: int
    new: int
    duplicates: int
    late: int
    min_new_time: datetime | None
    max_new_time: datetime | None
    max_event_time: datetime | None

    @classmethod
    def of(cls, classified: DataFrame) -> Counts:
        status, t = F.col("silver_status"), F.unix_micros("event_time")
        new = status == "new"
        row: Row = classified.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count_if(new).alias("new"),
            F.count_if(status == "duplicate").alias("duplicates"),
            F.count_if(status == "late").alias("late"),
            F.min(F.when(new, t)).alias("lo"),
            F.max(F.when(new, t)).alias("hi"),
            F.max(t).alias("max_t"),
        ).first()
        return cls(
            row["rows"],
            row["new"],
            row["duplicates"],
            row["late"],
            _utc(row["lo"]),
            _utc(row["hi"]),
            _utc(row["max_t"]),
        )


class SilverWriter:
    """The exactly-once writes of one silver query's micro-batch (shared by transactions and ticks)."""

    def __init__(self, settings: Settings, query: str):
        self.settings = settings
        self.query = query
        self.query_id = QueryIds(checkpoint_dir(settings, query))
        self.lateness = timedelta(seconds=settings.streaming.allowed_lateness_s)
        self._left: tuple[int, datetime | None] | None = None  # (batch id, the watermark it left)

    def app(self, spark: SparkSession, output: str) -> str:
        return f"{self.query_id(spark)}/{output}"

    def watermark_before(self, spark: SparkSession, batch_id: int) -> datetime | None:
        """The watermark the batch before ``batch_id`` left (in memory, else from ``silver.stream_batches``), so a
        replayed batch sees the same watermark and makes the same decisions."""
        if self._left is not None and self._left[0] == batch_id - 1:
            return self._left[1]
        stats = delta.read(spark, STREAM_BATCHES.uri(self.settings))
        if "query_id" not in stats.columns:  # a table from before the column existed: no watermark yet
            return None
        row = (
            stats.where((F.col("query_id") == self.query_id(spark)) & (F.col("batch_id") < batch_id))
            .orderBy(F.col("batch_id").desc())
            .select(F.unix_micros("watermark").alias("w"))
            .first()
        )
        return None if row is None else _utc(row["w"])

    def merge_new(self, spec: TableSpec, rows: DataFrame, key: list[str], counts: Counts, batch_id: int) -> dict:
        """Insert-only MERGE: rows whose key is already in the table (within the batch's event-time range) are
        duplicates seen in an earlier batch. Returns the MERGE's metrics (also when the batch is replayed)."""
        lo, hi = counts.min_new_time, counts.max_new_time
        bounds = (
            f"t.event_date >= {_date(lo.date())} AND t.event_date <= {_date(hi.date())} "
            f"AND t.event_time >= {_ts(lo)} AND t.event_time <= {_ts(hi)}"
        )
        match = " AND ".join(f"t.{k} = s.{k}" for k in key)
        return delta.merge_batch_spark(
            rows,
            spec.uri(self.settings),
            f"{match} AND {bounds}",
            lambda m: m.whenNotMatchedInsertAll(),
            app_id=self.app(rows.sparkSession, "insert"),
            batch_id=batch_id,
            evolve_schema=True,  # a field a newer contract version added becomes a new column
        )

    def append(self, spec: TableSpec, rows: DataFrame, output: str, batch_id: int, merge_schema: bool = False) -> None:
        delta.write_batch_spark(
            rows,
            spec.uri(self.settings),
            app_id=self.app(rows.sparkSession, output),
            batch_id=batch_id,
            partition_by=spec.partition_by,
            merge_schema=merge_schema,
        )

    def next_watermark(self, previous: datetime | None, max_event_time: datetime | None) -> datetime | None:
        if max_event_time is None:
            return previous
        candidate = max_event_time - self.lateness
        return candidate if previous is None or candidate > previous else previous

    def finish(
        self, spark: SparkSession, batch_id: int, report: BatchReport, watermark: datetime | None, t0: float
    ) -> None:
        new_watermark = self.next_watermark(watermark, report.max_event_time)
        now = datetime.now(UTC)
        row = {
            "query": self.query,
            "query_id": self.query_id(spark),
            "batch_id": batch_id,
            **{k: v for k, v in vars(report).items() if k != "phases"},
            "watermark": new_watermark,
            "processed_at": now,
            "duration_s": time.monotonic() - t0,
            "processed_date": now.date(),
        }
        stats = spark.createDataFrame([row], spark_schema(STREAM_BATCHES))
        self.append(STREAM_BATCHES, stats, "stats", batch_id, merge_schema=True)
        self._left = (batch_id, new_watermark)
        duplicates = report.duplicates_in_batch + report.duplicates_seen_before
        metrics.observe_silver(self.query, report.late, duplicates, new_watermark)
        print(
            f"[{self.query}] batch {batch_id}: {report.rows_in} in, {report.inserted} inserted, "
            f"{duplicates} duplicates, {report.late} late, "
            f"{report.quarantined} quarantined, {report.labels_applied}/{report.labels_in} labels applied; "
            f"watermark {new_watermark:%Y-%m-%d %H:%M:%S} in {time.monotonic() - t0:.2f} s "
            f"({', '.join(f'{k} {v:.2f}' for k, v in report.phases.items())})"
            if new_watermark
            else f"[{self.query}] batch {batch_id}: empty",
            file=sys.stderr,
            flush=True,
        )

    def late(self, classified: DataFrame, kind: str, event_id: Column, watermark: datetime, batch_id: int) -> None:
        late = classified.where(F.col("silver_status") == "late")
        self.append(
            LATE_EVENTS, conform_df(late_events(late, kind, event_id, watermark), LATE_EVENTS), "late", batch_id
        )


def keep_payload_if_late(classified: DataFrame) -> DataFrame:
    """Only late rows keep their raw payload (for silver.late_events)."""
    return classified.withColumn("payload", F.when(F.col("silver_status") == "late", F.col("payload")))


def new_only(classified: DataFrame) -> DataFrame:
    return classified.where(F.col("silver_status") == "new").drop("silver_status", "payload")


class TransactionsBatch(SilverWriter):
    """foreachBatch of ``silver.transactions`` (bronze transactions + labels → silver)."""

    def __init__(self, spark: SparkSession, settings: Settings):
        super().__init__(settings, TX_QUERY)
        self.refs = ReferenceCache(spark, settings)
        self.suite = expectations.transactions_suite()
        self.label_horizon = timedelta(days=settings.streaming.label_horizon_days)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        spark = batch.sparkSession
        watermark = self.watermark_before(spark, batch_id)
        batch = batch.persist()
        try:
            report = self._process(batch, batch_id, watermark)
        finally:
            batch.unpersist()
        self.finish(spark, batch_id, report, watermark, t0)

    def _process(self, batch: DataFrame, batch_id: int, watermark: datetime | None) -> BatchReport:
        report = BatchReport()
        with report.phase("refs"):
            refs = self.refs.frames()
        tx = parse_events(batch.where(F.col("kind") == "transaction"), "transaction")
        classified = keep_payload_if_late(classify(tx, ["transaction_id"], watermark))
        classified = enrich(classified, refs["mcc"], refs["countries"], refs["merchants"], refs["terminals"],
                            refs["devices"]).persist()  # fmt: skip
        try:
            with report.phase("classify"):
                counts = Counts.of(classified)
            report.rows_in, report.duplicates_in_batch = counts.rows, counts.duplicates
            report.late, report.max_event_time = counts.late, counts.max_event_time
            if counts.late:
                self.late(classified, "transaction", F.col("transaction_id"), watermark, batch_id)
            rows = None
            if counts.new:
                with report.phase("quality"):
                    checked = quality.run(self.suite, new_only(classified), datetime.now(UTC))
                    quality.record(self.settings, checked, suite=self.suite.name, table_name=TX_QUERY,
                                   app_id=self.app(batch.sparkSession, "quality"), batch_id=batch_id)  # fmt: skip
                with report.phase("merge"):
                    rows = conform_df(checked.passed, TRANSACTIONS, processed_at=F.current_timestamp())
                    merged = self.merge_new(TRANSACTIONS, rows, ["transaction_id"], counts, batch_id)
                report.inserted = merged.get("numTargetRowsInserted", 0)
                passed = merged.get("numSourceRows", 0)
                report.quarantined = counts.new - passed
                report.duplicates_seen_before = passed - report.inserted
            with report.phase("labels"):
                labels = latest_labels(parse_events(batch.where(F.col("kind") == "label"), "label"))
                report.labels_in, report.labels_applied = self._labels(labels, rows, counts, batch_id)
        finally:
            classified.unpersist()
        return report

    def _labels(self, labels: DataFrame, inserted: DataFrame | None, counts: Counts, batch_id: int) -> tuple[int, int]:
        """Upsert this batch's labels into silver.labels, then MERGE into the transactions they label both
        them and labels that arrived earlier than the transactions just inserted. (labels in, rows labelled)"""
        spark = labels.sparkSession
        labels = labels.withColumns(
            {"labeled_at": F.current_timestamp(), "label_date": F.to_date("label_reported_at")}
        ).persist()
        try:
            n = labels.count()
            if n:
                delta.merge_batch_spark(
                    conform_df(labels, LABELS_TABLE),
                    LABELS_TABLE.uri(self.settings),
                    "t.transaction_id = s.transaction_id",
                    lambda m: m.whenMatchedUpdateAll(condition=NEWER_LABEL).whenNotMatchedInsertAll(),
                    app_id=self.app(spark, "labels"),
                    batch_id=batch_id,
                )
            todo = labels.select("transaction_id", *LABEL_COLUMNS) if n else None
            if inserted is not None:
                early = self._earlier_labels(inserted, counts.min_new_time)
                if n:  # this batch's labels are in silver.labels already (and newer)
                    early = early.join(labels.select("transaction_id"), "transaction_id", "left_anti")
                todo = early if todo is None else todo.unionByName(early)
            if todo is None:
                return n, 0
            todo = todo.persist()
            try:
                lo, hi = todo.agg(
                    F.min(F.unix_micros("label_reported_at")), F.max(F.unix_micros("label_reported_at"))
                ).first()
                if lo is None:
                    return n, 0
                lo = _utc(lo) - self.label_horizon
                if counts.min_new_time is not None:
                    lo = min(lo, counts.min_new_time)
                hi = max(_utc(hi), datetime.now(UTC))
                merged = delta.merge_batch_spark(
                    todo,
                    TRANSACTIONS.uri(self.settings),
                    f"t.transaction_id = s.transaction_id AND t.event_date >= {_date(lo.date())} "
                    f"AND t.event_date <= {_date(hi.date())}",
                    lambda m: m.whenMatchedUpdate(
                        condition=f"t.label_reported_at IS NULL OR {NEWER_LABEL}",
                        set={c: f"s.{c}" for c in LABEL_COLUMNS},
                    ),
                    app_id=self.app(spark, "apply_labels"),
                    batch_id=batch_id,
                )
            finally:
                todo.unpersist()
            return n, merged.get("numTargetRowsUpdated", 0)
        finally:
            labels.unpersist()

    def _earlier_labels(self, inserted: DataFrame, since: datetime) -> DataFrame:
        """Labels already in silver.labels for transactions inserted by this batch (labels that came first)."""
        known = delta.read(inserted.sparkSession, LABELS_TABLE.uri(self.settings)).where(
            (F.col("label_date") >= F.lit(since.date())) & (F.col("label_reported_at") >= F.lit(since))
        )
        return known.join(inserted.select("transaction_id"), "transaction_id", "left_semi").select(
            "transaction_id", *LABEL_COLUMNS
        )


class TicksBatch(SilverWriter):
    """foreachBatch of ``silver.market_ticks``."""

    def __init__(self, settings: Settings):
        super().__init__(settings, TICKS_QUERY)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        spark = batch.sparkSession
        watermark = self.watermark_before(spark, batch_id)
        report = BatchReport()
        classified = keep_payload_if_late(
            classify(parse_events(batch, "market_tick"), ["symbol", "event_time"], watermark)
        )
        classified = classified.persist()
        try:
            counts = Counts.of(classified)
            report.rows_in, report.duplicates_in_batch = counts.rows, counts.duplicates
            report.late, report.max_event_time = counts.late, counts.max_event_time
            if counts.late:
                self.late(classified, "market_tick", tick_id(), watermark, batch_id)
            if counts.new:
                rows = conform_df(new_only(classified), MARKET_TICKS, processed_at=F.current_timestamp())
                merged = self.merge_new(MARKET_TICKS, rows, ["symbol", "event_time"], counts, batch_id)
                report.inserted = merged.get("numTargetRowsInserted", 0)
                report.duplicates_seen_before = merged.get("numSourceRows", 0) - report.inserted
        finally:
            classified.unpersist()
        self.finish(spark, batch_id, report, watermark, t0)


def ensure_tables(settings: Settings) -> None:
    """Create silver's tables and its inputs (so the stream can start before any data), load the references."""
    for spec in (
        TRANSACTIONS,
        LABELS_TABLE,
        MARKET_TICKS,
        LATE_EVENTS,
        STREAM_BATCHES,
        EXPECTATION_RESULTS,
        QUARANTINE,
    ):
        ensure(settings, spec)
    for bronze in ("bronze.transactions", "bronze.labels", "bronze.market_ticks"):
        ensure(settings, get(bronze))
    reference.load(settings)


def _bronze(spark: SparkSession, settings: Settings, table: str, kind: str, max_files: int | None) -> DataFrame:
    stream = delta.read_stream(spark, get(f"bronze.{table}").uri(settings), max_files=max_files)
    return stream.select(*[c for c in stream.columns if not c.startswith("_")]).withColumn("kind", F.lit(kind))


def start(
    spark: SparkSession, settings: Settings, trigger: dict | None = None, max_files_per_trigger: int | None = None
) -> list[StreamingQuery]:
    """Start both silver queries (the tables are created first, so they may start before any data)."""
    ensure_tables(settings)
    tx = _bronze(spark, settings, "transactions", "transaction", max_files_per_trigger).unionByName(
        _bronze(spark, settings, "labels", "label", max_files_per_trigger)
    )
    ticks = _bronze(spark, settings, "market_ticks", "market_tick", max_files_per_trigger)
    return [
        start_batches(settings, TX_QUERY, tx, TransactionsBatch(spark, settings), trigger=trigger),
        start_batches(settings, TICKS_QUERY, ticks, TicksBatch(settings), trigger=trigger),
    ]
