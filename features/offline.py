"""The offline engine: every feature of ``lakehouse.feature_definitions`` as Spark window functions over history.

Pure DataFrame → DataFrame. A transaction's features use only events before it (``rangeBetween(.., -1)`` on
millisecond time); tiled windows are the hourly tiles before the transaction's hour (a window over the tile
table) plus the hour so far (a window over the hour's events), exactly as ``features.online`` keeps them.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.context import context_columns, haversine_column, location_columns, speed_column
from features.online import PLACES
from lakehouse.feature_definitions import (
    CARD_WINDOWS,
    LOOKBACK,
    MARKET_FEATURE_NAMES,
    PLACE_WINDOWS,
    TICK_WINDOWS,
    TILE_MS,
    TRANSACTION_FEATURE_NAMES,
    W24H,
)

KEYS = ("transaction_id", "card_id", "event_time", "event_date")
UNBOUNDED = Window.unboundedPreceding


def _base(tx: DataFrame) -> DataFrame:
    lat, lon = location_columns()
    ts = F.unix_millis("event_time")
    return tx.select("*", ts.alias("_ts"), F.floor(ts / TILE_MS).alias("_tile"), lat.alias("_lat"), lon.alias("_lon"))


def _zscore(amount: Column, n: Column, s: Column, ss: Column) -> Column:
    var = F.when(n >= 2, (ss - s * s / n) / (n - 1))
    return F.when(var > 0, (amount - s / n) / F.sqrt(var))


def _quantile(values: Column, n: Column, q: float) -> Column:
    """The ``q`` quantile of the sorted array ``values`` (``n`` elements, at least one) by linear interpolation:
    the expression of ``features.online.quantile`` (element_at is 1-based)."""
    pos = F.lit(q) * (n - 1)
    lo = F.floor(pos)
    a = F.element_at(values, (lo + 1).cast("int"))
    b = F.element_at(values, F.least(lo + 2, n).cast("int"))
    return a + (b - a) * (pos - lo)


def _iqr_score(amount: Column, values: Column) -> Column:
    """``features.online.iqr_score``: (amount - median) / IQR of the sorted array ``values``, null under 4
    values or with an IQR of 0. The quartiles are only computed for 4 values or more (no index out of bounds)."""
    n = F.size(values)
    q1, median, q3 = (F.when(n >= 4, _quantile(values, n, q)) for q in (0.25, 0.5, 0.75))
    iqr = q3 - q1
    return F.when(iqr != 0, (amount - median) / iqr)


def card_features(base: DataFrame) -> DataFrame:
    """Card features of every row of ``_base(tx)``, keyed by transaction_id."""
    by_card = Window.partitionBy("card_id").orderBy("_ts")
    hour_so_far = Window.partitionBy("card_id", "_tile").orderBy("_ts").rangeBetween(UNBOUNDED, -1)
    amount = F.col("amount")

    tiles = base.groupBy("card_id", "_tile").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(amount).alias("s"),
        F.sum(amount * amount).alias("ss"),
        F.collect_set("country").alias("countries"),
        F.collect_list(amount).alias("amounts"),
    )
    prior = []
    for w in CARD_WINDOWS:
        if w.tiled:
            frame = Window.partitionBy("card_id").orderBy("_tile").rangeBetween(-w.tiles, -1)
            prior += [F.sum(c).over(frame).alias(f"_{c}_{w.name}") for c in ("n", "s", "ss")]
    day = Window.partitionBy("card_id").orderBy("_tile").rangeBetween(-W24H.tiles, -1)
    prior.append(F.flatten(F.collect_list("countries").over(day)).alias("_countries_24h"))
    month = Window.partitionBy("card_id").orderBy("_tile").rangeBetween(-LOOKBACK.tiles, -1)
    prior.append(F.flatten(F.collect_list("amounts").over(month)).alias("_amounts_30d"))
    tiles = tiles.select("card_id", "_tile", *prior)

    cols: list[Column] = []
    h = {
        "n": F.count(F.lit(1)).over(hour_so_far),
        "s": F.coalesce(F.sum(amount).over(hour_so_far), F.lit(0.0)),
        "ss": F.coalesce(F.sum(amount * amount).over(hour_so_far), F.lit(0.0)),
    }
    for w in CARD_WINDOWS:
        if w.tiled:
            n = h["n"] + F.coalesce(F.col(f"_n_{w.name}"), F.lit(0))
            s = h["s"] + F.coalesce(F.col(f"_s_{w.name}"), F.lit(0.0))
            if w is LOOKBACK:
                ss = h["ss"] + F.coalesce(F.col(f"_ss_{w.name}"), F.lit(0.0))
                zscore = _zscore(amount, n, s, ss)
                earlier = F.concat(
                    F.collect_list(amount).over(hour_so_far),
                    F.coalesce(F.col("_amounts_30d"), F.array().cast("array<double>")),
                )
                iqr_score = _iqr_score(amount, F.array_sort(earlier))
        else:
            frame = by_card.rangeBetween(-w.ms, -1)
            n = F.count(F.lit(1)).over(frame)
            s = F.coalesce(F.sum(amount).over(frame), F.lit(0.0))
        cols += [
            n.cast("long").alias(f"card_tx_count_{w.name}"),
            s.cast("double").alias(f"card_amount_sum_{w.name}"),
            F.when(n > 0, s / n).alias(f"card_amount_mean_{w.name}"),
        ]

    countries = F.array_union(
        F.collect_set("country").over(hour_so_far), F.coalesce(F.col("_countries_24h"), F.array().cast("array<string>"))
    )
    prev = F.max(F.struct("_ts", "transaction_id", "_lat", "_lon")).over(by_card.rangeBetween(UNBOUNDED, -1))
    since_s = (F.col("_ts") - prev["_ts"]) / 1000
    distance = haversine_column(prev["_lat"], prev["_lon"], F.col("_lat"), F.col("_lon"))

    def last_use(col: str) -> Column:
        return F.max("_ts").over(Window.partitionBy("card_id", col).orderBy("_ts").rangeBetween(UNBOUNDED, -1))

    def is_new(col: str) -> Column:
        used = last_use(col)
        return F.when(F.col(col).isNotNull(), used.isNull() | (used < F.col("_ts") - LOOKBACK.ms))

    cols += [
        since_s.cast("double").alias("card_seconds_since_last"),
        F.size(F.collect_set("merchant_id").over(by_card.rangeBetween(-3_600_000, -1)))
        .cast("long")
        .alias("card_distinct_merchants_1h"),
        F.size(F.array_distinct(countries)).cast("long").alias("card_distinct_countries_24h"),
        zscore.alias("card_amount_zscore_30d"),
        iqr_score.alias("card_amount_iqr_score_30d"),
        distance.alias("card_prev_distance_km"),
        speed_column(distance, since_s).alias("card_prev_speed_kmh"),
        is_new("device_id").alias("card_new_device"),
        is_new("country").alias("card_new_country"),
    ]
    return base.join(tiles, ["card_id", "_tile"], "left").select("transaction_id", *cols)


def fraud_label_events(tx: DataFrame) -> DataFrame:
    """Fraud labels as events at their reported time, with the transaction's terminal and merchant."""
    return tx.where((F.col("label") == "fraud") & F.col("label_reported_at").isNotNull()).select(
        "terminal_id", "merchant_id", F.unix_millis("label_reported_at").alias("_ts")
    )


