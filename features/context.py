"""Features of the transaction itself (no history): place, local time, channel mismatch, reference risk.

Each has a Python form (one request, for the online engine) and a Spark form (columns, for the offline
engine); both follow the same arithmetic so that they agree exactly.
"""

from __future__ import annotations

import math

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.feature_definitions import (
    CARD_PRESENT_CHANNELS,
    COUNTRY_RISK,
    EARTH_RADIUS_KM,
    MCC_RISK,
    MIN_SPEED_INTERVAL_S,
    NIGHT_HOURS,
    UNKNOWN_RISK,
)

DAY_S = 86_400
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def location(tx: dict) -> tuple[float | None, float | None]:
    """Where the transaction happened: its own coordinates, else its terminal's, else its merchant's."""
    for lat, lon in (("lat", "lon"), ("terminal_lat", "terminal_lon"), ("merchant_lat", "merchant_lon")):
        if tx.get(lat) is not None and tx.get(lon) is not None:
            return tx[lat], tx[lon]
    return None, None


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def speed_kmh(distance_km: float, seconds: float) -> float:
    return distance_km / (max(seconds, MIN_SPEED_INTERVAL_S) / 3600)


def _local_seconds(ts_ms: int, lon: float | None) -> float:
    return ts_ms / 1000 + (lon or 0.0) * 240  # 360° = 24 h: a degree of longitude is 240 s of solar time


def context_values(tx: dict, ts_ms: int) -> dict:
    """The context features of one enriched transaction (a dict with ``TRANSACTION_INPUTS``)."""
    _, lon = location(tx)
    local = _local_seconds(ts_ms, lon)
    hour = math.floor((local % DAY_S) / 3600)
    weekday = (math.floor(local / DAY_S) + EPOCH_WEEKDAY) % 7
    channel, present = tx.get("channel"), tx.get("card_present")
    mismatch = None if channel is None or present is None else bool(present) != (channel in CARD_PRESENT_CHANNELS)
    amount = tx.get("amount")
    return {
        "card_present_channel_mismatch": mismatch,
        "is_night": NIGHT_HOURS[0] <= hour < NIGHT_HOURS[1],
        "is_weekend": weekday >= 5,
        "amount_log": None if amount is None else math.log1p(abs(amount)),
        "mcc_risk_score": MCC_RISK.get(tx.get("mcc_risk_tier"), UNKNOWN_RISK),
        "country_risk_score": COUNTRY_RISK.get(tx.get("country_risk_tier"), UNKNOWN_RISK),
    }


# ---- Spark forms -------------------------------------------------------------------------------------------


def location_columns() -> tuple[Column, Column]:
    """``(loc_lat, loc_lon)`` as in ``location``."""
    own = F.col("lat").isNotNull() & F.col("lon").isNotNull()
    term = F.col("terminal_lat").isNotNull() & F.col("terminal_lon").isNotNull()
    merch = F.col("merchant_lat").isNotNull() & F.col("merchant_lon").isNotNull()

    def pick(a: str, b: str, c: str) -> Column:
        return F.when(own, F.col(a)).when(term, F.col(b)).when(merch, F.col(c))

    return pick("lat", "terminal_lat", "merchant_lat"), pick("lon", "terminal_lon", "merchant_lon")


def haversine_column(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    p1, p2 = F.radians(lat1), F.radians(lat2)
    a = F.pow(F.sin((p2 - p1) / 2), 2) + F.cos(p1) * F.cos(p2) * F.pow(F.sin(F.radians(lon2 - lon1) / 2), 2)
    root = F.sqrt(a)
    return 2 * EARTH_RADIUS_KM * F.asin(F.when(root > 1.0, F.lit(1.0)).otherwise(root))  # least() skips nulls


def speed_column(distance: Column, seconds: Column) -> Column:
    return distance / (F.greatest(seconds, F.lit(float(MIN_SPEED_INTERVAL_S))) / 3600)


def _risk(col: str, scores: dict[str, float]) -> Column:
    expr = F.lit(UNKNOWN_RISK)
    for tier, score in scores.items():
        expr = F.when(F.col(col) == tier, F.lit(score)).otherwise(expr)
    return expr


def context_columns(ts_ms: Column, loc_lon: Column) -> list[Column]:
    """The context features as columns (``context_values`` for every row)."""
    local = ts_ms / 1000 + F.coalesce(loc_lon, F.lit(0.0)) * 240
    hour = F.floor(F.pmod(local, F.lit(float(DAY_S))) / 3600)
    weekday = F.pmod(F.floor(local / DAY_S) + EPOCH_WEEKDAY, F.lit(7))
    present_channel = F.col("channel").isin(*CARD_PRESENT_CHANNELS)
    return [
        (F.col("card_present") != present_channel).alias("card_present_channel_mismatch"),
        ((hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])).alias("is_night"),
        (weekday >= 5).alias("is_weekend"),
        F.log1p(F.abs("amount")).alias("amount_log"),
        _risk("mcc_risk_tier", MCC_RISK).alias("mcc_risk_score"),
        _risk("country_risk_tier", COUNTRY_RISK).alias("country_risk_score"),
    ]
