"""Bronze: contract validation and dead-lettering (chispa), and the streaming job landing traffic exactly once."""

import json
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

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
            "tools.traffic",
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


TX = {
    "transaction_id": "tx-1",
    "event_time": TICK["event_time"],
    "card_id": "card-0001",
    "customer_id": "cust-1",
    "merchant_id": "m-1",
    "merchant_category_code": "5411",
    "amount": 12.5,
    "currency": "EUR",
    "channel": "POS",
    "card_present": True,
    "country": "FR",
    "transaction_type": "PURCHASE",
}
GOOD_TX = json.dumps(TX).encode()
# a producer on a newer contract version: an unknown field (structured, even) is kept and the known ones checked
NEWER_TX = json.dumps({**TX, "transaction_id": "tx-2", "loyalty": {"tier": "gold", "points": [1, 2]}}).encode()
MAX_BYTES = 65536  # eventlog.max_event_bytes of the settings (checked in the test)


def tx_without(field: str) -> bytes:
    return json.dumps({k: v for k, v in TX.items() if k != field}).encode()


# what is not already covered above (malformed JSON, a string price, an hour ahead, NaN, empty payload)
BAD_TRANSACTIONS = {
    "truncated JSON": (GOOD_TX[: len(GOOD_TX) // 2], "malformed_json", "Unterminated string"),
    "oversized": (
        json.dumps({**TX, "note": "x" * MAX_BYTES}).encode(),
        "oversized",
        f"exceeds the limit of {MAX_BYTES}",
    ),
    "amount as a string": (json.dumps({**TX, "amount": "12.50"}).encode(), "schema_type", "field 'amount'"),
    "event_time as a string": (
        json.dumps({**TX, "event_time": "2026-01-02T03:04:04Z"}).encode(),
        "schema_type",
        "field 'event_time'",
    ),
    "missing card_id": (tx_without("card_id"), "schema_required", "field 'card_id'"),
    "Infinity amount": (GOOD_TX.replace(b"12.5", b"Infinity"), "non_finite_number", "Infinity"),
    "-Infinity amount": (GOOD_TX.replace(b"12.5", b"-Infinity"), "non_finite_number", "-Infinity"),
    "amount overflowing to inf": (GOOD_TX.replace(b"12.5", b"1e400"), "non_finite_number", "field 'amount'"),
    "event_time far in the future": (
        json.dumps({**TX, "event_time": 2**62}).encode(),  # beyond what a timestamp column holds
        "time_in_future",
        "ms ahead of now",
    ),
    "event_time before the minimum": (
        json.dumps({**TX, "event_time": 946_684_799_999}).encode(),  # 1999-12-31T23:59:59.999Z
        "time_too_old",
        "is before 946684800000",
    ),
    "a JSON array": (json.dumps([TX]).encode(), "not_an_object", "got list"),
    "a JSON number": (b"42", "not_an_object", "got int"),
    "non-UTF-8 bytes": (GOOD_TX.replace(b"m-1", b"m-\xe9"), "malformed_json", "not UTF-8"),
    "UTF-16 JSON": (json.dumps(TX).encode("utf-16"), "malformed_json", "not UTF-8"),
    "nested too deeply": (b'{"a":' * 10000, "malformed_json", "nested too deeply"),
    "an integer of 5000 digits": (GOOD_TX.replace(b"12.5", b"9" * 5000), "malformed_json", "4300 digits"),
}


@pytest.fixture(scope="module")
def bad_and_good(spark, settings) -> tuple[dict[int, dict], dict[int, dict]]:
    """One batch through bronze's transform: the two good transactions (offsets 0, 1), then every bad one (from 2);
    its dead letters and accepted rows by source offset."""
    assert settings.eventlog.max_event_bytes == MAX_BYTES
    payloads = [GOOD_TX, NEWER_TX, *(p for p, _, _ in BAD_TRANSACTIONS.values())]
    rows = [(b"card-0001", p, "transactions", 0, i, LOG_TIME, 0) for i, p in enumerate(payloads)]
    validated = validate_records(spark.createDataFrame(rows, SOURCE), "transaction", Limits.from_settings(settings))
    dead = dead_letters(validated).select("source_offset", "payload", "reason", "detail")
    good = accepted(validated).select("source_offset", "payload", F.unix_millis("event_time").alias("event_ms"))
    by_offset = [{r["source_offset"]: r.asDict() for r in df.collect()} for df in (dead, good)]
    return by_offset[0], by_offset[1]


@pytest.mark.parametrize("case", BAD_TRANSACTIONS, ids=str)
def test_a_bad_transaction_is_dead_lettered_with_its_reason(bad_and_good, case):
    payload, reason, detail = BAD_TRANSACTIONS[case]
    dead, _ = bad_and_good
    offset = 2 + list(BAD_TRANSACTIONS).index(case)
    assert (bytes(dead[offset]["payload"]), dead[offset]["reason"]) == (payload, reason)
    assert detail in dead[offset]["detail"], dead[offset]["detail"]


def test_the_good_transactions_beside_the_bad_ones_pass_an_unknown_field_kept(bad_and_good):
    dead, good = bad_and_good
    assert sorted(dead) == list(range(2, 2 + len(BAD_TRANSACTIONS)))  # every bad one, nothing else
    assert good == {
        0: {"source_offset": 0, "payload": GOOD_TX.decode(), "event_ms": TX["event_time"]},
        1: {"source_offset": 1, "payload": NEWER_TX.decode(), "event_ms": TX["event_time"]},
    }
