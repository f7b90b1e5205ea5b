"""Silver→gold expectations for the daily aggregate tables (pandera-polars, run by ``lakehouse.quality``)."""

from __future__ import annotations

import polars as pl
from pandera.polars import Check, Column, DataFrameSchema, PolarsData

from lakehouse.quality import Suite

# fraud_amount may exceed amount_sum by float rounding only (the two are sums over different row sets)
REL_EPSILON = 1e-9
ABS_EPSILON = 1e-6


def _fraud_count_le_txn_count(data: PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col("fraud_count") <= pl.col("txn_count"))


def _fraud_amount_le_amount_sum(data: PolarsData) -> pl.LazyFrame:
    amount_sum = pl.col("amount_sum")
    return data.lazyframe.select(pl.col("fraud_amount") <= amount_sum + amount_sum.abs() * REL_EPSILON + ABS_EPSILON)


def daily_schema(name: str, key: str, also_keyed_by: tuple[str, ...] = ()) -> DataFrameSchema:
    """A daily aggregate keyed by (event_date, ``key``, *``also_keyed_by``): one row per key, non-null
    ``key``, non-negative counts and amounts, fraud within the totals."""
    return DataFrameSchema(
        {
            "event_date": Column(pl.Date, nullable=False),
            key: Column(pl.String, nullable=False),
            "txn_count": Column(pl.Int64, checks=[Check.ge(0)], nullable=False),
            "amount_sum": Column(pl.Float64, checks=[Check.ge(0)], nullable=False),
            "fraud_count": Column(pl.Int64, checks=[Check.ge(0)], nullable=False),
            "fraud_amount": Column(pl.Float64, checks=[Check.ge(0)], nullable=False),
        },
        checks=[
            Check(_fraud_count_le_txn_count, name="fraud_count_le_txn_count"),
            Check(_fraud_amount_le_amount_sum, name="fraud_amount_le_amount_sum"),
        ],
        unique=["event_date", key, *also_keyed_by],
        strict=False,
        coerce=False,
        name=name,
    )


def daily_suite(
    name: str,
    key: str,
    also_keyed_by: tuple[str, ...] = (),
    freshness_column: str | None = None,
    max_staleness_s: float | None = None,
) -> Suite:
    """The suite of one daily aggregate table (freshness optional: gold recomputes old days too)."""
    return Suite(name, daily_schema(name, key, also_keyed_by), freshness_column, max_staleness_s)


# the daily aggregates of gold/tables.py (fraud_summary_daily has other measures: total_count, total_amount)
CARD_DAILY = daily_suite("gold.card_daily", "card_id")
MERCHANT_DAILY = daily_suite("gold.merchant_daily", "merchant_id", ("merchant_category_code",))
MCC_DAILY = daily_suite("gold.mcc_daily", "merchant_category_code", ("mcc_category",))
SUITES = {suite.name: suite for suite in (CARD_DAILY, MERCHANT_DAILY, MCC_DAILY)}
