"""Bronze: contract validation and dead-lettering (chispa), and the streaming job landing traffic exactly once."""

import json
import subprocess
import sys
from datetime import UTC, date, datetime

from chispa import assert_df_equality

from bronze import job as bronze_job
from bronze.transforms import accepted, dead_letters, validate_records
from lakehouse import delta, eventlog
from lakehouse.contracts import Limits

SOURCE = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
LOG_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TICK = {"symbol": "ACME", "event_time": int(LOG_TIME.timestamp() * 1000) - 1000, "price": 10.0, "volume": 5.0}


def source_rows(spark, payloads):
    return spark.createDataFrame(
        [(b"ACME", p, "market-ticks", 0, i, LOG_TIME, 0) for i, p in enumerate(payloads)], SOURCE
    )


def test_valid_records_are_accepted_with_their_event_time(spark):
    validated = validate_records(source_rows(spark, [json.dumps(TICK).encode()]), "market_tick", Limits())
    out = accepted(validated).drop("ingested_at")
    event_time = datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC)
    expected = spark.createDataFrame(
        [("market-ticks", 0, 0, "ACME", json.dumps(TICK), event_time, LOG_TIME, date(2026, 1, 2))],
        "source_topic string, source_partition int, source_offset long, key string, payload string, "
        "event_time timestamp, log_time timestamp, event_date date",
    )
    assert_df_equality(out, expected, ignore_nullable=True)
    assert dead_letters(validated).count() == 0


def test_bad_records_go_to_dead_letter_with_the_reason(spark):
    future = {**TICK, "event_time": TICK["event_time"] + 3_600_000}  # an hour after it entered the log
    payloads = [
        b"{oops",
        json.dumps({**TICK, "price": "ten"}).encode(),
        json.dumps(future).encode(),
        json.dumps(TICK).replace("10.0", "NaN").encode(),
        b"",
    ]
    validated = validate_records(source_rows(spark, payloads), "market_tick", Limits())
    dead = dead_letters(validated).select("source_offset", "reason", "payload").orderBy("source_offset")
    expected = spark.createDataFrame(
        [
            (0, "malformed_json", payloads[0]),
            (1, "schema_type", payloads[1]),
            (2, "time_in_future", payloads[2]),
            (3, "non_finite_number", payloads[3]),
            (4, "empty_payload", b""),
        ],
        "source_offset long, reason string, payload binary",
    )
    assert_df_equality(dead, expected, ignore_nullable=True)
    assert accepted(validated).count() == 0


def test_a_field_from_a_newer_contract_version_is_kept_not_dead_lettered(spark):
    payload = json.dumps({**TICK, "venue": "XPAR"}).encode()  # a producer on a newer contract version
    validated = validate_records(source_rows(spark, [payload]), "market_tick", Limits())
    assert dead_letters(validated).count() == 0
    assert json.loads(accepted(validated).first()["payload"])["venue"] == "XPAR"


def test_generated_traffic_and_bad_records_land_exactly_once(stack, spark):
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
    topic = stack.eventlog.topics.transactions.name
    bad = [b"not json", b'{"transaction_id": "x"}', b'{"amount": Infinity}', b"\xff" * 10]
    log.produce_batch(topic, [("card-bad", p) for p in bad])
    queries = bronze_job.start(spark, stack, trigger={"availableNow": True}, max_records_per_trigger=25000)
    for q in queries:
        q.awaitTermination(600)
        assert q.exception() is None
    dead = delta.read_arrow(stack, stack.table_uri("bronze", "dead_letter")).to_pylist()
    assert sorted(d["payload"] for d in dead) == sorted(bad)
    assert {d["reason"] for d in dead} == {"malformed_json", "schema_required", "non_finite_number"}
    for attr, (table, _) in bronze_job.BRONZE_TABLES.items():
        topic = getattr(stack.eventlog.topics, attr).name
        ends = log.end_offsets(topic)
        rows = delta.read_arrow(
            stack, stack.table_uri("bronze", table), columns=["source_partition", "source_offset"]
        ).to_pylist()
        rows += [d for d in dead if d["source_topic"] == topic]
        keys = {(r["source_partition"], r["source_offset"]) for r in rows}
        assert len(rows) == len(keys) == sum(ends.values()) > 0, table  # every record once: bronze or dead letter
        assert keys == {(p, o) for p, end in ends.items() for o in range(end)}
    log.close()
