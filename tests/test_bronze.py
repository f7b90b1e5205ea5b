"""Bronze: the raw-record transform (chispa) and the streaming job landing traffic exactly once."""

import subprocess
import sys
from datetime import UTC, datetime

from chispa import assert_df_equality
from pyspark.sql import functions as F

from bronze import job as bronze_job
from bronze.transforms import raw_records
from lakehouse import delta, eventlog


def test_raw_records_keeps_payload_and_provenance(spark):
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    src = spark.createDataFrame(
        [(b"card-1", b'{"a":1}', "transactions", 2, 7, ts, 0)],
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int",
    )
    out = raw_records(src).drop("ingested_at")
    expected = spark.createDataFrame(
        [("transactions", 2, 7, "card-1", b'{"a":1}', ts, datetime(2026, 1, 2).date())],
        "source_topic string, source_partition int, source_offset long, key string, payload binary, "
        "log_time timestamp, ingest_date date",
    )
    assert_df_equality(out, expected, ignore_nullable=True)
    assert raw_records(src).select(F.col("ingested_at").isNotNull()).first()[0]


def test_generated_traffic_lands_in_bronze_exactly_once(stack, spark):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lakehouse.traffic",
            "generate",
            "--rate",
            "50",
            "--start",
            "2026-03-02T08:00:00Z",
            "--days",
            "0.05",
            "--speedup",
            "0",
            "--label-delay-days",
            "0.01",
            "--with-market",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    log = eventlog.from_settings(stack)
    queries = bronze_job.start(spark, stack, trigger={"availableNow": True}, max_records_per_trigger=2000)
    for q in queries:
        q.awaitTermination(600)
        assert q.exception() is None
    for attr, table in bronze_job.BRONZE_TABLES.items():
        topic = getattr(stack.eventlog.topics, attr).name
        ends = log.end_offsets(topic)
        rows = delta.read_arrow(
            stack, stack.table_uri("bronze", table), columns=["source_partition", "source_offset"]
        ).to_pylist()
        keys = {(r["source_partition"], r["source_offset"]) for r in rows}
        assert len(rows) == len(keys) == sum(ends.values()) > 0, table  # every record, once
        assert keys == {(p, o) for p, end in ends.items() for o in range(end)}
    log.close()
