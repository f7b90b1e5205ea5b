"""Silver transformations on small DataFrames (chispa): parsing, late/duplicate classification, enrichment, labels."""

import json
from datetime import UTC, date, datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import functions as F

from silver.transforms import classify, enrich, late_events, latest_labels, parse_events, tick_id

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
BRONZE = "payload string, source_partition int, source_offset long, log_time timestamp"


def tx(tid: str, minutes: float = 0, **over) -> dict:
    base = {
        "transaction_id": tid,
        "event_time": int((T0 + timedelta(minutes=minutes)).timestamp() * 1000),
        "card_id": "card-0001",
        "customer_id": "C1",
        "merchant_id": "M1",
        "merchant_category_code": "5411",
        "terminal_id": "T1",
        "amount": 12.5,
        "currency": "EUR",
        "channel": "POS",
        "card_present": True,
        "country": "FR",
        "lat": 48.8,
        "lon": 2.3,
        "device_id": None,
        "ip_hash": None,
        "transaction_type": "PURCHASE",
    }
    return {**base, **over}


def bronze(spark, events: list[dict], log_minutes: float = 1):
    rows = [(json.dumps(e), 0, i, T0 + timedelta(minutes=log_minutes, seconds=i)) for i, e in enumerate(events)]
    return spark.createDataFrame(rows, BRONZE)


def test_parse_types_every_contract_field_and_keeps_lineage(spark):
    out = parse_events(bronze(spark, [tx("t1")]), "transaction").first()
    assert out["transaction_id"] == "t1"
    assert out["event_time"] == T0.replace(tzinfo=None) or out["event_time"].astimezone(UTC) == T0
    assert out["amount"] == 12.5 and out["card_present"] is True and out["event_date"] == date(2026, 3, 2)
    assert (out["source_partition"], out["source_offset"]) == (0, 0)


def test_parse_ignores_fields_a_newer_contract_added_until_given_that_contract(spark):
    from lakehouse.contracts import schema

    df = bronze(spark, [tx("t1", wallet="apple")])
    assert "wallet" not in parse_events(df, "transaction").columns
    newer = json.loads(json.dumps(schema("transaction")))
    newer["properties"]["wallet"] = {"type": ["string", "null"]}
    assert parse_events(df, "transaction", newer).first()["wallet"] == "apple"


def test_classify_marks_in_batch_duplicates_and_late_rows(spark):
    events = [tx("a", 30), tx("b", 31), tx("a", 30), tx("old", 0), tx("a", 30)]
    parsed = parse_events(bronze(spark, events), "transaction")
    out = classify(parsed, ["transaction_id"], T0 + timedelta(minutes=10)).select(
        "transaction_id", "source_offset", "silver_status"
    )
    expected = spark.createDataFrame(
        [("a", 0, "new"), ("b", 1, "new"), ("a", 2, "duplicate"), ("old", 3, "late"), ("a", 4, "duplicate")],
        "transaction_id string, source_offset long, silver_status string",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_without_a_watermark_nothing_is_late(spark):
    parsed = parse_events(bronze(spark, [tx("x", -10_000)]), "transaction")
    assert classify(parsed, ["transaction_id"], None).first()["silver_status"] == "new"


def test_late_events_carry_reason_watermark_and_lateness(spark):
    wm = T0 + timedelta(minutes=10)
    parsed = parse_events(bronze(spark, [tx("old", 0), tx("ok", 20)]), "transaction")
    late = classify(parsed, ["transaction_id"], wm).where("silver_status = 'late'")
    rows = late_events(late, "transaction", F.col("transaction_id"), wm).collect()
    assert len(rows) == 1
    assert (rows[0]["event_id"], rows[0]["reason"], rows[0]["lateness_s"]) == ("old", "beyond_allowed_lateness", 600)
    assert rows[0]["event_date"] == date(2026, 3, 2)
    watermark = late_events(late, "transaction", F.col("transaction_id"), wm).select(F.unix_micros("watermark")).first()
    assert watermark[0] == int(wm.timestamp() * 1_000_000)
    assert json.loads(rows[0]["payload"])["transaction_id"] == "old"


def test_a_late_tick_is_named_by_symbol_and_second(spark):
    row = spark.createDataFrame([("ACME", T0)], "symbol string, event_time timestamp").select(tick_id()).first()
    assert row[0] == f"ACME@{T0:%Y-%m-%dT%H:%M:%S}"


def test_enrich_joins_reference_data_and_flags_unknowns(spark):
    parsed = parse_events(
        bronze(spark, [tx("t1", device_id="D1"), tx("t2", merchant_id="M9", terminal_id="T1", device_id="D2")]),
        "transaction",
    )
    mcc = spark.createDataFrame(
        [("5411", "grocery", "low", False, T0)],
        "merchant_category_code string, "
        "mcc_category string, mcc_risk_tier string, card_not_present boolean, updated_at timestamp",
    )
    countries = spark.createDataFrame(
        [("FR", "France", "EU", "EUR", "standard", T0)],
        "country string, country_name string, region string, country_currency string, country_risk_tier string, "
        "updated_at timestamp",
    )
    merchants = spark.createDataFrame(
        [("M1", "FR", 48.0, 2.0, T0)],
        "merchant_id string, merchant_country string, merchant_lat double, merchant_lon double, updated_at timestamp",
    )
    terminals = spark.createDataFrame(
        [("T1", "M1", 48.1, 2.1, T0)],
        "terminal_id string, terminal_merchant_id string, terminal_lat double, terminal_lon double, "
        "updated_at timestamp",
    )
    devices = spark.createDataFrame(
        [("D1", "C1", "mobile", T0), ("D2", "C2", "desktop", T0)],
        "device_id string, device_customer_id string, device_type string, updated_at timestamp",
    )
    out = enrich(parsed, mcc, countries, merchants, terminals, devices).select(
        "transaction_id",
        "mcc_category",
        "country_name",
        "merchant_lat",
        "terminal_lat",
        "device_type",
        "merchant_known",
        "device_known",
        "terminal_mismatch",
    )
    expected = spark.createDataFrame(
        [
            ("t1", "grocery", "France", 48.0, 48.1, "mobile", True, True, False),
            ("t2", "grocery", "France", None, 48.1, "desktop", False, False, True),
        ],
        "transaction_id string, mcc_category string, country_name string, merchant_lat double, terminal_lat double, "
        "device_type string, merchant_known boolean, device_known boolean, terminal_mismatch boolean",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_latest_label_wins(spark):
    def label(tid, kind, hours, source):
        return {
            "transaction_id": tid,
            "card_id": "card-0001",
            "label": kind,
            "reported_at": int((T0 + timedelta(hours=hours)).timestamp() * 1000),
            "scenario": None,
            "source": source,
        }

    events = [
        label("a", "genuine", 1, "confirmed"),
        label("a", "fraud", 5, "chargeback"),
        label("b", "fraud", 2, "analyst"),
    ]
    out = latest_labels(parse_events(bronze(spark, events), "label")).select("transaction_id", "label", "label_source")
    expected = spark.createDataFrame(
        [("a", "fraud", "chargeback"), ("b", "fraud", "analyst")],
        "transaction_id string, label string, label_source string",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)
