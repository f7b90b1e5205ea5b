"""The silver streaming jobs: bronze Delta tables → typed, deduplicated, enriched, labelled silver tables.

Two queries, each the only writer of its tables:
- ``silver.transactions`` reads bronze.transactions and bronze.labels (one union stream, so labels and
  transactions never race for the same table). Per micro-batch: late rows (event time before the watermark
  the previous batch left) → ``silver.late_events``; repeats within the batch and repeats of rows already in
  silver (an insert-only MERGE bounded to the batch's event-time range) are counted, not inserted; new rows
  are enriched with the reference tables and checked by the quality suite (failures quarantined); labels
  are upserted into ``silver.labels`` and MERGEd into the transactions they label.
- ``silver.market_ticks`` reads bronze.market_ticks the same way, deduplicated on (symbol, event_time).

Every commit carries (query id + output, batch id) as a Delta app transaction, so a batch replayed after a
crash skips what it already wrote.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from lakehouse import delta, metrics, quality
from lakehouse.config import Settings
from lakehouse.delta_source import read_delta_stream
from lakehouse.streaming import WatermarkState, checkpoint_dir, query_id, start_batches
from lakehouse.tables import TS, TableSpec, conform, ensure, get
from silver import expectations, reference
from silver.tables import LABELS_TABLE, LATE_EVENTS, MARKET_TICKS, STREAM_BATCHES, TRANSACTIONS
from silver.transforms import classify, enrich, late_events, latest_labels, parse_events

TX_QUERY = "silver.transactions"
TICKS_QUERY = "silver.market_ticks"

# A label replaces the one a row has if it was reported later, or at the same time but says something else (a
# correction). An identical label delivered again (an at-least-once producer, a replay) changes nothing, so
# ``labeled_at`` stays the time silver first learnt it: the instant an audit of "what did we know" turns on.
NEWER_LABEL = (
    "(s.label_reported_at > t.label_reported_at) OR ((s.label_reported_at = t.label_reported_at) AND "
    "((s.label IS DISTINCT FROM t.label) OR (s.label_source IS DISTINCT FROM t.label_source)))"
)


_UTC_MICROS = "'Timestamp(Microsecond, Some(\"UTC\"))'"


def _lit_ts(value: datetime) -> str:
    return f"arrow_cast('{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z', {_UTC_MICROS})"


def _lit_date(value: date) -> str:
    return f"arrow_cast('{value.isoformat()}', 'Date32')"


def now_array(n: int) -> pa.Array:
    return pa.array([datetime.now(UTC)] * n, TS)


@dataclass
class ReferenceCache:
    """The silver reference tables as Spark DataFrames, re-read when a table gets a new Delta version.

    They are local relations (the rows live in the driver), so broadcasting them in a join costs no Spark job.
    """

    spark: SparkSession
    settings: Settings
    _frames: dict[str, tuple[int, DataFrame]] = field(default_factory=dict)

    def frames(self) -> dict[str, DataFrame]:
        out = {}
        for name, ref in reference.REFERENCES.items():
            uri = ref.spec.uri(self.settings)
            version = delta.open_table(self.settings, uri).version()
            cached = self._frames.get(name)
            if cached is None or cached[0] != version:
                arrow = delta.read_arrow(self.settings, uri, version)
                df = self.spark.createDataFrame(arrow.to_pandas() if arrow.num_rows else [], _ddl(ref.spec))
                cached = (version, df)
                self._frames[name] = cached
            out[name] = cached[1]
        return out


def _ddl(spec: TableSpec) -> str:
    types = {pa.string(): "string", pa.float64(): "double", pa.bool_(): "boolean", TS: "timestamp"}
    return ", ".join(f"{f.name} {types[f.type]}" for f in spec.schema)


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


class SilverWriter:
    """The exactly-once writes of one silver query's micro-batch (shared by transactions and ticks)."""

    def __init__(self, settings: Settings, query: str):
        self.settings = settings
        self.query = query
        self.checkpoint = checkpoint_dir(settings, query)
        self.watermarks = WatermarkState(self.checkpoint)
        self.lateness = timedelta(seconds=settings.streaming.allowed_lateness_s)

    def app(self, output: str) -> str:
        return f"{query_id(self.checkpoint)}/{output}"

    def insert_new(self, spec: TableSpec, rows: pa.Table, key: list[str], batch_id: int) -> int:
        """Insert-only MERGE: rows whose key is already in the table (within the rows' event-time range) are
        duplicates seen in an earlier batch. Returns the number inserted (by this batch, also when replayed)."""
        if rows.num_rows == 0:
            return 0
        times = rows.column("event_time")
        lo, hi = pc.min(times).as_py(), pc.max(times).as_py()
        bounds = (
            f"t.event_date >= {_lit_date(lo.date())} AND t.event_date <= {_lit_date(hi.date())} "
            f"AND t.event_time >= {_lit_ts(lo)} AND t.event_time <= {_lit_ts(hi)}"
        )
        match = " AND ".join(f"t.{k} = s.{k}" for k in key)
        metrics = delta.merge_batch(
            self.settings,
            spec.uri(self.settings),
            rows,
            f"{match} AND {bounds}",
            lambda m: m.when_not_matched_insert_all(),
            app_id=self.app("insert"),
            batch_id=batch_id,
            merge_schema=True,  # a field a newer contract version added becomes a new column
        )
        return metrics.get("num_target_rows_inserted", 0)

    def append(self, spec: TableSpec, rows: pa.Table, output: str, batch_id: int) -> None:
        if rows.num_rows:
            delta.write_batch(
                self.settings,
                spec.uri(self.settings),
                rows,
                app_id=self.app(output),
                batch_id=batch_id,
                partition_by=spec.partition_by,
            )

    def next_watermark(self, previous: datetime | None, max_event_time: datetime | None) -> datetime | None:
        if max_event_time is None:
            return previous
        candidate = max_event_time - self.lateness
        return candidate if previous is None or candidate > previous else previous

    def finish(self, batch_id: int, report: BatchReport, watermark: datetime | None, t0: float) -> None:
        new_watermark = self.next_watermark(watermark, report.max_event_time)
        now = datetime.now(UTC)
        row = {
            "query": self.query,
            "batch_id": batch_id,
            **{k: v for k, v in vars(report).items() if k != "phases"},
            "watermark": new_watermark,
            "processed_at": now,
            "duration_s": time.monotonic() - t0,
            "processed_date": now.date(),
        }
        stats = pa.Table.from_pylist([row], schema=STREAM_BATCHES.schema)
        self.append(STREAM_BATCHES, stats, "stats", batch_id)
        self.watermarks.record(batch_id, new_watermark)
        duplicates = report.duplicates_in_batch + report.duplicates_seen_before
        metrics.observe_silver(self.query, report.late, duplicates, new_watermark)
        print(
            f"[{self.query}] batch {batch_id}: {report.rows_in} in, {report.inserted} inserted, "
            f"{report.duplicates_in_batch + report.duplicates_seen_before} duplicates, {report.late} late, "
            f"{report.quarantined} quarantined, {report.labels_applied}/{report.labels_in} labels applied; "
            f"watermark {new_watermark:%Y-%m-%d %H:%M:%S} in {time.monotonic() - t0:.2f} s "
            f"({', '.join(f'{k} {v:.2f}' for k, v in report.phases.items())})"
            if new_watermark
            else f"[{self.query}] batch {batch_id}: empty",
            file=sys.stderr,
            flush=True,
        )


