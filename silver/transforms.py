"""Pure DataFrame → DataFrame transformations of the silver stage (bronze rows in, typed and enriched rows out)."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse.contracts import TIME_FIELDS, spark_ddl

LINEAGE = ("source_partition", "source_offset", "log_time")
FIRST_IN_LOG = ("log_time", "source_partition", "source_offset")


def parse_events(bronze: DataFrame, kind: str, contract: dict | None = None) -> DataFrame:
    """Typed fields of the ``kind`` contract from bronze payloads; the time field becomes a UTC timestamp.

    Fields the contract does not (yet) know are ignored; pass a newer ``contract`` to pick them up.
    Lineage (source partition/offset, log time) and the raw payload are kept; ``event_date`` is the UTC date
    of the time field.
    """
    time_field = TIME_FIELDS[kind]
    e = F.from_json("payload", spark_ddl(kind, contract)).alias("e")
    parsed = bronze.select(e, *LINEAGE, "payload")
    fields = [
        F.timestamp_millis(F.col(f"e.{name}")).alias(name) if name == time_field else F.col(f"e.{name}")
        for name in parsed.schema["e"].dataType.fieldNames()
    ]
    return parsed.select(*fields, *LINEAGE, "payload", F.to_date(time_field).alias("event_date"))


def classify(events: DataFrame, key: list[str], watermark: datetime | None, time_col: str = "event_time") -> DataFrame:
    """Add ``silver_status``: ``late`` (event time before the watermark), ``duplicate`` (a repeat of ``key``
    within the batch: the first in log order wins) or ``new``."""
    first = Window.partitionBy(*key).orderBy(*FIRST_IN_LOG)
    late = F.lit(False) if watermark is None else F.col(time_col) < F.lit(watermark)
    status = F.when(late, "late").when(F.row_number().over(first) > 1, "duplicate").otherwise("new")
    return events.withColumn("silver_status", status)


def enrich(
    txns: DataFrame,
    mcc: DataFrame,
    countries: DataFrame,
    merchants: DataFrame,
    terminals: DataFrame,
    devices: DataFrame,
) -> DataFrame:
    """Join the (small, broadcast) reference tables; unknown merchants/terminals/devices give nulls and flags."""
    out = (
        txns.join(F.broadcast(mcc.drop("updated_at", "card_not_present")), "merchant_category_code", "left")
        .join(F.broadcast(countries.drop("updated_at")), "country", "left")
        .join(F.broadcast(merchants.drop("updated_at")), "merchant_id", "left")
        .join(F.broadcast(terminals.drop("updated_at")), "terminal_id", "left")
        .join(F.broadcast(devices.drop("updated_at")), "device_id", "left")
    )
    return out.select(
        *txns.columns,
        "mcc_category",
        "mcc_risk_tier",
        "country_name",
        "region",
        "country_risk_tier",
        "merchant_country",
        "merchant_lat",
        "merchant_lon",
        "terminal_lat",
        "terminal_lon",
        "device_type",
        F.col("merchant_country").isNotNull().alias("merchant_known"),
        (F.col("device_id").isNotNull() & (F.col("device_customer_id") == F.col("customer_id")))
        .cast("boolean")
        .alias("device_known"),
        (F.col("terminal_id").isNotNull() & (F.col("terminal_merchant_id") != F.col("merchant_id")))
        .cast("boolean")
        .alias("terminal_mismatch"),
    )


def latest_labels(labels: DataFrame) -> DataFrame:
    """One label per transaction (the latest reported; ties broken by log order), in silver's label columns."""
    newest = Window.partitionBy("transaction_id").orderBy(
        F.col("reported_at").desc(), F.col("log_time").desc(), F.col("source_offset").desc()
    )
    return (
        labels.withColumn("_n", F.row_number().over(newest))
        .where("_n = 1")
        .select(
            "transaction_id",
            "card_id",
            "label",
            F.col("source").alias("label_source"),
            F.col("scenario").alias("label_scenario"),
            F.col("reported_at").alias("label_reported_at"),
        )
    )


def late_events(late: DataFrame, kind: str, event_id: Column, watermark: datetime) -> DataFrame:
    """Rows beyond the allowed lateness (``silver_status == "late"``) with the watermark they missed, by how many
    whole seconds, and the reason: the rows of ``silver.late_events``."""
    time_col = F.col(TIME_FIELDS[kind])
    wm = F.lit(watermark).cast("timestamp")
    return late.select(
        F.lit(kind).alias("kind"),
        event_id.cast("string").alias("event_id"),
        time_col.alias("event_time"),
        wm.alias("watermark"),
        F.floor((F.unix_micros(wm) - F.unix_micros(time_col)) / 1_000_000).cast("bigint").alias("lateness_s"),
        F.lit("beyond_allowed_lateness").alias("reason"),
        *LINEAGE,
        "payload",
        "event_date",
    )


def tick_id() -> Column:
    """A market tick's id in ``silver.late_events``: ``<symbol>@<event time to the second, UTC>``."""
    return F.concat_ws("@", "symbol", F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss"))
