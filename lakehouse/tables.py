"""The catalog: every Delta table of the lakehouse, its schema, partitioning and table properties.

Jobs create their tables up front (``ensure``) so a downstream stream can start before upstream data
exists, and so retention settings are table properties, not conventions. ``docs/tables.md`` documents them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.storage import storage_options

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    layer: str
    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    description: str = ""
    # keep a change data feed (row-level update pre/post images), for tables that are MERGEd into
    change_data_feed: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.layer}.{self.name}"

    def uri(self, settings: Settings) -> str:
        return settings.table_uri(self.layer, self.name)

    def properties(self, settings: Settings) -> dict[str, str]:
        lh = settings.lakehouse
        props = {
            "delta.logRetentionDuration": f"interval {lh.log_retention_days} days",
            "delta.deletedFileRetentionDuration": f"interval {lh.retention_hours} hours",
        }
        if self.change_data_feed:
            props["delta.enableChangeDataFeed"] = "true"
        return props


CATALOG: dict[str, TableSpec] = {}


def register(spec: TableSpec) -> TableSpec:
    CATALOG[spec.full_name] = spec
    return spec


def get(full_name: str) -> TableSpec:
    try:
        return CATALOG[full_name]
    except KeyError:
        raise KeyError(f"unknown table {full_name!r}; known: {', '.join(sorted(CATALOG))}") from None


def ensure(settings: Settings, spec: TableSpec) -> str:
    """Create the table (empty, with its schema and properties) unless it exists. Returns its URI."""
    uri = spec.uri(settings)
    opts = storage_options(settings, uri)
    if not DeltaTable.is_deltatable(uri, storage_options=opts):
        DeltaTable.create(
            uri,
            schema=spec.schema,
            mode="ignore",
            partition_by=list(spec.partition_by) or None,
            name=spec.full_name,
            description=spec.description or None,
            configuration=spec.properties(settings),
            storage_options=opts,
        )
    return uri


def ensure_all(settings: Settings, layers: tuple[str, ...] | None = None) -> None:
    for spec in CATALOG.values():
        if layers is None or spec.layer in layers:
            ensure(settings, spec)


def conform(table: pa.Table, spec: TableSpec, **extra: pa.Array) -> pa.Table:
    """``table`` plus ``extra`` columns, in ``spec``'s column order and types (columns it lacks are left out)."""
    for name, values in extra.items():
        table = table.append_column(name, values)
    names = [f.name for f in spec.schema if f.name in table.column_names]
    return table.select(names).cast(pa.schema([spec.schema.field(n) for n in names]))


SPARK_TYPES = {
    pa.string(): "string",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float64(): "double",
    pa.bool_(): "boolean",
    pa.binary(): "binary",
    pa.date32(): "date",
    TS: "timestamp",
}


def spark_type(t: pa.DataType) -> str:
    """The Spark SQL type of a catalog column type."""
    if pa.types.is_list(t):
        return f"array<{spark_type(t.value_type)}>"
    return SPARK_TYPES[t]


def spark_schema(spec: TableSpec) -> str:
    """``spec``'s schema as a Spark DDL string."""
    return ", ".join(f"`{f.name}` {spark_type(f.type)}" for f in spec.schema)


def conform_df(df: DataFrame, spec: TableSpec, **extra: Column) -> DataFrame:
    """``df`` plus ``extra`` columns, in ``spec``'s column order and types (columns it lacks are left out)."""
    if extra:
        df = df.withColumns(extra)
    return df.select(*[F.col(f.name).cast(spark_type(f.type)) for f in spec.schema if f.name in df.columns])


def _fields(*pairs: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in pairs])


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
for _name, _what in (("transactions", "card transactions"), ("labels", "fraud labels"), ("market_ticks", "ticks")):
    register(
        TableSpec(
            "bronze",
            _name,
            BRONZE_EVENT_SCHEMA,
            ("event_date",),
            f"Every valid {_what} event as received from the event log (append-only).",
        )
    )

register(
    TableSpec(
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
)


def load_catalog() -> dict[str, TableSpec]:
    """Every table of every stage (importing a stage's ``tables`` module registers its tables)."""
    import importlib

    for module in ("lakehouse.quality", "silver.tables", "silver.reference", "gold.tables", "features.tables"):
        importlib.import_module(module)
    return CATALOG


def markdown() -> str:
    """The catalog as Markdown (the generated part of docs/tables.md)."""
    out = []
    for name, spec in sorted(load_catalog().items(), key=lambda kv: (_LAYERS.index(kv[1].layer), kv[0])):
        part = f" — partitioned by `{', '.join(spec.partition_by)}`" if spec.partition_by else ""
        cdf = " Change data feed on." if spec.change_data_feed else ""
        out += [f"### {name}{part}", f"{spec.description}{cdf}", "", "| column | type |", "|---|---|"]
        out += [f"| {f.name} | {_type(f.type)} |" for f in spec.schema]
        out.append("")
    return "\n".join(out)


_LAYERS = ["bronze", "silver", "quality", "features", "gold"]


def _type(t: pa.DataType) -> str:
    if t == TS:
        return "timestamp (UTC)"
    return {"int32": "int", "int64": "long", "date32[day]": "date"}.get(str(t), str(t))


DOC_BEGIN, DOC_END = "<!-- catalog:begin (python -m lakehouse.tables) -->", "<!-- catalog:end -->"


def main() -> None:
    """Rewrite the generated part of docs/tables.md from the catalog."""
    from lakehouse import (
        PROJECT_ROOT,
        tables,  # not __main__'s copy of this module: the stages register into that one
    )

    path = PROJECT_ROOT / "docs" / "tables.md"
    text = path.read_text()
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    path.write_text(f"{head}{DOC_BEGIN}\n{tables.markdown()}\n{DOC_END}{tail}")


if __name__ == "__main__":
    main()
