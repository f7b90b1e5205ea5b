"""Silver→gold expectations for the daily aggregate tables (Great Expectations suites, run by
``lakehouse.quality`` on Spark DataFrames)."""

from __future__ import annotations

from lakehouse import quality
from lakehouse.quality import Derived, Suite

gxe = quality.gx().expectations

# fraud_amount may exceed amount_sum by float rounding only (the two are sums over different row sets)
REL_EPSILON = 1e-9
ABS_EPSILON = 1e-6
AMOUNT_SUM_TOLERATED = Derived(
    "__amount_sum_tolerated", f"amount_sum + abs(amount_sum) * {REL_EPSILON!r} + {ABS_EPSILON!r}", ("amount_sum",)
)


def _column(name: str, spark_type: str, *checks) -> list:
    return [
        gxe.ExpectColumnToExist(column=name),
        gxe.ExpectColumnValuesToBeOfType(column=name, type_=spark_type),
        gxe.ExpectColumnValuesToNotBeNull(column=name),
        *checks,
    ]


def _non_negative(name: str):
    # GX keeps the bound as 0.0: the name keeps the integer the check always had
    return gxe.ExpectColumnValuesToBeBetween(
        column=name, min_value=0, meta={"check": f"{name}:greater_than_or_equal_to(0)"}
    )


def daily_expectations(key: str, also_keyed_by: tuple[str, ...] = ()) -> list:
    """A daily aggregate keyed by (event_date, ``key``, *``also_keyed_by``): one row per key, non-null
    ``key``, non-negative counts and amounts, fraud within the totals."""
    return [
        *_column("event_date", "DateType"),
        *_column(key, "StringType"),
        *_column("txn_count", "LongType", _non_negative("txn_count")),
        *_column("amount_sum", "DoubleType", _non_negative("amount_sum")),
        *_column("fraud_count", "LongType", _non_negative("fraud_count")),
        *_column("fraud_amount", "DoubleType", _non_negative("fraud_amount")),
        # key columns that are all null are not compared (GX's default); a null key fails key:not_nullable
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["event_date", key, *also_keyed_by]),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="txn_count",
            column_B="fraud_count",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            meta={"check": "fraud_count_le_txn_count"},
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=AMOUNT_SUM_TOLERATED.column,
            column_B="fraud_amount",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            meta={"check": "fraud_amount_le_amount_sum"},
        ),
    ]


def daily_suite(
    name: str,
    key: str,
    also_keyed_by: tuple[str, ...] = (),
    freshness_column: str | None = None,
    max_staleness_s: float | None = None,
) -> Suite:
    """The suite of one daily aggregate table (freshness optional: gold recomputes old days too)."""
    return Suite(
        name,
        daily_expectations(key, also_keyed_by),
        freshness_column,
        max_staleness_s,
        derived=(AMOUNT_SUM_TOLERATED,),
    )


# the gold daily aggregates of lakehouse/catalog.py (fraud_summary_daily has other measures: total_count, total_amount)
CARD_DAILY = daily_suite("gold.card_daily", "card_id")
MERCHANT_DAILY = daily_suite("gold.merchant_daily", "merchant_id", ("merchant_category_code",))
MCC_DAILY = daily_suite("gold.mcc_daily", "merchant_category_code", ("mcc_category",))
SUITES = {suite.name: suite for suite in (CARD_DAILY, MERCHANT_DAILY, MCC_DAILY)}
