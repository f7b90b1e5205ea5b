"""Quality suites on hand-built Arrow micro-batches: quarantine per failed check, counts, freshness, recording."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest
from pandera.polars import Check, Column, DataFrameSchema

from gold.expectations import CARD_DAILY, MERCHANT_DAILY
from lakehouse import delta, quality
from lakehouse.tables import TS
from silver.expectations import TRANSACTIONS, transactions_suite

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

TXN_TYPES = {
    "transaction_id": pa.string(),
    "event_time": TS,
    "card_id": pa.string(),
    "customer_id": pa.string(),
    "merchant_id": pa.string(),
    "merchant_category_code": pa.string(),
    "terminal_id": pa.string(),
    "amount": pa.float64(),
    "currency": pa.string(),
    "channel": pa.string(),
    "card_present": pa.bool_(),
    "country": pa.string(),
    "lat": pa.float64(),
    "lon": pa.float64(),
    "device_id": pa.string(),
    "transaction_type": pa.string(),
    "event_date": pa.date32(),
    "mcc_category": pa.string(),
    "merchant_name": pa.string(),  # an enrichment column the suite does not check
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


def txns(rows: list[dict], types: dict[str, pa.DataType] = TXN_TYPES) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))


@pytest.fixture(params=["one_query", "pandera"])
def engine(request, monkeypatch):
    """Run a test both on the single-query path and on pandera's own validation."""
    assert TRANSACTIONS.fast and CARD_DAILY.fast
    if request.param == "pandera":
        monkeypatch.setattr(quality, "_fast_failures", lambda suite, df: None)
    return request.param


def quarantined_by(res: quality.QualityResult, key: str) -> dict:
    """{key value: failed checks} of the quarantined rows."""
    q = res.quarantined
    return dict(zip(q[key].to_pylist(), q["failed_checks"].to_pylist(), strict=True))


def result(res: quality.QualityResult, check: str) -> dict:
    (found,) = [r for r in res.results if r["check"] == check]
    return found


def test_good_rows_pass_and_every_expectation_is_reported(engine):
    table = txns([txn(i) for i in range(8)])
    res = quality.run(TRANSACTIONS, table, NOW)
    assert res.passed.equals(table)
    assert res.quarantined.num_rows == 0
    assert res.quarantined.schema.names == [*table.schema.names, "failed_checks"]
    assert res.success and res.failed_checks == []
    assert [r["check"] for r in res.results] == [name for name, _ in TRANSACTIONS.expectations]
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
    ({"merchant_id": None}, "merchant_id:not_nullable"),
    ({"event_time": None}, "event_time:not_nullable"),
    ({"amount": 0.0}, "amount:greater_than(0)"),
    ({"amount": 1_000_000.01}, "amount:less_than_or_equal_to(1000000.0)"),
    ({"amount": None}, "amount:not_nullable"),
    ({"channel": "FAX"}, "channel:accepted_values"),
    ({"transaction_type": "GIFT"}, "transaction_type:accepted_values"),
    ({"currency": "eur"}, "currency:iso_4217_pattern"),
    ({"merchant_category_code": "541"}, "merchant_category_code:four_digits"),
    ({"merchant_category_code": "54X1"}, "merchant_category_code:four_digits"),
    ({"country": "DEU"}, "country:iso_3166_pattern"),
    ({"lat": 90.5}, "lat:in_range(-90.0, 90.0)"),
    ({"lon": -180.5}, "lon:in_range(-180.0, 180.0)"),
    ({"event_date": (NOW - timedelta(days=1)).date()}, "event_date_matches_event_time"),
]


@pytest.mark.parametrize(("change", "check"), BAD, ids=[c for _, c in BAD])
def test_each_bad_kind_is_quarantined_with_its_check(engine, change, check):
    table = txns([txn(0), txn(1, **change), txn(2)])
    res = quality.run(TRANSACTIONS, table, NOW)
    assert res.passed["transaction_id"].to_pylist() == ["t0", "t2"]
    assert res.quarantined.num_rows == 1
    assert res.quarantined["failed_checks"].to_pylist() == [check]
    assert res.quarantined.drop_columns(["failed_checks"]).to_pylist() == table.slice(1, 1).to_pylist()
    assert result(res, check) | {"suite": None} == {
        "suite": None,
        "check": check,
        "column": result(res, check)["column"],
        "failed_count": 1,
        "total_count": 3,
        "success": False,
    }
    assert res.failed_checks == [check]


def test_counts_and_a_row_failing_several_checks(engine):
    rows = [txn(i) for i in range(10)]
    rows[2] = txn(2, amount=-1.0, channel="FAX")
    rows[5] = txn(5, amount=-3.0)
    rows[7] = txn(7, card_id=None)
    res = quality.run(TRANSACTIONS, txns(rows), NOW)
    assert res.passed.num_rows == 7
    assert quarantined_by(res, "transaction_id") == {
        "t2": "amount:greater_than(0);channel:accepted_values",
        "t5": "amount:greater_than(0)",
        "t7": "card_id:not_nullable",
    }
    failed = {r["check"]: r["failed_count"] for r in res.results if not r["success"]}
    assert failed == {"amount:greater_than(0)": 2, "channel:accepted_values": 1, "card_id:not_nullable": 1}


