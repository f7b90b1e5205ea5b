"""Pure DataFrame → DataFrame transformations of the bronze stage."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def raw_records(df: DataFrame) -> DataFrame:
    """Event-log records as bronze rows: the raw payload untouched, where it came from, when it arrived."""
    return df.select(
        F.col("topic").alias("source_topic"),
        F.col("partition").alias("source_partition"),
        F.col("offset").alias("source_offset"),
        F.col("key").cast("string").alias("key"),
        F.col("value").alias("payload"),
        F.col("timestamp").alias("log_time"),
        F.current_timestamp().alias("ingested_at"),
        F.to_date(F.col("timestamp")).alias("ingest_date"),
    )