def keep_payload_if_late(classified: DataFrame) -> DataFrame:
    """Only late rows need their raw payload (for silver.late_events): don't collect the others'."""
    return classified.withColumn("payload", F.when(F.col("silver_status") == "late", F.col("payload")))


def split(out: pa.Table, report: BatchReport) -> tuple[pa.Table, pa.Table]:
    """The classified batch as (new rows without status/payload, late rows); counts go to ``report``."""
    status = out["silver_status"]
    report.rows_in = out.num_rows
    report.duplicates_in_batch = pc.sum(pc.equal(status, "duplicate")).as_py() or 0
    report.max_event_time = pc.max(out["event_time"]).as_py()
    new = out.filter(pc.equal(status, "new")).drop_columns(["silver_status", "payload"])
    return new, out.filter(pc.equal(status, "late"))


class TransactionsBatch(SilverWriter):
    """foreachBatch of ``silver.transactions`` (bronze transactions + labels → silver)."""

    def __init__(self, spark: SparkSession, settings: Settings):
        super().__init__(settings, TX_QUERY)
        self.refs = ReferenceCache(spark, settings)
        self.suite = expectations.transactions_suite()
        self.label_horizon = timedelta(days=settings.streaming.label_horizon_days)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        watermark = self.watermarks.before(batch_id)
        batch = batch.persist()
        try:
            report = self._process(batch, batch_id, watermark)
        finally:
            batch.unpersist()
        self.finish(batch_id, report, watermark, t0)

    def _process(self, batch: DataFrame, batch_id: int, watermark: datetime | None) -> BatchReport:
        report = BatchReport()
        tx = parse_events(batch.where(F.col("kind") == "transaction"), "transaction")
        classified = classify(tx, ["transaction_id"], watermark)
        with report.phase("refs"):
            refs = self.refs.frames()
        with report.phase("read+parse+enrich"):  # one Spark job; the rest of the batch works on its Arrow
            out = enrich(
                keep_payload_if_late(classified),
                refs["mcc"],
                refs["countries"],
                refs["merchants"],
                refs["terminals"],
                refs["devices"],
            ).toArrow()
        new, late = split(out, report)
        late = late_events(late, "transaction", late["transaction_id"], watermark) if late.num_rows else late
        with report.phase("labels"):
            labels = latest_labels(parse_events(batch.where(F.col("kind") == "label"), "label")).toArrow()

        with report.phase("quality"):
            checked = quality.run(self.suite, new, datetime.now(UTC))
            quality.record(
                self.settings,
                checked,
                suite=self.suite.name,
                table_name=TX_QUERY,
                app_id=self.app("quality"),
                batch_id=batch_id,
            )
        report.quarantined = checked.quarantined.num_rows
        with report.phase("merge"):
            rows = conform(checked.passed, TRANSACTIONS, processed_at=now_array(checked.passed.num_rows))
            inserted = self.insert_new(TRANSACTIONS, rows, ["transaction_id"], batch_id)
        report.inserted = inserted
        report.duplicates_seen_before = rows.num_rows - report.inserted
        report.late = late.num_rows
        self.append(LATE_EVENTS, conform(late, LATE_EVENTS), "late", batch_id)
        report.labels_in = labels.num_rows
        with report.phase("label-merge"):
            report.labels_applied = self._labels(labels, rows, batch_id)
        return report

    def _labels(self, labels: pa.Table, inserted: pa.Table, batch_id: int) -> int:
        """Upsert this batch's labels into silver.labels, then MERGE into the transactions they label both
        them and labels that arrived earlier than the transactions just inserted."""
        now = now_array(labels.num_rows)
        if labels.num_rows:
            labels = conform(
                labels, LABELS_TABLE, labeled_at=now, label_date=pc.cast(labels["label_reported_at"], pa.date32())
            )
            delta.merge_batch(
                self.settings,
                LABELS_TABLE.uri(self.settings),
                labels,
                "t.transaction_id = s.transaction_id",
                lambda m: m.when_matched_update_all(predicate=NEWER_LABEL).when_not_matched_insert_all(),
                app_id=self.app("labels"),
                batch_id=batch_id,
            )
        early = self._earlier_labels(inserted)
        if labels.num_rows and early.num_rows:  # this batch's labels are in silver.labels already
            early = early.filter(pc.invert(pc.is_in(early["transaction_id"], labels["transaction_id"])))
        todo = (
            pa.concat_tables([t.select(early.column_names) for t in (labels, early) if t.num_rows])
            if (labels.num_rows or early.num_rows)
            else None
        )
        if todo is None:
            return 0
        lo = pc.min(todo["label_reported_at"]).as_py() - self.label_horizon
        if inserted.num_rows:
            lo = min(lo, pc.min(inserted["event_time"]).as_py())
        hi = max(pc.max(todo["label_reported_at"]).as_py(), datetime.now(UTC))
        cols = ["label", "label_source", "label_scenario", "label_reported_at", "labeled_at"]
        metrics = delta.merge_batch(
            self.settings,
            TRANSACTIONS.uri(self.settings),
            todo,
            f"t.transaction_id = s.transaction_id AND t.event_date >= {_lit_date(lo.date())} "
            f"AND t.event_date <= {_lit_date(hi.date())}",
            lambda m: m.when_matched_update(
                {c: f"s.{c}" for c in cols},
                predicate=f"t.label_reported_at IS NULL OR {NEWER_LABEL}",
            ),
            app_id=self.app("apply_labels"),
            batch_id=batch_id,
        )
        return metrics.get("num_target_rows_updated", 0)

    def _earlier_labels(self, inserted: pa.Table) -> pa.Table:
        """Labels already in silver.labels for transactions inserted by this batch (labels that came first)."""
        cols = ["transaction_id", "label", "label_source", "label_scenario", "label_reported_at", "labeled_at"]
        empty = pa.schema([LABELS_TABLE.schema.field(c) for c in cols]).empty_table()
        if inserted.num_rows == 0:
            return empty
        dataset = delta.open_table(self.settings, LABELS_TABLE.uri(self.settings)).to_pyarrow_dataset()
        since = pc.min(inserted["event_time"]).as_py()
        ids = delta.one_of(dataset, "transaction_id", inserted["transaction_id"])
        found = dataset.to_table(columns=cols, filter=(pads.field("label_reported_at") >= pa.scalar(since, TS)) & ids)
        return found