def test_stale_batch_is_reported_but_nothing_is_quarantined():
    table = txns([txn(i) for i in range(3)])
    res = quality.run(transactions_suite(max_staleness_s=60), table, NOW + timedelta(minutes=5))
    assert res.passed.num_rows == 3 and res.quarantined.num_rows == 0
    fresh = result(res, "event_time:freshness")
    assert fresh == {
        "suite": "silver.transactions",
        "check": "event_time:freshness",
        "column": "event_time",
        "failed_count": 1,
        "total_count": 1,
        "success": False,
    }
    assert res.failed_checks == ["event_time:freshness"]
    assert quality.run(transactions_suite(max_staleness_s=3600), table, NOW + timedelta(minutes=5)).success


def test_empty_batch_is_fresh_and_passes():
    res = quality.run(transactions_suite(max_staleness_s=1), txns([]), NOW)
    assert res.success and res.passed.num_rows == 0 and res.quarantined.num_rows == 0
    assert result(res, "event_time:freshness")["success"]


def test_a_wrong_dtype_quarantines_the_whole_batch_without_raising():
    types = {**TXN_TYPES, "amount": pa.string()}
    table = txns([txn(i, amount=str(10 + i)) for i in range(4)], types)
    res = quality.run(TRANSACTIONS, table, NOW)
    assert res.passed.num_rows == 0
    assert res.quarantined.num_rows == 4
    for checks in res.quarantined["failed_checks"].to_pylist():
        assert "amount:dtype" in checks.split(quality.FAILED_CHECKS_SEP)
    assert result(res, "amount:dtype")["failed_count"] == 4
    assert result(res, "transaction_id:not_nullable")["success"]


def test_a_wrong_timestamp_type_or_a_missing_column_fails_the_batch():
    naive = txns([txn(0)], {**TXN_TYPES, "event_time": pa.timestamp("us")})
    res = quality.run(TRANSACTIONS, naive, NOW)
    assert res.quarantined["failed_checks"].to_pylist() == ["event_time:dtype"]
    missing = txns([txn(0), txn(1)]).drop_columns(["terminal_id"])
    res = quality.run(TRANSACTIONS, missing, NOW)
    assert res.passed.num_rows == 0
    assert res.quarantined["failed_checks"].to_pylist() == ["terminal_id:column_in_dataframe"] * 2
    assert result(res, "terminal_id:column_in_dataframe") == {
        "suite": "silver.transactions",
        "check": "terminal_id:column_in_dataframe",
        "column": "terminal_id",
        "failed_count": 2,
        "total_count": 2,
        "success": False,
    }


def test_a_check_that_errors_quarantines_the_batch():
    def broken(data):
        raise RuntimeError("boom")

    suite = quality.Suite(
        "broken", DataFrameSchema({"x": Column(pl.Int64, checks=[Check(broken, name="explodes")])}, name="t")
    )
    res = quality.run(suite, pa.table({"x": pa.array([1, 2], pa.int64())}), NOW)
    assert res.passed.num_rows == 0
    assert res.quarantined["failed_checks"].to_pylist() == ["x:explodes", "x:explodes"]
    assert result(res, "x:explodes")["failed_count"] == 2


def daily(key: str, rows: list[tuple]) -> pa.Table:
    names = ["event_date", key, "txn_count", "amount_sum", "fraud_count", "fraud_amount"]
    types = [pa.date32(), pa.string(), pa.int64(), pa.float64(), pa.int64(), pa.float64()]
    return pa.table([pa.array(col, t) for col, t in zip(zip(*rows, strict=True), types, strict=True)], names=names)


