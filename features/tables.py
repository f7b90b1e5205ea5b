"""The feature layer's Delta tables: feature vectors as the stream computed them, and training sets."""

from __future__ import annotations

import pyarrow as pa

from features.definitions import MARKET_FEATURES, TRANSACTION_FEATURES, Feature
from lakehouse.tables import TS, TableSpec, register

_ARROW = {"long": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}
KEY_FIELDS = [
    ("transaction_id", pa.string()),
    ("card_id", pa.string()),
    ("event_time", TS),
]


def feature_fields(features: list[Feature]) -> list[tuple[str, pa.DataType]]:
    return [(f.name, _ARROW[f.dtype]) for f in features]


TRANSACTION_FEATURES_TABLE = register(
    TableSpec(
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
)
MARKET_FEATURES_TABLE = register(
    TableSpec(
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
)


def training_set_spec(name: str = "training_set") -> TableSpec:
    """A training set table (``build-training-set --table NAME``)."""
    return register(
        TableSpec(
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
    )


TRAINING_SET = training_set_spec()
# what `make train` evaluates on (the test period), rebuilt by each run and by `make evaluate`
EVALUATION_SET = training_set_spec("evaluation_set")
