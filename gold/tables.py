"""Gold tables in the catalog: daily aggregates for BI, recomputed per event date from silver."""

from __future__ import annotations

import pyarrow as pa

from lakehouse.tables import TS, TableSpec, register

L, D, S = pa.int64(), pa.float64(), pa.string()
MEASURES = [("txn_count", L), ("amount_sum", D), ("fraud_count", L), ("fraud_amount", D), ("labelled_count", L)]
DECISIONS = [("decline_count", L), ("review_count", L), ("block_count", L)]


def _daily(name: str, keys: list[tuple[str, pa.DataType]], extra: list, description: str) -> TableSpec:
    schema = pa.schema([("event_date", pa.date32()), *keys, *extra, ("computed_at", TS)])
    return register(TableSpec("gold", name, schema, ("event_date",), description))


CARD_DAILY = _daily(
    "card_daily",
    [("card_id", S)],
    [*MEASURES, ("amount_max", D), ("distinct_merchants", L), ("distinct_countries", L), *DECISIONS],
    "Per card and day: counts, amounts, fraud (by label), merchants and countries, scoring decisions.",
)
MERCHANT_DAILY = _daily(
    "merchant_daily",
    [("merchant_id", S), ("merchant_category_code", S)],
    [*MEASURES, ("distinct_cards", L), *DECISIONS],
    "Per merchant and day: counts, amounts, fraud (by label), distinct cards, scoring decisions.",
)
MCC_DAILY = _daily(
    "mcc_daily",
    [("merchant_category_code", S), ("mcc_category", S)],
    [*MEASURES, ("avg_amount", D), ("fraud_rate", D), *DECISIONS],
    "Per merchant category and day: counts, amounts, fraud amount and rate, scoring decisions.",
)
FRAUD_SUMMARY_DAILY = _daily(
    "fraud_summary_daily",
    [],
    [
        ("total_count", L),
        ("total_amount", D),
        ("fraud_count", L),
        ("fraud_amount", D),
        ("labelled_count", L),
        ("fraud_rate", D),
        ("active_cards", L),
        ("flagged_count", L),
        ("blocked_count", L),
        ("false_positive_rate", D),
    ],
    "The BI dashboard's daily line: totals, fraud, flagged/blocked and the false-positive rate.",
)
MARKET_RISK_DAILY = _daily(
    "market_risk_daily",
    [("symbol", S)],
    [
        ("open", D),
        ("high", D),
        ("low", D),
        ("close", D),
        ("daily_return", D),
        ("tick_count", L),
        ("volume", D),
        ("volatility", D),
        ("realised_volatility", D),
        ("max_drawdown", D),
    ],
    "Per symbol and day: OHLC, return, volume, tick-return volatility and maximum drawdown.",
)

MODEL_COMPARISON = _daily(
    "model_comparison",
    [("model_name", S), ("model_version", S), ("role", S)],
    [
        ("transactions", L),
        ("approve_count", L),
        ("review_count", L),
        ("block_count", L),
        ("labelled_count", L),
        ("fraud_count", L),
        ("true_positives", L),
        ("precision", D),
        ("recall", D),
        ("review_rate", D),
        ("block_rate", D),
    ],
    "Per day and model version, acting (its decisions carried out) or shadow (recorded only): volumes, decision "
    "rates, and once labels arrive precision and recall of its review/block flags: the promotion evidence.",
)

DECISIONS_TABLE = register(
    TableSpec(
        "gold",
        "decisions",
        pa.schema(
            [
                ("transaction_id", S),
                ("card_id", S),
                ("event_time", TS),
                ("decision", S),
                ("score", D),
                ("driver", S),
                ("rules_score", D),
                ("statistical_score", D),
                ("ml_score", D),
                ("ml_probability", D),
                ("anomaly_score", D),
                ("anomaly_raw", D),
                ("triggered_rules", pa.list_(S)),
                ("reasons", pa.list_(S)),
                ("route", S),
                ("model_name", S),
                ("model_version", S),
                ("anomaly_model_version", S),
                ("shadow_model_version", S),
                ("shadow_probability", D),
                ("shadow_decision", S),
                ("rules_version", S),
                ("features", S),
                ("scoring_ms", D),
                ("log_time", TS),
                ("decided_at", TS),
                ("latency_ms", D),
                ("event_date", pa.date32()),
            ]
        ),
        ("event_date",),
        "One decision per transaction, made in the stream: final score 0-100, approve/review/block, the tier "
        "scores, rules triggered, reason codes, the model versions (acting and shadow), the feature values used, "
        "and the latency from the event log to the decision.",
    )
)

MARKET_ANOMALIES_TABLE = register(
    TableSpec(
        "gold",
        "market_anomalies",
        pa.schema(
            [
                ("symbol", S),
                ("event_time", TS),
                ("price", D),
                ("score", D),
                ("threshold", D),
                ("reasons", pa.list_(S)),
                ("model_name", S),
                ("model_version", S),
                ("features", S),
                ("decided_at", TS),
                ("event_date", pa.date32()),
            ]
        ),
        ("event_date",),
        "Market ticks the market Isolation Forest found anomalous (score above its registered alert threshold), "
        "scored in the stream: the score, the features that deviated most from the training ticks (reasons), "
        "the model version and the feature values. Each row raised one risk-alerts event.",
    )
)
