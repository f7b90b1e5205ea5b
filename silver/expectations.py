"""Bronze→silver expectations for ``silver.transactions`` (pandera-polars, run by ``lakehouse.quality``).

Rows failing a check are quarantined to ``silver.quarantine``; freshness of ``event_time`` is reported only.
"""

from __future__ import annotations

import polars as pl
from pandera.polars import Check, Column, DataFrameSchema, PolarsData

from lakehouse.quality import Suite

CHANNELS = ("POS", "ATM", "ONLINE", "MOBILE")
TRANSACTION_TYPES = ("PURCHASE", "WITHDRAWAL", "REFUND", "TRANSFER")
MAX_AMOUNT = 1_000_000.0
# newest event of a batch older than this (vs. the batch's processing time) means the stream lags
DEFAULT_MAX_STALENESS_S = 900.0

_TS = pl.Datetime("us", "UTC")


def _event_date_matches(data: PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col("event_time").dt.date() == pl.col("event_date"))


def _key(dtype: pl.DataType = pl.String, *checks: Check) -> Column:
    return Column(dtype, checks=list(checks), nullable=False)


TRANSACTIONS_SCHEMA = DataFrameSchema(
    {
        "transaction_id": _key(),
        "event_time": _key(_TS),
        "card_id": _key(),
        "customer_id": _key(),
        "merchant_id": _key(),
        "merchant_category_code": _key(pl.String, Check.str_matches(r"^[0-9]{4}$", error="four_digits")),
        "terminal_id": Column(pl.String, nullable=True),
        "amount": _key(pl.Float64, Check.gt(0), Check.le(MAX_AMOUNT)),
        "currency": _key(pl.String, Check.str_matches(r"^[A-Z]{3}$", error="iso_4217_pattern")),
        "channel": _key(pl.String, Check.isin(CHANNELS, error="accepted_values")),
        "card_present": _key(pl.Boolean),
        "country": _key(pl.String, Check.str_matches(r"^[A-Z]{2}$", error="iso_3166_pattern")),
        "lat": Column(pl.Float64, checks=[Check.in_range(-90.0, 90.0)], nullable=True),
        "lon": Column(pl.Float64, checks=[Check.in_range(-180.0, 180.0)], nullable=True),
        "device_id": Column(pl.String, nullable=True),
        "transaction_type": _key(pl.String, Check.isin(TRANSACTION_TYPES, error="accepted_values")),
        "event_date": _key(pl.Date),
        "mcc_category": Column(pl.String, nullable=True),
    },
    checks=[Check(_event_date_matches, name="event_date_matches_event_time")],
    strict=False,
    coerce=False,
    name="silver.transactions",
)


def transactions_suite(max_staleness_s: float = DEFAULT_MAX_STALENESS_S) -> Suite:
    """The bronze→silver suite, with freshness of ``event_time`` allowed to lag ``max_staleness_s``."""
    return Suite("silver.transactions", TRANSACTIONS_SCHEMA, "event_time", max_staleness_s)


TRANSACTIONS = transactions_suite()