def place_features(base: DataFrame, labels: DataFrame, entity: str) -> DataFrame:
    """Transactions and fraud labels known at each transaction's time at its terminal or merchant."""
    key = f"{entity}_id"
    events = base.where(F.col(key).isNotNull()).select(
        F.col(key).alias("_key"), "_ts", "transaction_id", F.lit(1).alias("_tx"), F.lit(0).alias("_fraud")
    )
    events = events.unionByName(
        labels.where(F.col(key).isNotNull()).select(
            F.col(key).alias("_key"),
            "_ts",
            F.lit(None).cast("string").alias("transaction_id"),
            F.lit(0).alias("_tx"),
            F.lit(1).alias("_fraud"),
        )
    ).withColumn("_tile", F.floor(F.col("_ts") / TILE_MS))
    tiles = events.groupBy("_key", "_tile").agg(F.sum("_tx").alias("_tx"), F.sum("_fraud").alias("_fraud"))
    prior = []
    for w in PLACE_WINDOWS:
        frame = Window.partitionBy("_key").orderBy("_tile").rangeBetween(-w.tiles, -1)
        prior += [F.sum(c).over(frame).alias(f"{c}_{w.name}") for c in ("_tx", "_fraud")]
    tiles = tiles.select("_key", "_tile", *prior)
    hour_so_far = Window.partitionBy("_key", "_tile").orderBy("_ts").rangeBetween(UNBOUNDED, -1)
    events = events.select(
        "*", *[F.coalesce(F.sum(c).over(hour_so_far), F.lit(0)).alias(f"{c}_now") for c in ("_tx", "_fraud")]
    )
    cols = []
    for w in PLACE_WINDOWS:
        n = F.col("_tx_now") + F.coalesce(F.col(f"_tx_{w.name}"), F.lit(0))
        f = F.col("_fraud_now") + F.coalesce(F.col(f"_fraud_{w.name}"), F.lit(0))
        cols += [
            n.cast("long").alias(f"{entity}_tx_count_{w.name}"),
            f.cast("long").alias(f"{entity}_fraud_count_{w.name}"),
            F.when(n > 0, f / n).alias(f"{entity}_fraud_rate_{w.name}"),
        ]
    return events.where(F.col("_tx") == 1).join(tiles, ["_key", "_tile"], "left").select("transaction_id", *cols)


