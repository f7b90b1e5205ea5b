"""Pure aggregations of silver into the gold tables (one day per row and key)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

DECISIONS = ("decline", "review", "block")


def _fraud(df: DataFrame) -> DataFrame:
    return df.withColumn("_fraud", F.col("label") == "fraud").withColumn("_labelled", F.col("label").isNotNull())


def _measures() -> list[Column]:
    return [
        F.count(F.lit(1)).alias("txn_count"),
        F.sum("amount").alias("amount_sum"),
        F.count_if("_fraud").alias("fraud_count"),
        F.coalesce(F.sum(F.when(F.col("_fraud"), F.col("amount"))), F.lit(0.0)).alias("fraud_amount"),
        F.count_if("_labelled").alias("labelled_count"),
    ]


def _decisions(df: DataFrame) -> list[Column]:
    """Decline/review/block counts from the scoring ``decision`` column, null until scoring writes it."""
    if "decision" not in df.columns:
        return [F.lit(None).cast("long").alias(f"{d}_count") for d in DECISIONS]
    return [F.count_if(F.col("decision") == d).alias(f"{d}_count") for d in DECISIONS]


def card_daily(silver: DataFrame) -> DataFrame:
    df = _fraud(silver)
    return df.groupBy("event_date", "card_id").agg(
        *_measures(),
        F.max("amount").alias("amount_max"),
        F.countDistinct("merchant_id").alias("distinct_merchants"),
        F.countDistinct("country").alias("distinct_countries"),
        *_decisions(df),
    )


def merchant_daily(silver: DataFrame) -> DataFrame:
    df = _fraud(silver)
    return df.groupBy("event_date", "merchant_id", "merchant_category_code").agg(
        *_measures(), F.countDistinct("card_id").alias("distinct_cards"), *_decisions(df)
    )


def mcc_daily(silver: DataFrame) -> DataFrame:
    df = _fraud(silver)
    return (
        df.groupBy("event_date", "merchant_category_code")
        .agg(*_measures(), F.max("mcc_category").alias("mcc_category"), *_decisions(df))
        .withColumn("avg_amount", F.col("amount_sum") / F.col("txn_count"))
        .withColumn("fraud_rate", F.col("fraud_count") / F.col("txn_count"))
    )


def fraud_summary_daily(silver: DataFrame) -> DataFrame:
    """The BI dashboard's daily line: totals, fraud (by label), flagged/blocked (by the scoring decision) and the
    false-positive rate = flagged genuine / flagged (null until decisions exist)."""
    df = _fraud(silver)
    if "decision" in df.columns:
        flagged = F.col("decision").isin(*DECISIONS)
        extra = [
            F.count_if(flagged).alias("flagged_count"),
            F.count_if(F.col("decision") == "block").alias("blocked_count"),
            (F.count_if(flagged & (F.col("label") == "genuine")) / F.nullif(F.count_if(flagged), F.lit(0))).alias(
                "false_positive_rate"
            ),
        ]
    else:
        extra = [
            F.lit(None).cast("long").alias("flagged_count"),
            F.lit(None).cast("long").alias("blocked_count"),
            F.lit(None).cast("double").alias("false_positive_rate"),
        ]
    return (
        df.groupBy("event_date")
        .agg(*_measures(), F.countDistinct("card_id").alias("active_cards"), *extra)
        .withColumnRenamed("txn_count", "total_count")
        .withColumnRenamed("amount_sum", "total_amount")
        .withColumn("fraud_rate", F.col("fraud_count") / F.col("total_count"))
    )


def market_risk_daily(ticks: DataFrame) -> DataFrame:
    """Per symbol and day: OHLC, volume, the day's return, tick-to-tick log-return volatility (standard deviation
    and realised = sqrt of the summed squares) and the maximum drawdown from the running high."""
    order = Window.partitionBy("symbol", "event_date").orderBy("event_time", "source_partition", "source_offset")
    upto = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    df = ticks.withColumn("_r", F.log(F.col("price") / F.lag("price").over(order))).withColumn(
        "_dd", F.col("price") / F.max("price").over(upto) - 1
    )
    return (
        df.groupBy("event_date", "symbol")
        .agg(
            F.min_by("price", "event_time").alias("open"),
            F.max("price").alias("high"),
            F.min("price").alias("low"),
            F.max_by("price", "event_time").alias("close"),
            F.count(F.lit(1)).alias("tick_count"),
            F.sum("volume").alias("volume"),
            F.stddev_samp("_r").alias("volatility"),
            F.sqrt(F.sum(F.col("_r") * F.col("_r"))).alias("realised_volatility"),
            F.min("_dd").alias("max_drawdown"),
        )
        .withColumn("daily_return", F.col("close") / F.col("open") - 1)
    )


def with_decisions(silver: DataFrame, decisions: DataFrame) -> DataFrame:
    """Silver transactions with their stream decision (null where none yet): the acting model and the shadow."""
    cols = ["transaction_id", "decision", "score", "model_name", "model_version", "route", "shadow_model_version",
            "shadow_decision"]  # fmt: skip
    return silver.join(decisions.select(*cols), "transaction_id", "left")


def model_comparison(df: DataFrame) -> DataFrame:
    """Per day, model version and role (``acting``: its decisions were carried out; ``shadow``: recorded only):
    volumes, decision rates and, among labelled transactions, precision and recall of its flags (review or
    block) — the evidence for promoting a challenger."""
    labelled = _fraud(df)
    acting = labelled.where(F.col("decision").isNotNull()).select(
        "event_date", "model_name", "model_version", F.lit("acting").alias("role"), "decision", "_fraud", "_labelled"
    )
    shadow = labelled.where(F.col("shadow_model_version").isNotNull()).select(
        "event_date", "model_name", F.col("shadow_model_version").alias("model_version"),
        F.lit("shadow").alias("role"), F.col("shadow_decision").alias("decision"), "_fraud", "_labelled",
    )  # fmt: skip
    flagged = F.col("decision").isin("review", "block")
    tp = F.count_if(flagged & F.col("_fraud"))
    return (
        acting.unionByName(shadow)
        .groupBy("event_date", "model_name", "model_version", "role")
        .agg(
            F.count(F.lit(1)).alias("transactions"),
            F.count_if(F.col("decision") == "approve").alias("approve_count"),
            F.count_if(F.col("decision") == "review").alias("review_count"),
            F.count_if(F.col("decision") == "block").alias("block_count"),
            F.count_if("_labelled").alias("labelled_count"),
            F.count_if("_fraud").alias("fraud_count"),
            tp.alias("true_positives"),
            (tp / F.nullif(F.count_if(flagged), F.lit(0))).alias("precision"),
            (tp / F.nullif(F.count_if("_fraud"), F.lit(0))).alias("recall"),
        )
        .withColumn("review_rate", F.col("review_count") / F.col("transactions"))
        .withColumn("block_rate", F.col("block_count") / F.col("transactions"))
    )