def test_gold_daily_suite(engine):
    day = NOW.date()
    table = daily(
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
    res = quality.run(CARD_DAILY, table, NOW)
    assert res.passed["card_id"].to_pylist() == ["a", "b"]
    assert quarantined_by(res, "card_id") == {
        "c": "fraud_count_le_txn_count",
        "d": "fraud_amount_le_amount_sum",
        "e": "fraud_count_le_txn_count;txn_count:greater_than_or_equal_to(0)",
        None: "card_id:not_nullable",
        "g": "multiple_fields_uniqueness",
    }
    assert result(res, "multiple_fields_uniqueness")["failed_count"] == 2


def test_merchant_daily_is_keyed_by_merchant_and_mcc():
    day = NOW.date()
    table = daily(
        "merchant_id", [(day, "m1", 1, 1.0, 0, 0.0), (day, "m1", 2, 2.0, 0, 0.0), (day, "m1", 1, 1.0, 0, 0.0)]
    )
    table = table.append_column("merchant_category_code", pa.array(["5411", "5812", "5411"]))
    res = quality.run(MERCHANT_DAILY, table, NOW)
    assert res.passed["merchant_category_code"].to_pylist() == ["5812"]
    assert res.quarantined["failed_checks"].to_pylist() == ["multiple_fields_uniqueness"] * 2


@pytest.mark.parametrize("case", ["silver", "gold"])
def test_the_single_query_path_reports_what_pandera_reports(case):
    if case == "silver":
        rows = [txn(i) for i in range(12)]
        rows[1] = txn(1, amount=float("nan"), lat=float("nan"))
        rows[2] = txn(2, lat=None, lon=None, terminal_id="x", mcc_category="grocery")
        rows[3] = txn(3, event_time=None, amount=-2.0, channel=None)
        rows[4] = txn(4, currency="EURO", country="de", transaction_type="refund")
        rows[5] = txn(5, event_date=(NOW + timedelta(days=1)).date())
        suite, table = TRANSACTIONS, txns(rows)
    else:
        day = NOW.date()
        rows = [(day, "m1", 1, 1.0, 0, 0.0), (day, "m1", 1, 1.0, 2, 3.0), (day, None, None, None, None, float("nan"))]
        suite, table = MERCHANT_DAILY, daily("merchant_id", rows)
    df = pl.from_arrow(table)
    fast = quality._fast_failures(suite, df)
    assert fast is not None and fast.height > 0
    slow = quality._pandera_failures(suite, df)
    assert sorted(fast.unique().rows(), key=repr) == sorted(slow.unique().rows(), key=repr)


def test_record_writes_both_tables_once_and_the_metrics(settings, tmp_path):
    settings = settings.model_copy(
        update={
            "lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path)}),
            "state_dir": str(tmp_path / "state"),
        }
    )
    rows = [txn(i) for i in range(5)]
    rows[1] = txn(1, amount=-1.0)
    rows[3] = txn(3, channel="FAX", card_id=None)
    res = quality.run(TRANSACTIONS, txns(rows), NOW)
    labels = {"suite": "silver.transactions", "check": "amount:greater_than(0)"}
    before = quality.REGISTRY.get_sample_value("lakehouse_quality_checks_failed_total", labels) or 0.0
    q_before = (
        quality.REGISTRY.get_sample_value("lakehouse_quality_rows_quarantined_total", {"suite": labels["suite"]}) or 0.0
    )

    kw = {"suite": TRANSACTIONS, "table_name": "silver.transactions", "app_id": "query-1", "batch_id": 7}
    assert quality.record(settings, res, **kw)
    assert not quality.record(settings, res, **kw)  # a replayed batch writes and counts nothing

    results = delta.read_arrow(settings, quality.EXPECTATION_RESULTS.uri(settings))
    assert results.num_rows == len(res.results)
    assert set(results["query_id"].to_pylist()) == {"query-1"} and set(results["batch_id"].to_pylist()) == {7}
    failed = {r["check_name"]: r["failed_count"] for r in results.to_pylist() if not r["success"]}
    assert failed == {"amount:greater_than(0)": 1, "channel:accepted_values": 1, "card_id:not_nullable": 1}
    assert results["run_date"].to_pylist()[0] == NOW.date()

    quarantine = delta.read_arrow(settings, quality.QUARANTINE.uri(settings)).sort_by("failed_checks")
    assert quarantine["failed_checks"].to_pylist() == [
        "amount:greater_than(0)",
        "card_id:not_nullable;channel:accepted_values",
    ]
    assert set(quarantine["table_name"].to_pylist()) == {"silver.transactions"}
    assert [json.loads(r)["transaction_id"] for r in quarantine["row_json"].to_pylist()] == ["t1", "t3"]
    assert json.loads(quarantine["row_json"][0].as_py())["event_time"].startswith(str(NOW.date()))
    assert quarantine["quarantined_at"].to_pylist() == [NOW, NOW]

    # another suite checked in the same query and batch is recorded too (its own app transaction)
    good = quality.run(TRANSACTIONS, txns([txn(0)]), NOW)
    assert quality.record(settings, good, **{**kw, "table_name": "silver.transactions_copy"})
    assert delta.read_arrow(settings, quality.EXPECTATION_RESULTS.uri(settings)).num_rows == 2 * len(res.results)

    assert quality.REGISTRY.get_sample_value("lakehouse_quality_checks_failed_total", labels) == before + 1
    after = quality.REGISTRY.get_sample_value("lakehouse_quality_rows_quarantined_total", {"suite": labels["suite"]})
    assert after == q_before + 2
    prom = (tmp_path / "state" / "metrics" / "quality.prom").read_text()
    assert "# TYPE lakehouse_quality_checks_failed_total counter" in prom
    amount_series = 'lakehouse_quality_checks_failed_total{check="amount:greater_than(0)",suite="silver.transactions"}'
    assert f"{amount_series} {before + 1}" in prom
    assert f'lakehouse_quality_rows_quarantined_total{{suite="silver.transactions"}} {q_before + 2}' in prom
    assert (
        'lakehouse_quality_checks_failed_total{check="transaction_id:not_nullable",suite="silver.transactions"}' in prom
    )
