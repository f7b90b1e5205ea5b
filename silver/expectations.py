"""Bronze→silver expectations for ``silver.transactions`` (a Great Expectations suite, run by ``lakehouse.quality``
on each micro-batch's Spark DataFrame).

Rows failing a check are quarantined to ``silver.quarantine``; a missing or mistyped column quarantines the batch;
freshness of ``event_time`` is reported only.
"""

from __future__ import annotations

from lakehouse import quality
from lakehouse.quality import Derived, Suite

gxe = quality.gx().expectations

CHANNELS = ("POS", "ATM", "ONLINE", "MOBILE")
TRANSACTION_TYPES = ("PURCHASE", "WITHDRAWAL", "REFUND", "TRANSFER")
MAX_AMOUNT = 1_000_000.0
# newest event of a batch older than this (vs. the batch's processing time) means the stream lags
DEFAULT_MAX_STALENESS_S = 900.0

EVENT_TIME_DATE = Derived("__event_time_date", "to_date(event_time)", ("event_time",))


def _column(name: str, spark_type: str, *checks, nullable: bool = False) -> list:
    """A column that must exist with ``spark_type`` (a pyspark.sql.types name), non-null unless ``nullable``,
    and meet ``checks``."""
    out = [gxe.ExpectColumnToExist(column=name), gxe.ExpectColumnValuesToBeOfType(column=name, type_=spark_type)]
    if not nullable:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=name))
    return [*out, *checks]


def _matches(column: str, regex: str, check: str):
    return gxe.ExpectColumnValuesToMatchRegex(column=column, regex=regex, meta={"check": f"{column}:{check}"})


EXPECTATIONS = [
    *_column("transaction_id", "StringType"),
    *_column("event_time", "TimestampType"),
    *_column("card_id", "StringType"),
    *_column("customer_id", "StringType"),
    *_column("merchant_id", "StringType"),
    *_column("merchant_category_code", "StringType", _matches("merchant_category_code", r"^[0-9]{4}$", "four_digits")),
    *_column("terminal_id", "StringType", nullable=True),
    *_column(
        "amount",
        "DoubleType",
        gxe.ExpectColumnValuesToBeBetween(
            column="amount", min_value=0, strict_min=True, meta={"check": "amount:greater_than(0)"}
        ),
        gxe.ExpectColumnValuesToBeBetween(column="amount", max_value=MAX_AMOUNT),
    ),
    *_column("currency", "StringType", _matches("currency", r"^[A-Z]{3}$", "iso_4217_pattern")),
    *_column("channel", "StringType", gxe.ExpectColumnValuesToBeInSet(column="channel", value_set=list(CHANNELS))),
    *_column("card_present", "BooleanType"),
    *_column("country", "StringType", _matches("country", r"^[A-Z]{2}$", "iso_3166_pattern")),
    *_column(
        "lat",
        "DoubleType",
        gxe.ExpectColumnValuesToBeBetween(column="lat", min_value=-90.0, max_value=90.0),
        nullable=True,
    ),
    *_column(
        "lon",
        "DoubleType",
        gxe.ExpectColumnValuesToBeBetween(column="lon", min_value=-180.0, max_value=180.0),
        nullable=True,
    ),
    *_column("device_id", "StringType", nullable=True),
    *_column(
        "transaction_type",
        "StringType",
        gxe.ExpectColumnValuesToBeInSet(column="transaction_type", value_set=list(TRANSACTION_TYPES)),
    ),
    *_column("event_date", "DateType"),
    *_column("mcc_category", "StringType", nullable=True),
    # rows where either side is null are not compared (their not-null checks report them)
    gxe.ExpectColumnPairValuesToBeEqual(
        column_A="event_date",
        column_B=EVENT_TIME_DATE.column,
        ignore_row_if="either_value_is_missing",
        meta={"check": "event_date_matches_event_time"},
    ),
]


def transactions_suite(max_staleness_s: float = DEFAULT_MAX_STALENESS_S) -> Suite:
    """The bronze→silver suite, with freshness of ``event_time`` allowed to lag ``max_staleness_s``."""
    return Suite("silver.transactions", EXPECTATIONS, "event_time", max_staleness_s, derived=(EVENT_TIME_DATE,))


TRANSACTIONS = transactions_suite()
