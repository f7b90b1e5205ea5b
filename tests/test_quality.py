"""Quality suites (Great Expectations on Spark) on hand-built DataFrames: quarantine per failed check, counts,
freshness, batch-level failures, GX/Spark-condition parity, recording exactly once, the Data Docs report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from gold import quality_report
from gold.expectations import CARD_DAILY, MERCHANT_DAILY
from lakehouse import PROJECT_ROOT, quality
from lakehouse.catalog import EXPECTATION_RESULTS, QUARANTINE
from silver.expectations import TRANSACTIONS, transactions_suite

gxe = quality.gx().expectations

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

TXN_DDL = {
    "transaction_id": "string",
    "event_time": "timestamp",
    "card_id": "string",
    "customer_id": "string",
    "merchant_id": "string",
    "merchant_category_code": "string",
    "terminal_id": "string",
    "amount": "double",
    "currency": "string",
    "channel": "string",
    "card_present": "boolean",
    "country": "string",
    "lat": "double",
    "lon": "double",
    "device_id": "string",
    "transaction_type": "string",
    "event_date": "date",
    "mcc_category": "string",
    "merchant_name": "string",  # an enrichment column the suite does not check
}


def txn(i: int, **changes) -> dict:
    event_time = NOW - timedelta(seconds=30 + i)
    row = {
        "transaction_id": f"t{i}",
        "event_time": event_time,
        "card_id": f"card{i:08d}",
        "customer_id": f"c{i}",
        "merchant_id": f"m{i % 7}",
        "merchant_category_code": "5411",
        "terminal_id": None,
        "amount": 12.5 + i,
        "currency": "EUR",
        "channel": ("POS", "ATM", "ONLINE", "MOBILE")[i % 4],
        "card_present": i % 2 == 0,
        "country": "DE",
        "lat": 52.5,
        "lon": None,
        "device_id": None,
        "transaction_type": ("PURCHASE", "WITHDRAWAL", "REFUND", "TRANSFER")[i % 4],
        "event_date": event_time.date(),
        "mcc_category": None,
        "merchant_name": "Shop",
    }
    row.update(changes)
    return row


def txns(spark, rows: list[dict], types: dict[str, str] = TXN_DDL) -> DataFrame:
    """A persisted batch of ``rows`` (as the stream persists its batch before checking it)."""
    ddl = ", ".join(f"`{name}` {typ}" for name, typ in types.items())
    return spark.createDataFrame([tuple(r.get(c) for c in types) for r in rows], ddl).persist()


def quarantined_by(res: quality.QualityResult, key: str) -> dict:
    """{key value: failed checks} of the quarantined rows."""
    return {r[key]: r["failed_checks"] for r in res.quarantined.select(key, "failed_checks").collect()}


def ids(df: DataFrame, key: str = "transaction_id") -> list:
    return sorted(r[0] for r in df.select(key).collect())


def result(res: quality.QualityResult, check: str) -> dict:
    (found,) = [r for r in res.results if r["check"] == check]
    return found


def test_good_rows_pass_and_every_expectation_is_reported(spark):
    df = txns(spark, [txn(i) for i in range(8)])
    res = quality.run(TRANSACTIONS, df, NOW)
    assert_df_equality(res.passed, df, ignore_row_order=True)
    assert res.quarantined.count() == 0 and res.quarantined_rows == 0
    assert res.quarantined.columns == [*df.columns, "failed_checks"]
    assert res.success and res.failed_checks == [] and res.total_rows == 8
    assert [r["check"] for r in res.results] == [c.name for c in TRANSACTIONS.checks]
    row_checks = [r for r in res.results if r["check"] != "event_time:freshness"]
    assert all(r["total_count"] == 8 and r["failed_count"] == 0 for r in row_checks)
    assert {"transaction_id:not_nullable", "amount:greater_than(0)", "channel:accepted_values"} <= {
        r["check"] for r in res.results
    }
    assert result(res, "amount:dtype")["column"] == "amount"
    assert result(res, "event_date_matches_event_time")["column"] is None


BAD = [
    ({"transaction_id": None}, "transaction_id:not_nullable"),
    ({"card_id": None}, "card_id:not_nullable"),
    ({"customer_id": None}, "customer_id:not_nullable"),
    ({"merchant_id": None}, "merchant_id:not_nullable"),
    ({"event_time": None}, "event_time:not_nullable"),
    ({"card_present": None}, "card_present:not_nullable"),
    ({"event_date": None}, "event_date:not_nullable"),
    ({"amount": 0.0}, "amount:greater_than(0)"),
    ({"amount": 1_000_000.01}, "amount:less_than_or_equal_to(1000000.0)"),
    ({"amount": None}, "amount:not_nullable"),
    ({"channel": "FAX"}, "channel:accepted_values"),
    ({"channel": None}, "channel:not_nullable"),
    ({"transaction_type": "GIFT"}, "transaction_type:accepted_values"),
    ({"currency": "eur"}, "currency:iso_4217_pattern"),
    ({"currency": None}, "currency:not_nullable"),
    ({"country": None}, "country:not_nullable"),
    ({"merchant_category_code": None}, "merchant_category_code:not_nullable"),
    ({"transaction_type": None}, "transaction_type:not_nullable"),
    ({"merchant_category_code": "541"}, "merchant_category_code:four_digits"),
    ({"merchant_category_code": "54X1"}, "merchant_category_code:four_digits"),
    ({"country": "DEU"}, "country:iso_3166_pattern"),
    ({"lat": 90.5}, "lat:in_range(-90.0, 90.0)"),
    ({"lon": -180.5}, "lon:in_range(-180.0, 180.0)"),
    ({"event_date": (NOW - timedelta(days=1)).date()}, "event_date_matches_event_time"),
]


def bad_rows() -> list[dict]:
    """A good row (t0), then one row per kind of bad value (bad1, bad2, ...; bad1 has no transaction_id)."""
    return [txn(0)] + [txn(i, **{"transaction_id": f"bad{i}", **change}) for i, (change, _) in enumerate(BAD, 1)]


def test_every_check_of_the_silver_suite_is_caught_and_named(spark):
    """One batch with a good row and one row per kind of bad value: each bad row is quarantined with exactly
    its check, each check counts its rows, and every row-level check of the suite is exercised."""
    df = txns(spark, bad_rows())
    res = quality.run(TRANSACTIONS, df, NOW)

    assert ids(res.passed) == ["t0"]
    expected = {f"bad{i}": check for i, (_, check) in enumerate(BAD, start=1)}
    expected[None] = expected.pop("bad1")  # the row without a transaction_id
    assert quarantined_by(res, "transaction_id") == expected
    counts = {r["check"]: r["failed_count"] for r in res.results if not r["success"]}
    assert counts == {check: sum(c == check for _, c in BAD) for _, check in BAD}
    assert sorted(res.failed_checks) == sorted({check for _, check in BAD})
    assert all(r["total_count"] == len(BAD) + 1 for r in res.results if r["check"] in counts)
    row_level = {c.name for c in TRANSACTIONS.checks if c.kind == "row"}
    assert row_level == {check for _, check in BAD}  # nothing of the suite left untested

    # the quarantined rows are the input rows, unchanged, plus failed_checks
    bad = res.quarantined.where(F.col("transaction_id") == "bad9").drop("failed_checks")
    assert_df_equality(bad, df.where(F.col("transaction_id") == "bad9"))


def test_counts_and_a_row_failing_several_checks(spark):
    rows = [txn(i) for i in range(10)]
    rows[2] = txn(2, amount=-1.0, channel="FAX")
    rows[5] = txn(5, amount=-3.0)
    rows[7] = txn(7, card_id=None)
    res = quality.run(TRANSACTIONS, txns(spark, rows), NOW)
    assert res.passed.count() == 7 and res.quarantined_rows is None  # known once written
    assert quarantined_by(res, "transaction_id") == {
        "t2": "amount:greater_than(0);channel:accepted_values",
        "t5": "amount:greater_than(0)",
        "t7": "card_id:not_nullable",
    }
    failed = {r["check"]: r["failed_count"] for r in res.results if not r["success"]}
    assert failed == {"amount:greater_than(0)": 2, "channel:accepted_values": 1, "card_id:not_nullable": 1}


def test_nulls_are_only_caught_by_not_null_checks(spark):
    """Like GX: a null passes every check but its column's not-null one (nullable columns may be null)."""
    rows = [
        txn(0, lat=None, lon=None, terminal_id=None, device_id=None, mcc_category=None),
        txn(1, amount=None, channel=None, currency=None, merchant_category_code=None, country=None),
        txn(2, event_time=None, event_date=None),
    ]
    res = quality.run(TRANSACTIONS, txns(spark, rows), NOW)
    assert ids(res.passed) == ["t0"]
    assert quarantined_by(res, "transaction_id") == {
        "t1": "amount:not_nullable;channel:not_nullable;country:not_nullable;currency:not_nullable;"
        "merchant_category_code:not_nullable",
        "t2": "event_date:not_nullable;event_time:not_nullable",
    }
    assert result(res, "event_date_matches_event_time")["success"]