class TicksBatch(SilverWriter):
    """foreachBatch of ``silver.market_ticks``."""

    def __init__(self, settings: Settings):
        super().__init__(settings, TICKS_QUERY)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        watermark = self.watermarks.before(batch_id)
        report = BatchReport()
        ticks = parse_events(batch, "market_tick")
        out = keep_payload_if_late(classify(ticks, ["symbol", "event_time"], watermark)).toArrow()
        new, late = split(out, report)
        if late.num_rows:
            stamp = pc.strftime(late["event_time"], format="%Y-%m-%dT%H:%M:%S", unit="ms")
            late = late_events(late, "market_tick", pc.binary_join_element_wise(late["symbol"], stamp, "@"), watermark)
        rows = conform(new, MARKET_TICKS, processed_at=now_array(new.num_rows))
        inserted = self.insert_new(MARKET_TICKS, rows, ["symbol", "event_time"], batch_id)
        report.inserted = inserted
        report.duplicates_seen_before = rows.num_rows - report.inserted
        report.late = late.num_rows
        self.append(LATE_EVENTS, conform(late, LATE_EVENTS), "late", batch_id)
        self.finish(batch_id, report, watermark, t0)


def ensure_tables(settings: Settings) -> None:
    """Create silver's tables and its inputs (so the stream can start before any data), load the references."""
    for spec in (
        TRANSACTIONS,
        LABELS_TABLE,
        MARKET_TICKS,
        LATE_EVENTS,
        STREAM_BATCHES,
        quality.EXPECTATION_RESULTS,
        quality.QUARANTINE,
    ):
        ensure(settings, spec)
    for bronze in ("bronze.transactions", "bronze.labels", "bronze.market_ticks"):
        ensure(settings, get(bronze))
    reference.load(settings)


def _bronze(spark: SparkSession, settings: Settings, table: str, kind: str, max_versions: int | None) -> DataFrame:
    uri = get(f"bronze.{table}").uri(settings)
    stream = read_delta_stream(spark, settings, uri, max_versions_per_trigger=max_versions)
    return stream.select(*[c for c in stream.columns if not c.startswith("_")]).withColumn("kind", F.lit(kind))


def start(
    spark: SparkSession, settings: Settings, trigger: dict | None = None, max_versions_per_trigger: int | None = None
) -> list[StreamingQuery]:
    """Start both silver queries (the tables are created first, so they may start before any data)."""
    ensure_tables(settings)
    tx = _bronze(spark, settings, "transactions", "transaction", max_versions_per_trigger).unionByName(
        _bronze(spark, settings, "labels", "label", max_versions_per_trigger)
    )
    ticks = _bronze(spark, settings, "market_ticks", "market_tick", max_versions_per_trigger)
    return [
        start_batches(settings, TX_QUERY, tx, TransactionsBatch(spark, settings), trigger=trigger),
        start_batches(settings, TICKS_QUERY, ticks, TicksBatch(settings), trigger=trigger),
    ]