def transaction_features(tx: DataFrame, labels: DataFrame | None = None) -> DataFrame:
    """Every transaction feature for each row of ``tx`` (enriched silver transactions, history included).

    ``labels`` are the fraud-label events (``fraud_label_events``) the place features may count; by default
    those of ``tx`` itself. Returns ``KEYS`` plus ``TRANSACTION_FEATURE_NAMES``.
    """
    base = _base(tx)
    labels = fraud_label_events(tx) if labels is None else labels
    out = base.select(*KEYS, *context_columns(F.col("_ts"), F.col("_lon"))).join(card_features(base), "transaction_id")
    for entity in PLACES:
        out = out.join(place_features(base, labels, entity), "transaction_id", "left")
    return out.select(*KEYS, *TRANSACTION_FEATURE_NAMES)


def market_features(ticks: DataFrame) -> DataFrame:
    """Market features of every tick (silver market ticks, one per symbol and time)."""
    w = Window.partitionBy("symbol").orderBy("event_time")
    r = F.log(F.col("price") / F.lag("price").over(w))
    df = ticks.select("symbol", "event_time", "event_date", "price", r.alias("tick_log_return"))
    cols = []
    for n in TICK_WINDOWS:
        frame = w.rowsBetween(-(n - 1), 0)
        vol = F.stddev_samp("tick_log_return").over(frame)
        cols.append(F.when(F.count("tick_log_return").over(frame) == n, vol).alias(f"tick_volatility_{n}"))
    for n in TICK_WINDOWS:
        prev = w.rowsBetween(-n, -1)
        sd = F.stddev_samp("tick_log_return").over(prev)
        z = (F.col("tick_log_return") - F.avg("tick_log_return").over(prev)) / sd
        full = (F.count("tick_log_return").over(prev) == n) & (sd > 0)
        cols.append(F.when(full, z).alias(f"tick_return_zscore_{n}"))
    cols += [F.log(F.col("price") / F.lag("price", n).over(w)).alias(f"tick_momentum_{n}") for n in TICK_WINDOWS]
    return df.select("*", *cols).select("symbol", "event_time", "event_date", "price", *MARKET_FEATURE_NAMES)