def test_stale_batch_is_reported_but_nothing_is_quarantined(spark):
    df = txns(spark, [txn(i) for i in range(3)])
    res = quality.run(transactions_suite(max_staleness_s=60), df, NOW + timedelta(minutes=5))
    assert res.passed.count() == 3 and res.quarantined.count() == 0
    assert result(res, "event_time:freshness") == {
        "suite": "silver.transactions",
        "check": "event_time:freshness",
        "column": "event_time",
        "failed_count": 1,
        "total_count": 1,
        "success": False,
    }
    assert res.failed_checks == ["event_time:freshness"]
    assert quality.run(transactions_suite(max_staleness_s=3600), df, NOW + timedelta(minutes=5)).success


def test_empty_batch_is_fresh_and_passes(spark):
    res = quality.run(transactions_suite(max_staleness_s=1), txns(spark, []), NOW)
    assert res.success and res.total_rows == 0
    assert res.passed.count() == 0 and res.quarantined.count() == 0
    assert result(res, "event_time:freshness")["success"]


def test_freshness_of_a_date_column_lasts_until_the_end_of_the_day(spark):
    suite = quality.Suite("days", [gxe.ExpectColumnValuesToNotBeNull(column="d")], "d", 3600)
    df = spark.createDataFrame([(NOW.date(),)], "d date")
    end_of_day = datetime.combine(NOW.date(), datetime.min.time(), UTC) + timedelta(days=1)
    assert quality.run(suite, df, end_of_day + timedelta(minutes=59)).success
    assert not quality.run(suite, df, end_of_day + timedelta(minutes=61)).success


