"""The bronze streaming job: each topic of the event log → its bronze Delta table, exactly once."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from bronze.transforms import raw_records
from lakehouse.config import Settings
from lakehouse.spark import read_event_stream
from lakehouse.streaming import start_to_delta

BRONZE_TABLES = {"transactions": "transactions", "labels": "labels", "market_ticks": "market_ticks"}


def start(
    spark: SparkSession,
    settings: Settings,
    trigger: dict | None = None,
    max_records_per_trigger: int | None = 20000,
) -> list[StreamingQuery]:
    queries = []
    for topic_attr, table in BRONZE_TABLES.items():
        topic = getattr(settings.eventlog.topics, topic_attr).name
        source = read_event_stream(spark, settings, topic, max_records_per_trigger)
        queries.append(
            start_to_delta(
                settings,
                f"bronze.{table}",
                source,
                settings.table_uri("bronze", table),
                raw_records,
                partition_by=["ingest_date"],
                trigger=trigger,
            )
        )
    return queries
