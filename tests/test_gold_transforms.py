"""Gold aggregates against numbers worked out by hand on a small fixed dataset."""

import itertools
import math
from datetime import UTC, date, datetime, timedelta

import pytest
from chispa import assert_approx_df_equality

from gold import transforms

D1, D2 = date(2026, 3, 2), date(2026, 3, 3)
SILVER = (
    "transaction_id string, event_date date, card_id string, merchant_id string, merchant_category_code string, "
    "mcc_category string, amount double, country string, label string, decision string"
)
ROWS = [
    ("t1", D1, "A", "M1", "5411", "grocery", 10.0, "FR", None, "approve"),
    ("t2", D1, "A", "M2", "5999", "online retail", 100.0, "FR", "fraud", "block"),
    ("t3", D1, "B", "M1", "5411", "grocery", 30.0, "DE", "genuine", "review"),
    ("t4", D1, "A", "M2", "5999", "online retail", 50.0, "NG", "fraud", "approve"),
    ("t5", D2, "B", "M1", "5411", "grocery", 20.0, "DE", None, "approve"),
]


@pytest.fixture(scope="module")
def silver(spark):
    return spark.createDataFrame(ROWS, SILVER)


def check(spark, actual, expected_rows, ddl):
    expected = spark.createDataFrame(expected_rows, ddl)
    cols = [c.split(" ")[0] for c in ddl.split(", ")]
    assert_approx_df_equality(
        actual.select(*cols), expected, 1e-9, ignore_row_order=True, ignore_nullable=True, ignore_column_order=False
    )


def test_card_daily(spark, silver):
    check(
        spark,
        transforms.card_daily(silver),
        [
            (D1, "A", 3, 160.0, 2, 150.0, 2, 100.0, 2, 2, 0, 0, 1),
            (D1, "B", 1, 30.0, 0, 0.0, 1, 30.0, 1, 1, 0, 1, 0),
            (D2, "B", 1, 20.0, 0, 0.0, 0, 20.0, 1, 1, 0, 0, 0),
        ],
        "event_date date, card_id string, txn_count long, amount_sum double, fraud_count long, fraud_amount double, "
        "labelled_count long, amount_max double, distinct_merchants long, distinct_countries long, "
        "decline_count long, review_count long, block_count long",
    )


def test_merchant_daily(spark, silver):
    check(
        spark,
        transforms.merchant_daily(silver),
        [
            (D1, "M1", "5411", 2, 40.0, 0, 0.0, 1, 2),
            (D1, "M2", "5999", 2, 150.0, 2, 150.0, 2, 1),
            (D2, "M1", "5411", 1, 20.0, 0, 0.0, 0, 1),
        ],
        "event_date date, merchant_id string, merchant_category_code string, txn_count long, amount_sum double, "
        "fraud_count long, fraud_amount double, labelled_count long, distinct_cards long",
    )


def test_mcc_daily(spark, silver):
    check(
        spark,
        transforms.mcc_daily(silver),
        [
            (D1, "5411", "grocery", 2, 40.0, 20.0, 0, 0.0, 0.0),
            (D1, "5999", "online retail", 2, 150.0, 75.0, 2, 150.0, 1.0),
            (D2, "5411", "grocery", 1, 20.0, 20.0, 0, 0.0, 0.0),
        ],
        "event_date date, merchant_category_code string, mcc_category string, txn_count long, amount_sum double, "
        "avg_amount double, fraud_count long, fraud_amount double, fraud_rate double",
    )


def test_fraud_summary_daily_with_and_without_decisions(spark, silver):
    ddl = (
        "event_date date, total_count long, total_amount double, fraud_count long, fraud_amount double, "
        "labelled_count long, fraud_rate double, active_cards long, flagged_count long, blocked_count long, "
        "false_positive_rate double"
    )
    # flagged = t2 (block) and t3 (review); of those only t3 is genuine -> false-positive rate 1/2
    check(
        spark,
        transforms.fraud_summary_daily(silver),
        [(D1, 4, 190.0, 2, 150.0, 3, 0.5, 2, 2, 1, 0.5), (D2, 1, 20.0, 0, 0.0, 0, 0.0, 1, 0, 0, None)],
        ddl,
    )
    check(
        spark,
        transforms.fraud_summary_daily(silver.drop("decision")),
        [(D1, 4, 190.0, 2, 150.0, 3, 0.5, 2, None, None, None), (D2, 1, 20.0, 0, 0.0, 0, 0.0, 1, None, None, None)],
        ddl,
    )


def test_market_risk_daily(spark):
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    prices = [100.0, 110.0, 99.0, 104.5]
    ticks = spark.createDataFrame(
        [("ACME", t0 + timedelta(minutes=i), p, float(i + 1), D1, 0, i) for i, p in enumerate(prices)],
        "symbol string, event_time timestamp, price double, volume double, event_date date, "
        "source_partition int, source_offset long",
    )
    r = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    mean = sum(r) / len(r)
    stdev = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
    check(
        spark,
        transforms.market_risk_daily(ticks),
        [(D1, "ACME", 100.0, 110.0, 99.0, 104.5, 0.045, 4, 10.0, stdev, math.sqrt(sum(x * x for x in r)), -0.1)],
        "event_date date, symbol string, open double, high double, low double, close double, daily_return double, "
        "tick_count long, volume double, volatility double, realised_volatility double, max_drawdown double",
    )


def test_model_comparison_acting_and_shadow(spark):
    """Day 1: v1 acts on t1..t4 with v2 in shadow on t1..t3; t5 (day 2) was decided before any model."""
    ddl = (
        "transaction_id string, event_date date, label string, decision string, model_name string, "
        "model_version string, shadow_model_version string, shadow_decision string"
    )
    rows = [
        ("t1", D1, None, "approve", "xgb", "1", "2", "review"),
        ("t2", D1, "fraud", "block", "xgb", "1", "2", "block"),
        ("t3", D1, "genuine", "review", "xgb", "1", "2", "approve"),
        ("t4", D1, "fraud", "approve", "xgb", "1", None, None),
        ("t5", D2, None, "approve", None, None, None, None),
    ]
    actual = transforms.model_comparison(spark.createDataFrame(rows, ddl))
    check(
        spark,
        actual,
        [
            # v1 acting: flags t2 (fraud) and t3 (genuine): precision 1/2; frauds t2, t4: recall 1/2
            (D1, "xgb", "1", "acting", 4, 2, 1, 1, 3, 2, 1, 0.5, 0.5, 0.25, 0.25),
            # v2 shadow: flags t1 (unlabelled) and t2 (fraud): precision 1/2; its only fraud t2: recall 1
            (D1, "xgb", "2", "shadow", 3, 1, 1, 1, 2, 1, 1, 0.5, 1.0, 1 / 3, 1 / 3),
            (D2, None, None, "acting", 1, 1, 0, 0, 0, 0, 0, None, None, 0.0, 0.0),
        ],
        "event_date date, model_name string, model_version string, role string, transactions long, "
        "approve_count long, review_count long, block_count long, labelled_count long, fraud_count long, "
        "true_positives long, precision double, recall double, review_rate double, block_rate double",
    )