def test_a_wrong_dtype_quarantines_the_whole_batch_without_raising(spark):
    types = {**TXN_DDL, "amount": "string"}
    df = txns(spark, [txn(i, amount=str(10 + i)) for i in range(4)], types)
    res = quality.run(TRANSACTIONS, df, NOW)
    assert res.passed.count() == 0 and res.quarantined_rows == 4
    checks = [r["failed_checks"] for r in res.quarantined.collect()]
    assert checks == ["amount:dtype"] * 4
    assert result(res, "amount:dtype")["failed_count"] == 4
    assert result(res, "transaction_id:not_nullable")["success"]
    # the checks of a mistyped column are not evaluated: 0 failed of 0 checked
    assert result(res, "amount:greater_than(0)") | {"suite": None} == {
        "suite": None,
        "check": "amount:greater_than(0)",
        "column": "amount",
        "failed_count": 0,
        "total_count": 0,
        "success": True,
    }


def test_a_wrong_timestamp_type_or_a_missing_column_fails_the_batch(spark):
    naive = txns(spark, [txn(0)], {**TXN_DDL, "event_time": "timestamp_ntz"})
    res = quality.run(TRANSACTIONS, naive, NOW)
    assert [r["failed_checks"] for r in res.quarantined.collect()] == ["event_time:dtype"]
    assert not result(res, "event_time:freshness")["success"]  # not a time it can compare

    missing = txns(spark, [txn(0), txn(1, amount=-1.0)]).drop("terminal_id")
    res = quality.run(TRANSACTIONS, missing, NOW)
    assert res.passed.count() == 0
    # the batch-level failure and the rows' own failures
    assert quarantined_by(res, "transaction_id") == {
        "t0": "terminal_id:column_in_dataframe",
        "t1": "amount:greater_than(0);terminal_id:column_in_dataframe",
    }
    assert result(res, "terminal_id:column_in_dataframe") == {
        "suite": "silver.transactions",
        "check": "terminal_id:column_in_dataframe",
        "column": "terminal_id",
        "failed_count": 2,
        "total_count": 2,
        "success": False,
    }
    assert result(res, "terminal_id:dtype")["total_count"] == 0  # not evaluated


