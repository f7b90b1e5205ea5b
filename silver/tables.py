"""Silver tables in the catalog; the typed columns come from the event contracts (one source of truth)."""

from __future__ import annotations

import pyarrow as pa

from lakehouse.contracts import TIME_FIELDS, spark_ddl
from lakehouse.tables import TS, TableSpec, register

_ARROW = {"string": pa.string(), "bigint": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}
LINEAGE = [("source_partition", pa.int32()), ("source_offset", pa.int64()), ("log_time", TS)]


def contract_fields(kind: str, contract: dict | None = None) -> list[tuple[str, pa.DataType]]:
    """Arrow fields of an event kind, as ``silver.transforms.parse_events`` produces them."""
    fields = []
    for col in spark_ddl(kind, contract).split(", "):
        name, typ = col.split(" ")
        name = name.strip("`")
        fields.append((name, TS if name == TIME_FIELDS[kind] else _ARROW[typ]))
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

TRANSACTIONS = register(
    TableSpec(
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
)
LABELS_TABLE = register(
    TableSpec(
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
)
MARKET_TICKS = register(
    TableSpec(
        "silver",
        "market_ticks",
        pa.schema([*contract_fields("market_tick"), *LINEAGE, ("processed_at", TS), ("event_date", pa.date32())]),
        ("event_date",),
        "Typed market ticks, deduplicated on (symbol, event_time) within the watermark.",
    )
)
LATE_EVENTS = register(
    TableSpec(
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
)
STREAM_BATCHES = register(
    TableSpec(
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
)
