"""The catalog: every Delta table of the lakehouse, in one place: its schema, partitioning, description and
properties, bronze to gold.

Typed columns come from their one source of truth: the event contracts (``lakehouse.contracts``) for bronze and
silver, the feature definitions (``lakehouse.feature_definitions``) for the feature tables. ``CATALOG`` lists every
table by its full name; ``docs/tables.md`` is generated from it (``python -m lakehouse.catalog``). The machinery
that creates and conforms tables is ``lakehouse.tables``.
"""

from __future__ import annotations

import pyarrow as pa

from lakehouse.contracts import TIME_FIELDS, spark_ddl
from lakehouse.feature_definitions import MARKET_FEATURES, TRANSACTION_FEATURES, Feature
from lakehouse.tables import TS, TableSpec


def _fields(*pairs: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in pairs])


# --- bronze: the event log as received -------------------------------------------------------------------
_SOURCE = (("source_topic", pa.string()), ("source_partition", pa.int32()), ("source_offset", pa.int64()))

BRONZE_EVENT_SCHEMA = _fields(
    *_SOURCE,
    ("key", pa.string()),
    ("payload", pa.string()),
    ("event_time", TS),
    ("log_time", TS),
    ("ingested_at", TS),
    ("event_date", pa.date32()),
)
BRONZE_TRANSACTIONS, BRONZE_LABELS, BRONZE_MARKET_TICKS = (
    TableSpec("bronze", name, BRONZE_EVENT_SCHEMA, ("event_date",),
              f"Every valid {what} event as received from the event log (append-only).")
    for name, what in (("transactions", "card transactions"), ("labels", "fraud labels"), ("market_ticks", "ticks"))
)  # fmt: skip
DEAD_LETTER = TableSpec(
    "bronze",
    "dead_letter",
    _fields(
        *_SOURCE,
        ("key", pa.string()),
        ("payload", pa.binary()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("log_time", TS),
        ("failed_at", TS),
        ("log_date", pa.date32()),
    ),
    ("log_date",),
    "Every event that failed parsing or its contract: raw bytes, reason, source offset, time.",
)


# --- silver: typed, deduplicated, enriched, labelled ------------------------------------------------------
_CONTRACT_TYPES = {"string": pa.string(), "bigint": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}
LINEAGE = [("source_partition", pa.int32()), ("source_offset", pa.int64()), ("log_time", TS)]


def contract_fields(kind: str, contract: dict | None = None) -> list[tuple[str, pa.DataType]]:
    """Arrow fields of an event kind, as ``silver.transforms.parse_events`` produces them."""
    fields = []
    for col in spark_ddl(kind, contract).split(", "):
        name, typ = col.split(" ")
        name = name.strip("`")
        fields.append((name, TS if name == TIME_FIELDS[kind] else _CONTRACT_TYPES[typ]))
    return fields


ENRICHMENT = [
    ("mcc_category", pa.string()),
    ("mcc_risk_tier", pa.string()),
    ("country_name", pa.string()),
    ("region", pa.string()),
    ("country_risk_tier", pa.string()),
    ("merchant_country", pa.string()),
    ("merchant_lat", pa.float64()),
    ("merchant_lon", pa.float64()),
    ("terminal_lat", pa.float64()),
    ("terminal_lon", pa.float64()),
    ("device_type", pa.string()),
    ("merchant_known", pa.bool_()),
    ("device_known", pa.bool_()),
    ("terminal_mismatch", pa.bool_()),
]
LABELS = [
    ("label", pa.string()),
    ("label_source", pa.string()),
    ("label_scenario", pa.string()),
    ("label_reported_at", TS),
    ("labeled_at", TS),
]

TRANSACTIONS = TableSpec(
    "silver",
    "transactions",
    pa.schema(
        [
            *contract_fields("transaction"),
            *ENRICHMENT,
            *LABELS,
            *LINEAGE,
            ("processed_at", TS),
            ("event_date", pa.date32()),
        ]
    ),
    ("event_date",),
    "Typed, deduplicated (transaction_id, within the watermark), enriched transactions; labels MERGEd in.",
    change_data_feed=True,
)
LABELS_TABLE = TableSpec(
    "silver",
    "labels",
    pa.schema(
        [
            ("transaction_id", pa.string()),
            ("card_id", pa.string()),
            *LABELS,
            ("label_date", pa.date32()),
        ]
    ),
    ("label_date",),
    "The latest label of every labelled transaction (upserted), including labels whose transaction is unseen.",
)
MARKET_TICKS = TableSpec(
    "silver",
    "market_ticks",
    pa.schema([*contract_fields("market_tick"), *LINEAGE, ("processed_at", TS), ("event_date", pa.date32())]),
    ("event_date",),
    "Typed market ticks, deduplicated on (symbol, event_time) within the watermark.",
)
LATE_EVENTS = TableSpec(
    "silver",
    "late_events",
    pa.schema(
        [
            ("kind", pa.string()),
            ("event_id", pa.string()),
            ("event_time", TS),
            ("watermark", TS),
            ("lateness_s", pa.int64()),
            ("reason", pa.string()),
            *LINEAGE,
            ("payload", pa.string()),
            ("event_date", pa.date32()),
        ]
    ),
    ("event_date",),
    "Events older than the watermark (beyond the allowed lateness): kept with the reason, not in silver.",
)
STREAM_BATCHES = TableSpec(
    "silver",
    "stream_batches",
    pa.schema(
        [
            ("query", pa.string()),
            ("query_id", pa.string()),
            ("batch_id", pa.int64()),
            ("rows_in", pa.int64()),
            ("inserted", pa.int64()),
            ("duplicates_in_batch", pa.int64()),
            ("duplicates_seen_before", pa.int64()),
            ("late", pa.int64()),
            ("quarantined", pa.int64()),
            ("labels_in", pa.int64()),
            ("labels_applied", pa.int64()),
            ("watermark", TS),
            ("max_event_time", TS),
            ("processed_at", TS),
            ("duration_s", pa.float64()),
            ("processed_date", pa.date32()),
        ]
    ),
    ("processed_date",),
    "One row per silver micro-batch: what came in and where it went (duplicates are counted here).",
)


def _reference(name: str, key: str, *columns: tuple[str, pa.DataType]) -> TableSpec:
    return TableSpec(
        "silver",
        f"ref_{name}",
        pa.schema([*columns, ("updated_at", TS)]),
        description=f"Reference data: {name} (seed conf/reference/{name}.csv), keyed by {key}.",
        key=key,
    )


REFERENCE_TABLES = {
    spec.name.removeprefix("ref_"): spec
    for spec in (
        _reference(
            "mcc",
            "merchant_category_code",
            ("merchant_category_code", pa.string()),
            ("mcc_category", pa.string()),
            ("mcc_risk_tier", pa.string()),
            ("card_not_present", pa.bool_()),
        ),
        _reference(
            "countries",
            "country",
            ("country", pa.string()),
            ("country_name", pa.string()),
            ("region", pa.string()),
            ("country_currency", pa.string()),
            ("country_risk_tier", pa.string()),
        ),
        _reference(
            "merchants",
            "merchant_id",
            ("merchant_id", pa.string()),
            ("merchant_country", pa.string()),
            ("merchant_lat", pa.float64()),
            ("merchant_lon", pa.float64()),
        ),
        _reference(
            "terminals",
            "terminal_id",
            ("terminal_id", pa.string()),
            ("terminal_merchant_id", pa.string()),
            ("terminal_lat", pa.float64()),
            ("terminal_lon", pa.float64()),
        ),
        _reference(
            "devices",
            "device_id",
            ("device_id", pa.string()),
            ("device_customer_id", pa.string()),
            ("device_type", pa.string()),
        ),
    )
}


# --- quality -------------------------------------------------------------------------------------------
EXPECTATION_RESULTS = TableSpec(
    "quality",
    "expectation_results",
    pa.schema(
        [
            pa.field("run_at", TS),
            pa.field("suite", pa.string()),
            pa.field("table_name", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("batch_id", pa.int64()),
            pa.field("check_name", pa.string()),
            pa.field("column_name", pa.string()),
            pa.field("failed_count", pa.int64()),
            pa.field("total_count", pa.int64()),
            pa.field("success", pa.bool_()),
            pa.field("run_date", pa.date32()),
        ]
    ),
    ("run_date",),
    "One row per expectation per checked micro-batch: failed and total counts, success.",
)

QUARANTINE = TableSpec(
    "silver",
    "quarantine",
    pa.schema(
        [
            pa.field("suite", pa.string()),
            pa.field("table_name", pa.string()),
            pa.field("failed_checks", pa.string()),
            pa.field("row_json", pa.string()),
            pa.field("quarantined_at", TS),
            pa.field("quarantine_date", pa.date32()),
        ]
    ),
    ("quarantine_date",),
    "Rows that failed a row-level expectation (or a batch-level one), as JSON, with the failed checks.",
)


# --- features ------------------------------------------------------------------------------------------
_FEATURE_TYPES = {"long": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}
KEY_FIELDS = [
    ("transaction_id", pa.string()),
    ("card_id", pa.string()),
    ("event_time", TS),
]


def feature_fields(features: list[Feature]) -> list[tuple[str, pa.DataType]]:
    return [(f.name, _FEATURE_TYPES[f.dtype]) for f in features]


TRANSACTION_FEATURES_TABLE = TableSpec(
    "features",
    "transactions",
    pa.schema(
        [
            *KEY_FIELDS,
            *feature_fields(TRANSACTION_FEATURES),
            ("feature_version", pa.string()),
            ("computed_at", TS),
            ("event_date", pa.date32()),
        ]
    ),
    ("event_date",),
    "Every silver transaction's features as the stream computed them when it arrived (what scoring saw).",
)
MARKET_FEATURES_TABLE = TableSpec(
    "features",
    "market_ticks",
    pa.schema(
        [
            ("symbol", pa.string()),
            ("event_time", TS),
            ("price", pa.float64()),
            *feature_fields(MARKET_FEATURES),
            ("feature_version", pa.string()),
            ("computed_at", TS),
            ("event_date", pa.date32()),
        ]
    ),
    ("event_date",),
    "Every silver market tick's features as the stream computed them.",
)


def training_set(name: str = "training_set") -> TableSpec:
    """A training set table (``build-training-set --table NAME``)."""
    return TableSpec(
        "features",
        name,
        pa.schema(
            [
                *KEY_FIELDS,
                *feature_fields(TRANSACTION_FEATURES),
                ("label", pa.int32()),
                ("label_known", pa.bool_()),
                ("label_reported_at", TS),
                ("label_scenario", pa.string()),
                ("label_cutoff", TS),
                ("amount", pa.float64()),
                ("feature_version", pa.string()),
                ("built_at", TS),
                ("event_date", pa.date32()),
            ]
        ),
        ("event_date",),
        "Point-in-time feature vectors (each as of its transaction's time) with the labels known by the "
        "cut-off (label 1 = fraud reported by label_cutoff, else 0).",
    )


TRAINING_SET = training_set()
# what `make train` evaluates on (the test period), rebuilt by each run and by `make evaluate`
EVALUATION_SET = training_set("evaluation_set")


# --- gold: daily aggregates for BI, decisions ----------------------------------------------------------
L, D, S = pa.int64(), pa.float64(), pa.string()
MEASURES = [("txn_count", L), ("amount_sum", D), ("fraud_count", L), ("fraud_amount", D), ("labelled_count", L)]
DECISION_COUNTS = [("decline_count", L), ("review_count", L), ("block_count", L)]


def _daily(name: str, keys: list[tuple[str, pa.DataType]], extra: list, description: str) -> TableSpec:
    schema = pa.schema([("event_date", pa.date32()), *keys, *extra, ("computed_at", TS)])
    return TableSpec("gold", name, schema, ("event_date",), description)


CARD_DAILY = _daily(
    "card_daily",
    [("card_id", S)],
    [*MEASURES, ("amount_max", D), ("distinct_merchants", L), ("distinct_countries", L), *DECISION_COUNTS],
    "Per card and day: counts, amounts, fraud (by label), merchants and countries, scoring decisions.",
)
MERCHANT_DAILY = _daily(
    "merchant_daily",
    [("merchant_id", S), ("merchant_category_code", S)],
    [*MEASURES, ("distinct_cards", L), *DECISION_COUNTS],
    "Per merchant and day: counts, amounts, fraud (by label), distinct cards, scoring decisions.",
)
MCC_DAILY = _daily(
    "mcc_daily",
    [("merchant_category_code", S), ("mcc_category", S)],
    [*MEASURES, ("avg_amount", D), ("fraud_rate", D), *DECISION_COUNTS],
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

DECISIONS_TABLE = TableSpec(
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

MARKET_ANOMALIES_TABLE = TableSpec(
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


CATALOG: dict[str, TableSpec] = {
    spec.full_name: spec
    for spec in (
        BRONZE_TRANSACTIONS, BRONZE_LABELS, BRONZE_MARKET_TICKS, DEAD_LETTER,
        TRANSACTIONS, LABELS_TABLE, MARKET_TICKS, LATE_EVENTS, STREAM_BATCHES, QUARANTINE,
        *REFERENCE_TABLES.values(),
        EXPECTATION_RESULTS,
        TRANSACTION_FEATURES_TABLE, MARKET_FEATURES_TABLE, TRAINING_SET, EVALUATION_SET,
        CARD_DAILY, MERCHANT_DAILY, MCC_DAILY, FRAUD_SUMMARY_DAILY, MARKET_RISK_DAILY, MODEL_COMPARISON,
        DECISIONS_TABLE, MARKET_ANOMALIES_TABLE,
    )
}  # fmt: skip


def get(full_name: str) -> TableSpec:
    """A table of the catalog by its full name (``layer.name``)."""
    try:
        return CATALOG[full_name]
    except KeyError:
        raise KeyError(f"unknown table {full_name!r}; known: {', '.join(sorted(CATALOG))}") from None


_LAYERS = ["bronze", "silver", "quality", "features", "gold"]


def _type(t: pa.DataType) -> str:
    if t == TS:
        return "timestamp (UTC)"
    return {"int32": "int", "int64": "long", "date32[day]": "date"}.get(str(t), str(t))


def markdown() -> str:
    """The catalog as Markdown (the generated part of docs/tables.md)."""
    out = []
    for name, spec in sorted(CATALOG.items(), key=lambda kv: (_LAYERS.index(kv[1].layer), kv[0])):
        part = f" — partitioned by `{', '.join(spec.partition_by)}`" if spec.partition_by else ""
        cdf = " Change data feed on." if spec.change_data_feed else ""
        out += [f"### {name}{part}", f"{spec.description}{cdf}", "", "| column | type |", "|---|---|"]
        out += [f"| {f.name} | {_type(f.type)} |" for f in spec.schema]
        out.append("")
    return "\n".join(out)


DOC_BEGIN, DOC_END = "<!-- catalog:begin (python -m lakehouse.catalog) -->", "<!-- catalog:end -->"


def main() -> None:
    """Rewrite the generated part of docs/tables.md from the catalog."""
    from lakehouse import PROJECT_ROOT

    path = PROJECT_ROOT / "docs" / "tables.md"
    text = path.read_text()
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    path.write_text(f"{head}{DOC_BEGIN}\n{markdown()}\n{DOC_END}{tail}")


if __name__ == "__main__":
    main()
