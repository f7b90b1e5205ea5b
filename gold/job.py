"""The gold streaming jobs: silver changes → the event dates they touch → those dates' aggregates recomputed.

A gold batch takes the event dates of the silver rows that changed (inserts, late arrivals within the allowed
lateness, label MERGEs: Spark's Delta source over silver's change data feed), recomputes every aggregate of
those dates from silver and replaces exactly those partitions (Delta's dynamic partition overwrite), recording
the batch as a Delta app transaction. It all runs on the executors: the dates never reach the driver.
Recomputing whole days keeps gold correct under late data and label updates at the cost of re-reading the
day; gold runs on a slower trigger than silver (``streaming.gold_trigger_seconds``).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from gold import transforms
from lakehouse import delta
from lakehouse.catalog import (
    CARD_DAILY,
    DECISIONS_TABLE,
    FRAUD_SUMMARY_DAILY,
    MARKET_RISK_DAILY,
    MARKET_TICKS,
    MCC_DAILY,
    MERCHANT_DAILY,
    MODEL_COMPARISON,
    TRANSACTIONS,
)
from lakehouse.config import Settings
from lakehouse.streaming import QueryIds, checkpoint_dir, start_batches
from lakehouse.tables import TableSpec, conform_df, ensure

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
    days: DataFrame,
    *,
    app_id: str,
    batch_id: int,
) -> dict[str, int]:
    """Recompute ``outputs`` for the event dates in ``days`` (a one-column DataFrame) from ``source`` and replace
    exactly those dates' partitions (dynamic partition overwrite); rows written per table."""
    days = F.broadcast(days.where(F.col("event_date").isNotNull()).distinct())
    silver = delta.read(spark, source.uri(settings)).join(days, "event_date", "left_semi")
    if source is TRANSACTIONS:  # the stream's decisions of those days (gold.decisions), where there are any
        decisions = delta.read(spark, ensure(settings, DECISIONS_TABLE)).join(days, "event_date", "left_semi")
        silver = transforms.with_decisions(silver, decisions)
    silver = silver.persist()
    written = {}
    started_ms = int(time.time() * 1000)
    try:
        for spec, aggregate in outputs:
            uri = ensure(settings, spec)
            rows = conform_df(aggregate(silver), spec, computed_at=F.current_timestamp())
            out_app = f"{app_id}/{spec.name}"
            delta.write_batch_spark(
                rows, uri, app_id=out_app, batch_id=batch_id, partition_by=spec.partition_by, replace_partitions=True
            )
            written[spec.full_name] = delta.commit_of(spark, uri, out_app, batch_id, started_ms)[0]
    finally:
        silver.unpersist()
    return written


class GoldBatch:
    """foreachBatch of a gold query over the change feed of one silver table."""

    def __init__(self, settings: Settings, name: str, source: TableSpec, outputs):
        self.settings, self.name, self.source, self.outputs = settings, name, source, outputs
        self.query_id = QueryIds(checkpoint_dir(settings, name))

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        spark = batch.sparkSession
        days = batch.select("event_date").where(F.col("event_date").isNotNull()).distinct().persist()
        try:
            n = days.count()
            if not n:
                return
            written = recompute(
                spark, self.settings, self.source, self.outputs, days, app_id=self.query_id(spark), batch_id=batch_id
            )
        finally:
            days.unpersist()
        print(
            f"[{self.name}] batch {batch_id}: {n} day(s) recomputed "
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
        streams = [
            delta.read_stream(spark, ensure(settings, s), change_feed=s.change_data_feed).select("event_date")
            for s in sources
        ]
        changes = functools.reduce(DataFrame.unionByName, streams)
        handler = GoldBatch(settings, name, sources[0], outputs)
        queries.append(start_batches(settings, name, changes, handler, trigger=trigger))
    return queries
