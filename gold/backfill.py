"""``make backfill FROM=2026-03-01 TO=2026-03-07``: re-run silver and gold from bronze for a range of event dates.

The same transformations as the stream (parse, dedup, enrich, quality, labels), as one batch over bronze: the
silver partitions of the range are replaced (the earlier contents stay reachable by time travel), then gold is
recomputed for those dates. Use it after fixing a transformation, a reference seed or a contract.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from gold.job import GOLD_FROM_TICKS, GOLD_FROM_TRANSACTIONS, recompute
from lakehouse import delta, quality
from lakehouse.catalog import MARKET_TICKS, TRANSACTIONS, get
from lakehouse.config import Settings, get_settings
from lakehouse.spark import get_spark
from lakehouse.tables import TableSpec, conform_df
from silver import expectations
from silver.job import ReferenceCache, ensure_tables
from silver.transforms import classify, enrich, latest_labels, parse_events


def _bronze(spark: SparkSession, settings: Settings, table: str, start: date, end: date) -> DataFrame:
    return delta.read_days(spark, get(f"bronze.{table}").uri(settings), start, end)


def _replace(spec: TableSpec, uri: str, rows: DataFrame, start: date, end: date, app_id: str) -> int:
    """Replace the dates ``start``..``end`` of ``spec`` with ``rows``; the rows written."""
    started_ms = int(time.time() * 1000)
    rows = conform_df(rows, spec, processed_at=F.current_timestamp())
    delta.write_batch_spark(rows, uri, app_id=app_id, batch_id=0, partition_by=spec.partition_by,
                            replace_where=delta.days_predicate(start, end))  # fmt: skip
    return delta.commit_of(rows.sparkSession, uri, app_id, 0, started_ms)[0]


def backfill(spark: SparkSession, settings: Settings, start: date, end: date) -> dict[str, int]:
    """Rebuild silver and gold for event dates ``start``..``end``; returns rows written per table."""
    ensure_tables(settings)
    run_id = f"backfill/{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    refs = ReferenceCache(spark, settings).frames()
    tx = classify(
        parse_events(_bronze(spark, settings, "transactions", start, end), "transaction"), ["transaction_id"], None
    )
    horizon = end + timedelta(days=settings.streaming.label_horizon_days)
    labels = latest_labels(parse_events(_bronze(spark, settings, "labels", start, horizon), "label")).drop("card_id")
    new = enrich(
        tx.where(F.col("silver_status") == "new").drop("silver_status", "payload"),
        refs["mcc"],
        refs["countries"],
        refs["merchants"],
        refs["terminals"],
        refs["devices"],
    )
    labelled = (
        new.join(labels, "transaction_id", "left")
        .withColumn("labeled_at", F.when(F.col("label").isNotNull(), F.current_timestamp()))
        .persist()
    )
    try:
        suite = expectations.transactions_suite()
        checked = quality.run(suite, labelled, datetime.now(UTC))
        quality.record(
            settings, checked, suite=suite.name, table_name=TRANSACTIONS.full_name, app_id=run_id, batch_id=0
        )
        written = {
            TRANSACTIONS.full_name: _replace(
                TRANSACTIONS, TRANSACTIONS.uri(settings), checked.passed, start, end, run_id
            )
        }
    finally:
        labelled.unpersist()

    ticks = classify(
        parse_events(_bronze(spark, settings, "market_ticks", start, end), "market_tick"),
        ["symbol", "event_time"],
        None,
    )
    tick_rows = ticks.where(F.col("silver_status") == "new").drop("silver_status", "payload")
    written[MARKET_TICKS.full_name] = _replace(MARKET_TICKS, MARKET_TICKS.uri(settings), tick_rows, start, end, run_id)
    days = spark.createDataFrame([(d,) for d in delta.days(start, end)], "event_date date")
    written |= recompute(spark, settings, TRANSACTIONS, GOLD_FROM_TRANSACTIONS, days, app_id=run_id, batch_id=0)
    written |= recompute(spark, settings, MARKET_TICKS, GOLD_FROM_TICKS, days, app_id=run_id, batch_id=0)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gold.backfill", description=__doc__)
    parser.add_argument("--from", dest="start", required=True, type=date.fromisoformat, help="first event date")
    parser.add_argument("--to", dest="end", required=True, type=date.fromisoformat, help="last event date")
    args = parser.parse_args(argv)
    if args.end < args.start:
        parser.error(f"--to {args.end} is before --from {args.start}")
    settings = get_settings()
    spark = get_spark(settings, "fraud-lakehouse-backfill")
    t0 = time.monotonic()
    try:
        for table, rows in backfill(spark, settings, args.start, args.end).items():
            print(f"{table}: {rows} rows for {args.start}..{args.end}", file=sys.stderr)
    finally:
        spark.stop()
    print(f"backfill done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
