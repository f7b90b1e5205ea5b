"""What a table of the catalog (``lakehouse.catalog``) is, and how jobs create and fill it.

Jobs create their tables up front (``ensure``) so a downstream stream can start before upstream data
exists, and so retention settings are table properties, not conventions; ``conform``/``conform_df`` give rows
a table's column order and types.
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
    # the column that identifies a row, for tables upserted on it (the reference tables)
    key: str | None = None

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
