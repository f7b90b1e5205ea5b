"""The gold streaming jobs: silver changes → the event dates they touch → those dates' aggregates recomputed.

A gold batch collects the event dates of the silver rows that changed (inserts, late arrivals within the
allowed lateness, label MERGEs), recomputes every aggregate of those dates from silver and replaces exactly
those partitions (``overwrite`` where ``event_date IN (...)``), recording the batch as a Delta app transaction.
Recomputing whole days keeps gold correct under late data and label updates at the cost of re-reading the
day; gold runs on a slower trigger than silver (``streaming.gold_trigger_seconds``).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from gold import transforms
from gold.tables import (
    CARD_DAILY,
    DECISIONS_TABLE,
    FRAUD_SUMMARY_DAILY,
    MARKET_RISK_DAILY,
    MCC_DAILY,
    MERCHANT_DAILY,
    MODEL_COMPARISON,
)
from lakehouse import delta
from lakehouse.config import Settings
from lakehouse.delta_source import read_delta, read_delta_stream
from lakehouse.streaming import checkpoint_dir, query_id, start_batches
from lakehouse.tables import TS, TableSpec, conform, ensure
from silver.tables import MARKET_TICKS, TRANSACTIONS

Aggregate = Callable[[DataFrame], DataFrame]
GOLD_FROM_TRANSACTIONS: list[tuple[TableSpec, Aggregate]] = [
    (CARD_DAILY, transforms.card_daily),
    (MERCHANT_DAILY, transforms.merchant_daily),
    (MCC_DAILY, transforms.mcc_daily),
    (FRAUD_SUMMARY_DAILY, transforms.fraud_summary_daily),
    (MODEL_COMPARISON, transforms.model_comparison),
]
GOLD_FROM_TICKS: list[tuple[TableSpec, Aggregate]] = [(MARKET_RISK_DAILY, transforms.market_risk_daily)]


def recompute(
    spark: SparkSession,
    settings: Settings,
    source: TableSpec,
    outputs: list[tuple[TableSpec, Aggregate]],
    dates: list[date],
    *,
    app_id: str,
    batch_id: int,
) -> dict[str, int]:
    """Recompute ``outputs`` for ``dates`` from ``source`` and replace those partitions; rows written per table."""
    days = [["event_date", "in", [d.isoformat() for d in dates]]]
    silver = read_delta(spark, settings, source.uri(settings), partition_filter=days)
    if source is TRANSACTIONS:  # the stream's decisions of those days (gold.decisions), where there are any
        decisions = read_delta(spark, settings, ensure(settings, DECISIONS_TABLE), partition_filter=days)
        silver = transforms.with_decisions(silver, decisions)
    silver = silver.cache()
    written = {}
    try:
        for spec, aggregate in outputs:
            ensure(settings, spec)
            table = aggregate(silver).toArrow()
            now = pa.array([datetime.now(UTC)] * table.num_rows, TS)
            delta.write_batch(
                settings,
                spec.uri(settings),
                conform(table, spec, computed_at=now),
                app_id=f"{app_id}/{spec.name}",
                batch_id=batch_id,
                partition_by=spec.partition_by,
                mode="overwrite",
                predicate=delta.date_predicate(dates),
            )
            written[spec.full_name] = table.num_rows
    finally:
        silver.unpersist()
    return written


class GoldBatch:
    """foreachBatch of a gold query over the change feed of one silver table."""

    def __init__(self, spark: SparkSession, settings: Settings, name: str, source: TableSpec, outputs):
        self.spark, self.settings, self.name, self.source, self.outputs = spark, settings, name, source, outputs

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        dates = [r[0] for r in batch.select("event_date").distinct().collect() if r[0] is not None]
        if not dates:
            return
        app_id = query_id(checkpoint_dir(self.settings, self.name))
        written = recompute(
            self.spark, self.settings, self.source, self.outputs, dates, app_id=app_id, batch_id=batch_id
        )
        print(
            f"[{self.name}] batch {batch_id}: {len(dates)} day(s) recomputed "
            f"({', '.join(f'{k} {v}' for k, v in written.items())}) in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )


def start(spark: SparkSession, settings: Settings, trigger: dict | None = None) -> list[StreamingQuery]:
    trigger = trigger or {"processingTime": f"{settings.streaming.gold_trigger_seconds} seconds"}
    queries = []
    # gold.daily: the days whose silver rows changed or whose decisions the stream has written since (one query
    # over both change feeds, so no two writers replace the same partitions at once)
    for name, sources, outputs in (
        ("gold.daily", (TRANSACTIONS, DECISIONS_TABLE), GOLD_FROM_TRANSACTIONS),
        ("gold.market", (MARKET_TICKS,), GOLD_FROM_TICKS),
    ):
        streams = [read_delta_stream(spark, settings, ensure(settings, s)).select("event_date") for s in sources]
        changes = functools.reduce(DataFrame.unionByName, streams)
        handler = GoldBatch(spark, settings, name, sources[0], outputs)
        queries.append(start_batches(settings, name, changes, handler, trigger=trigger))
    return queries
