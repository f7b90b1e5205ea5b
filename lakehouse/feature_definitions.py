"""Every feature, defined once: its name, entity, window and meaning (in the shared core: the catalog types the
feature tables from it, and the feature, training and serving stages all read it).

Both engines read this registry: ``features.offline`` (Spark window functions over the Delta history, for
training sets) and ``features.online`` (incremental state per entity, for the stream and the API). A test
checks that each engine produces exactly these columns and that their values agree (feature parity).

Time semantics, shared by both engines (all times in UTC milliseconds):
- a feature of a transaction at time ``t`` sees only *earlier* events of its entity (``time < t``); the
  transaction itself and events in the same millisecond are not part of its own history;
- an *exact* window ``w`` covers ``t - w <= time < t``;
- a *tiled* window of N hours covers the N whole hours before ``t``'s hour plus ``t``'s hour so far
  (``floor_hour(t) - N h <= time < t``): between N and N+1 hours. Tiles keep the online state bounded;
- a fraud label counts from its ``reported_at`` (when it became known), never from the transaction time.
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURE_VERSION = "2"  # 2: card_*_15m, card_amount_iqr_score_30d
TILE_MS = 3_600_000


@dataclass(frozen=True)
class TimeWindow:
    name: str
    seconds: int

    @property
    def ms(self) -> int:
        return self.seconds * 1000

    @property
    def tiled(self) -> bool:
        """Longer than an hour: aggregated from hourly tiles (see the module docstring)."""
        return self.seconds > 3600

    @property
    def tiles(self) -> int:
        return self.seconds // 3600


W1M, W5M, W15M, W1H = TimeWindow("1m", 60), TimeWindow("5m", 300), TimeWindow("15m", 900), TimeWindow("1h", 3600)
W24H, W7D, W30D = TimeWindow("24h", 86_400), TimeWindow("7d", 7 * 86_400), TimeWindow("30d", 30 * 86_400)
W1D = TimeWindow("1d", 86_400)
CARD_WINDOWS = (W1M, W5M, W15M, W1H, W24H, W7D, W30D)
PLACE_WINDOWS = (W1D, W7D, W30D)
EXACT_HISTORY = W1H  # the longest exact window: raw events are kept online at least this long
LOOKBACK = W30D  # the longest window: history a training set reads before its first day

# ticks, not time: market windows count the previous ticks of the symbol
TICK_WINDOWS = (10, 50)

# reference risk scores of the reference tables' tiers (unknown codes: UNKNOWN_RISK)
MCC_RISK = {"low": 0.1, "medium": 0.4, "high": 0.8}
COUNTRY_RISK = {"standard": 0.1, "high": 0.8}
UNKNOWN_RISK = 0.5
NIGHT_HOURS = (0, 6)  # local solar hour in [0, 6)
CARD_PRESENT_CHANNELS = ("POS", "ATM")
MIN_SPEED_INTERVAL_S = 60  # implied speed divides by at least a minute (two swipes a second apart are not Mach 3)
EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class Feature:
    name: str
    entity: str  # card | terminal | merchant | transaction | symbol
    dtype: str  # double | long | boolean
    description: str
    window: str | None = None


def _card() -> list[Feature]:
    out = []
    for w in CARD_WINDOWS:
        span = f"{w.name} {'(hourly tiles)' if w.tiled else '(exact)'}"
        out += [
            Feature(f"card_tx_count_{w.name}", "card", "long", f"earlier transactions of the card in {span}", w.name),
            Feature(f"card_amount_sum_{w.name}", "card", "double", f"their amount sum ({span})", w.name),
            Feature(
                f"card_amount_mean_{w.name}", "card", "double", f"their mean amount, null if none ({span})", w.name
            ),
        ]
    return [
        *out,
        Feature(
            "card_seconds_since_last",
            "card",
            "double",
            "seconds since the card's previous transaction (null: first ever)",
        ),
        Feature(
            "card_distinct_merchants_1h",
            "card",
            "long",
            "distinct merchants of the card's transactions in the last hour",
            "1h",
        ),
        Feature(
            "card_distinct_countries_24h",
            "card",
            "long",
            "distinct countries of the card's transactions, 24h tiled",
            "24h",
        ),
        Feature(
            "card_amount_zscore_30d",
            "card",
            "double",
            "(amount - mean) / sample std of the card's earlier amounts over 30d tiled; null under 2 or std 0",
            "30d",
        ),
        Feature(
            "card_amount_iqr_score_30d",
            "card",
            "double",
            "(amount - median) / IQR of the same earlier amounts (quartiles by linear interpolation); null under 4 "
            "or IQR 0",
            "30d",
        ),
        Feature(
            "card_prev_distance_km", "card", "double", "great-circle distance from the previous transaction's place"
        ),
        Feature(
            "card_prev_speed_kmh",
            "card",
            "double",
            f"implied travel speed from the previous transaction (interval floored at {MIN_SPEED_INTERVAL_S} s)",
        ),
        Feature(
            "card_new_device", "card", "boolean", "device not used by the card in the last 30d (null: no device)", "30d"
        ),
        Feature("card_new_country", "card", "boolean", "country not used by the card in the last 30d", "30d"),
    ]


def _place(entity: str) -> list[Feature]:
    out = []
    for w in PLACE_WINDOWS:
        out += [
            Feature(
                f"{entity}_tx_count_{w.name}",
                entity,
                "long",
                f"earlier transactions at the {entity} ({w.name} tiled)",
                w.name,
            ),
            Feature(
                f"{entity}_fraud_count_{w.name}",
                entity,
                "long",
                f"fraud labels of the {entity}'s transactions reported in the window ({w.name} tiled)",
                w.name,
            ),
            Feature(
                f"{entity}_fraud_rate_{w.name}",
                entity,
                "double",
                f"{entity}_fraud_count / {entity}_tx_count ({w.name}); null without transactions",
                w.name,
            ),
        ]
    return out


CONTEXT = [
    Feature(
        "card_present_channel_mismatch",
        "transaction",
        "boolean",
        f"card_present disagrees with the channel ({'/'.join(CARD_PRESENT_CHANNELS)} = present)",
    ),
    Feature(
        "is_night", "transaction", "boolean", "local solar hour (UTC + longitude/15) in [0, 6); UTC without a place"
    ),
    Feature("is_weekend", "transaction", "boolean", "local solar day is a Saturday or Sunday"),
    Feature("amount_log", "transaction", "double", "ln(1 + |amount|)"),
    Feature("mcc_risk_score", "transaction", "double", "reference risk of the merchant category (tier → score)"),
    Feature(
        "country_risk_score", "transaction", "double", "reference risk of the transaction's country (tier → score)"
    ),
]

TRANSACTION_FEATURES: list[Feature] = [*_card(), *_place("terminal"), *_place("merchant"), *CONTEXT]

MARKET_FEATURES: list[Feature] = [
    Feature("tick_log_return", "symbol", "double", "ln(price / previous tick's price); null on the first tick"),
    *[
        Feature(
            f"tick_volatility_{n}",
            "symbol",
            "double",
            f"sample std of the last {n} log returns (this one included)",
            f"{n} ticks",
        )
        for n in TICK_WINDOWS
    ],
    *[
        Feature(
            f"tick_return_zscore_{n}",
            "symbol",
            "double",
            f"this log return against the mean and sample std of the {n} previous ones",
            f"{n} ticks",
        )
        for n in TICK_WINDOWS
    ],
    *[
        Feature(f"tick_momentum_{n}", "symbol", "double", f"ln(price / price {n} ticks earlier)", f"{n} ticks")
        for n in TICK_WINDOWS
    ],
]

TRANSACTION_FEATURE_NAMES = [f.name for f in TRANSACTION_FEATURES]
MARKET_FEATURE_NAMES = [f.name for f in MARKET_FEATURES]
# what an online computation needs from its request besides the online state
TRANSACTION_INPUTS = (
    "transaction_id",
    "event_time",
    "card_id",
    "merchant_id",
    "terminal_id",
    "amount",
    "country",
    "device_id",
    "channel",
    "card_present",
    "lat",
    "lon",
    "terminal_lat",
    "terminal_lon",
    "merchant_lat",
    "merchant_lon",
    "mcc_risk_tier",
    "country_risk_tier",
)


def markdown() -> str:
    """The feature catalogue as Markdown tables (docs/features.md)."""
    lines = []
    for title, feats in (("Transaction features", TRANSACTION_FEATURES), ("Market features", MARKET_FEATURES)):
        lines += [f"### {title}", "", "| feature | entity | type | window | meaning |", "|---|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.entity} | {f.dtype} | {f.window or ''} | {f.description} |" for f in feats]
        lines.append("")
    return "\n".join(lines)