def test_an_expectation_that_errors_quarantines_the_batch(spark):
    suite = quality.Suite(
        "broken",
        [
            gxe.ExpectColumnValuesToNotBeNull(column="x"),
            gxe.ExpectColumnValuesToMatchRegex(column="s", regex="([0-9", meta={"check": "s:explodes"}),
        ],
    )
    df = spark.createDataFrame([("1", 1), ("2", None)], "s string, x long").persist()
    res = quality.run(suite, df, NOW)
    assert res.passed.count() == 0
    assert sorted(r["failed_checks"] for r in res.quarantined.collect()) == ["s:explodes", "s:explodes;x:not_nullable"]
    assert result(res, "s:explodes")["failed_count"] == 2
    assert result(res, "x:not_nullable")["failed_count"] == 1  # GX still counted the other expectation


def test_a_suite_that_errors_quarantines_the_batch_with_suite_error(spark, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("GX is down")

    monkeypatch.setattr(quality, "_validate", broken)
    res = quality.run(TRANSACTIONS, txns(spark, [txn(0), txn(1)]), NOW)
    assert res.passed.count() == 0
    assert [r["failed_checks"] for r in res.quarantined.collect()] == [quality.SUITE_ERROR] * 2
    assert result(res, quality.SUITE_ERROR)["failed_count"] == 2
    assert result(res, "amount:greater_than(0)")["total_count"] == 0


def test_a_suite_refuses_what_it_cannot_split_on_rows():
    with pytest.raises(ValueError, match="ExpectColumnMeanToBeBetween is not supported"):
        quality.Suite("s", [gxe.ExpectColumnMeanToBeBetween(column="x", min_value=0)])
    with pytest.raises(ValueError, match="name the ExpectColumnPairValuesToBeEqual"):
        quality.Suite("s", [gxe.ExpectColumnPairValuesToBeEqual(column_A="a", column_B="b")])
    with pytest.raises(ValueError, match="mostly"):
        quality.Suite("s", [gxe.ExpectColumnValuesToNotBeNull(column="x", mostly=0.9)])
    with pytest.raises(ValueError, match="duplicate check names"):
        quality.Suite("s", [gxe.ExpectColumnValuesToNotBeNull(column="x")] * 2)
    with pytest.raises(ValueError, match=r"not a pyspark\.sql\.types type"):
        quality.Suite("s", [gxe.ExpectColumnValuesToBeOfType(column="x", type_="Float64")])


def test_run_collects_no_rows_to_the_driver(spark, monkeypatch):
    """GX computes aggregates (one row each); the split is lazy: nothing brings the batch's rows to the driver."""
    from pyspark.sql.classic.dataframe import DataFrame as ClassicFrame

    collected: list[int] = []
    collect = ClassicFrame.collect

    def counting_collect(self):
        rows = collect(self)
        collected.append(len(rows))
        return rows

    def forbidden(self, *args, **kwargs):
        raise AssertionError("a row-collecting action in quality.run")

    monkeypatch.setattr(ClassicFrame, "collect", counting_collect)
    for name in ("toPandas", "toArrow", "toLocalIterator", "take", "head", "tail"):
        monkeypatch.setattr(ClassicFrame, name, forbidden)
    rows = [txn(i) for i in range(50)]
    rows[3] = txn(3, amount=-1.0, channel="FAX")
    res = quality.run(TRANSACTIONS, txns(spark, rows), NOW)
    assert collected and max(collected) <= 1
    monkeypatch.undo()
    assert res.quarantined.count() == 1


def daily(spark, key: str, rows: list[tuple], extra: str = "") -> DataFrame:
    ddl = f"event_date date, {key} string, txn_count long, amount_sum double, fraud_count long, fraud_amount double"
    return spark.createDataFrame(rows, ddl + extra).persist()


def test_gold_daily_suite(spark):
    day = NOW.date()
    df = daily(
        spark,
        "card_id",
        [
            (day, "a", 3, 30.0, 1, 10.0),
            (day, "b", 2, 0.3, 2, 0.1 + 0.2),  # 0.30000000000000004 > 0.3: within epsilon
            (day, "c", 1, 5.0, 2, 5.0),  # more fraud than transactions
            (day, "d", 2, 5.0, 1, 6.0),  # more fraud amount than amount
            (day, "e", -1, 5.0, 0, 0.0),
            (day, None, 1, 5.0, 0, 0.0),
            (day, "g", 1, 5.0, 0, 0.0),
            (day, "g", 1, 5.0, 0, 0.0),  # a key twice in a daily aggregate
        ],
    )
    res = quality.run(CARD_DAILY, df, NOW)
    assert ids(res.passed, "card_id") == ["a", "b"]
    assert quarantined_by(res, "card_id") == {
        "c": "fraud_count_le_txn_count",
        "d": "fraud_amount_le_amount_sum",
        "e": "fraud_count_le_txn_count;txn_count:greater_than_or_equal_to(0)",
        None: "card_id:not_nullable",
        "g": "multiple_fields_uniqueness",
    }
    assert result(res, "multiple_fields_uniqueness")["failed_count"] == 2
    assert result(res, "multiple_fields_uniqueness")["column"] is None


def test_merchant_daily_is_keyed_by_merchant_and_mcc(spark):
    day = NOW.date()
    rows = [
        (day, "m1", 1, 1.0, 0, 0.0, "5411"),
        (day, "m1", 2, 2.0, 0, 0.0, "5812"),
        (day, "m1", 1, 1.0, 0, 0.0, "5411"),
    ]
    res = quality.run(MERCHANT_DAILY, daily(spark, "merchant_id", rows, ", merchant_category_code string"), NOW)
    assert [r[0] for r in res.passed.select("merchant_category_code").collect()] == ["5812"]
    assert [r["failed_checks"] for r in res.quarantined.collect()] == ["multiple_fields_uniqueness"] * 2


def _parity_batches(spark) -> list[tuple[quality.Suite, DataFrame]]:
    rows = [
        *bad_rows(),
        txn(90, amount=float("nan"), lat=float("nan")),  # NaN is greater than everything in Spark
        txn(91, event_time=None, amount=-2.0, channel=None, event_date=None),
        txn(92, currency="EURO", country="de", transaction_type="refund", merchant_category_code="12345"),
        txn(93, event_date=(NOW + timedelta(days=1)).date(), lat=-90.0, lon=180.0, amount=1_000_000.0),
        txn(94, merchant_category_code="5411\n"),  # Java's $ matches before a final line break, as in GX
    ]
    silver = txns(spark, rows)
    day = NOW.date()
    gold = daily(
        spark,
        "merchant_id",
        [
            (day, "m1", 1, 1.0, 0, 0.0, "5411"),
            (day, "m1", 1, 1.0, 2, 3.0, "5411"),
            (day, None, None, None, None, float("nan"), None),
            (day, None, 1, 1.0, 0, 0.0, None),
            (None, None, 2, None, 3, 1.0, None),  # all keys null: not compared for uniqueness
            (None, None, 2, 2.0, 1, 2.0, None),
            (day, "m2", 0, -1.0, 0, -0.5, "5812"),
            (day, "m3", -1, 1.0, -2, 1.0, "5812"),
            (day, "m4", 1, 1.0, 0, None, "5411"),
        ],
        ", merchant_category_code string",
    )
    return [(TRANSACTIONS, silver), (MERCHANT_DAILY, gold)]


def test_gx_counts_what_the_spark_conditions_flag(spark):
    """Parity: on batches with every kind of failure, GX's unexpected_count of each row-level expectation is the
    number of rows its translated Spark condition flags (what quarantines rows), and GX's verdict on the
    batch-level expectations is run()'s."""
    for suite, df in _parity_batches(spark):
        fresh = frozenset(c.name for c in suite.checks if c.kind == "freshness")
        outcomes, rows = quality._validate(suite, suite.frame(df), fresh, {}, quality.RESULT_FORMAT)
        assert rows == df.count()
        for check in suite.checks:
            if check.kind != "row":
                continue
            flagged = df.select(quality.unexpected(suite, check).alias("u")).where("u").count()  # (windows)
            assert outcomes[check.name].error is None, check.name
            assert outcomes[check.name].unexpected == flagged, check.name
            assert flagged, f"{check.name}: the batch has no row failing it"

    # batch-level: GX's ExpectColumnToExist/ExpectColumnValuesToBeOfType and run()'s schema checks agree
    base = [txn(0), txn(1, card_present="true")]
    mistyped = {**TXN_DDL, "event_time": "timestamp_ntz", "lat": "float", "card_present": "string"}
    for df in (txns(spark, [txn(0), txn(1)]).drop("terminal_id"), txns(spark, base, mistyped)):
        fresh = frozenset({"event_time:freshness"})
        outcomes, _ = quality._validate(TRANSACTIONS, TRANSACTIONS.frame(df), fresh, {}, quality.BOOLEAN_ONLY)
        res = quality.run(TRANSACTIONS, df, NOW)
        batch_level = [result(res, c.name) for c in TRANSACTIONS.checks if c.kind == "batch"]
        evaluated = [r for r in batch_level if r["total_count"]]  # (a missing column's dtype is not evaluated)
        assert not all(r["success"] for r in evaluated)
        for r in evaluated:
            gx = outcomes[r["check"]]
            assert (gx.success and gx.error is None) == r["success"], r["check"]


def private_lake(settings, tmp_path: Path):
    return settings.model_copy(
        update={
            "lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path / "lakehouse")}),
            "state_dir": str(tmp_path / "state"),
        }
    )


def test_record_writes_both_tables_once_and_the_metrics(spark, settings, tmp_path):
    settings = private_lake(settings, tmp_path)
    rows = [txn(i) for i in range(5)]
    rows[1] = txn(1, amount=-1.0)
    rows[3] = txn(3, channel="FAX", card_id=None)
    res = quality.run(TRANSACTIONS, txns(spark, rows), NOW)
    labels = {"suite": "silver.transactions", "check": "amount:greater_than(0)"}
    before = quality.REGISTRY.get_sample_value("lakehouse_quality_checks_failed_total", labels) or 0.0
    q_labels = {"suite": labels["suite"]}
    q_before = quality.REGISTRY.get_sample_value("lakehouse_quality_rows_quarantined_total", q_labels) or 0.0

    kw = {"suite": TRANSACTIONS, "table_name": "silver.transactions", "app_id": "query-1", "batch_id": 7}
    assert quality.record(settings, res, **kw)
    assert not quality.record(settings, res, **kw)  # a replayed batch writes and counts nothing

    results_uri = EXPECTATION_RESULTS.uri(settings)
    results = spark.read.format("delta").load(results_uri).collect()
    assert len(results) == len(res.results)
    assert {r["query_id"] for r in results} == {"query-1"} and {r["batch_id"] for r in results} == {7}
    failed = {r["check_name"]: r["failed_count"] for r in results if not r["success"]}
    assert failed == {"amount:greater_than(0)": 1, "channel:accepted_values": 1, "card_id:not_nullable": 1}
    assert results[0]["run_date"] == NOW.date()
    assert {r["column_name"] for r in results if r["check_name"] == "event_date_matches_event_time"} == {None}

    quarantine = spark.read.format("delta").load(QUARANTINE.uri(settings)).orderBy("failed_checks").collect()
    assert [r["failed_checks"] for r in quarantine] == [
        "amount:greater_than(0)",
        "card_id:not_nullable;channel:accepted_values",
    ]
    assert {r["table_name"] for r in quarantine} == {"silver.transactions"}
    assert [json.loads(r["row_json"])["transaction_id"] for r in quarantine] == ["t1", "t3"]
    assert json.loads(quarantine[0]["row_json"])["event_time"].startswith(str(NOW.date()))
    assert [r["quarantined_at"].replace(tzinfo=UTC) for r in quarantine] == [NOW, NOW]  # the session is UTC

    # another suite checked in the same query and batch is recorded too (its own app transaction)
    good = quality.run(TRANSACTIONS, txns(spark, [txn(0)]), NOW)
    assert quality.record(settings, good, **{**kw, "table_name": "silver.transactions_copy"})
    assert spark.read.format("delta").load(results_uri).count() == 2 * len(res.results)

    assert quality.REGISTRY.get_sample_value("lakehouse_quality_checks_failed_total", labels) == before + 1
    after = quality.REGISTRY.get_sample_value("lakehouse_quality_rows_quarantined_total", q_labels)
    assert after == q_before + 2
    prom = (tmp_path / "state" / "metrics" / "quality.prom").read_text()
    assert "# TYPE lakehouse_quality_checks_failed_total counter" in prom
    amount_series = 'lakehouse_quality_checks_failed_total{check="amount:greater_than(0)",suite="silver.transactions"}'
    assert f"{amount_series} {before + 1}" in prom
    assert f'lakehouse_quality_rows_quarantined_total{{suite="silver.transactions"}} {q_before + 2}' in prom
    assert (
        'lakehouse_quality_checks_failed_total{check="transaction_id:not_nullable",suite="silver.transactions"}' in prom
    )


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_quality_report_builds_data_docs_with_the_suites_and_their_failures(spark, settings, tmp_path):
    settings = private_lake(settings, tmp_path)
    rows = [txn(i) for i in range(6)]
    rows[2] = txn(2, amount=-1.0)
    txns(spark, rows).write.format("delta").save(settings.table_uri("silver", "transactions"))
    day = NOW.date()
    daily(spark, "card_id", [(day, "a", 1, 1.0, 0, 0.0), (day - timedelta(days=9), "b", 1, 1.0, 3, 0.0)]).write.format(
        "delta"
    ).save(settings.table_uri("gold", "card_daily"))

    url, summaries = quality_report.report(spark, settings, days=7)
    by_suite = {s.suite: s for s in summaries}
    assert set(by_suite) == {"silver.transactions", "gold.card_daily"}  # the tables that exist
    silver = by_suite["silver.transactions"]
    assert silver.rows == 6 and "amount:greater_than(0)" in silver.failed and not silver.success
    assert silver.evaluated == len(TRANSACTIONS.checks)
    card = by_suite["gold.card_daily"]
    assert card.success and card.rows == 1  # the row 9 days before the newest is outside the 7 days
    assert "FAILED: " in silver.line() and "amount:greater_than(0)" in silver.line()

    index = Path(url.removeprefix("file://"))
    assert index.name == "index.html" and index.is_relative_to(tmp_path / "state" / "quality" / "gx")
    html = index.read_text()
    assert "silver.transactions" in html and "gold.card_daily" in html and "Failed" in html
    (page,) = [p for p in re.findall(r"validations/[^\"']+\.html", html) if "silver" in p]
    validation = _text((index.parent / page).read_text())
    assert "values must be greater than 0.0" in validation and "1 unexpected values found" in validation
    (suite_page,) = {p for p in re.findall(r"expectations/[^\"']+\.html", html) if "silver" in p}
    assert "check amount:greater_than(0)" in _text((index.parent / suite_page).read_text())  # names in the notes


def test_quality_report_without_tables_says_so_in_one_line(tmp_path):
    env = {
        **os.environ,
        "LAKEHOUSE_PROFILE": "test",
        "LAKEHOUSE__LAKEHOUSE__ROOT": str(tmp_path / "lakehouse"),
        "LAKEHOUSE__STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gold.quality_report", "report", "--days", "3"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"quality report: no checked table under {tmp_path / 'lakehouse'} yet (silver.transactions, gold.card_daily, "
        "gold.merchant_daily, gold.mcc_daily): run `make stream` or `make backfill` first"
    ]
