"""Delta tables at the edge: idempotent micro-batch writes and reads.

Two writers produce the same Delta protocol:
- ``delta-rs`` (the ``deltalake`` package; the embedded default, no JVM jars needed): each commit records
  the streaming query id and batch id as a Delta *app transaction* (``txn`` action), exactly like Spark's
  ``txnAppId``/``txnVersion`` options, and a batch whose id is not newer than the recorded one is skipped.
- ``spark`` (Spark's native Delta writer, when the delta-spark jars are on the classpath, as in
  docker-compose): the same idempotency through ``txnAppId``/``txnVersion``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.table import TableMerger

from lakehouse.config import Settings
from lakehouse.storage import storage_options


def days(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end``, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def date_predicate(dates: list[date]) -> str:
    """A Delta predicate selecting the ``event_date`` partitions of ``dates`` (for partition overwrites)."""
    return "event_date IN (" + ", ".join(f"'{d.isoformat()}'" for d in sorted(dates)) + ")"


def one_of(dataset: pads.Dataset, column: str, values: pa.Array | pa.ChunkedArray | Collection) -> pc.Expression:
    """A filter on ``dataset``: ``column`` is one of ``values``. The column and the values are cast to the table's
    type: a batch or a data file may hold strings as ``string_view``, which no comparison with a plain string
    accepts (the file-statistics pruning of ``isin`` fails on it)."""
    typ = dataset.schema.field(column).type
    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array(list(values))
    return pc.field(column).cast(typ).isin(pc.cast(values, typ))


def table_exists(settings: Settings, uri: str) -> bool:
    return DeltaTable.is_deltatable(uri, storage_options=storage_options(settings, uri))


def open_table(settings: Settings, uri: str, version: int | None = None) -> DeltaTable:
    return DeltaTable(uri, version=version, storage_options=storage_options(settings, uri))


def committed_version(settings: Settings, uri: str, app_id: str) -> int | None:
    """The last batch id committed to ``uri`` by the streaming query ``app_id`` (None if none)."""
    try:
        return open_table(settings, uri).transaction_version(app_id)
    except TableNotFoundError:
        return None


def write_batch(
    settings: Settings,
    uri: str,
    data: pa.Table,
    *,
    app_id: str,
    batch_id: int,
    partition_by: Sequence[str] | None = None,
    mode: str = "append",
    metadata: dict[str, str] | None = None,
    predicate: str | None = None,
    schema_mode: str | None = None,
) -> bool:
    """Append (or overwrite, where ``predicate`` holds) one micro-batch exactly once.

    Returns False if the batch was already written."""
    if already_committed(settings, uri, app_id, batch_id):
        return False
    write_deltalake(
        uri,
        data,
        mode=mode,
        partition_by=list(partition_by) if partition_by else None,
        storage_options=storage_options(settings, uri),
        commit_properties=_commit(app_id, batch_id, metadata),
        predicate=predicate,
        schema_mode=schema_mode,
    )
    return True


def already_committed(settings: Settings, uri: str, app_id: str, batch_id: int) -> bool:
    last = committed_version(settings, uri, app_id)
    return last is not None and batch_id <= last


def _commit(app_id: str, batch_id: int, metadata: dict[str, str] | None = None) -> CommitProperties:
    return CommitProperties(
        app_transactions=[Transaction(app_id=app_id, version=batch_id)],
        custom_metadata={"streaming.query_id": app_id, "streaming.batch_id": str(batch_id), **(metadata or {})},
    )


def committed_metrics(settings: Settings, uri: str, app_id: str, batch_id: int, search: int = 200) -> dict:
    """The operation metrics of the commit that wrote (``app_id``, ``batch_id``) ({} if out of the log)."""
    for commit in history(settings, uri, search):
        if commit.get("streaming.query_id") == app_id and commit.get("streaming.batch_id") == str(batch_id):
            return dict(commit.get("operationMetrics") or {})
    return {}


def merge_batch(
    settings: Settings,
    uri: str,
    source: pa.Table,
    predicate: str,
    clauses: Callable[[TableMerger], TableMerger],
    *,
    app_id: str,
    batch_id: int,
    merge_schema: bool = False,
    attempts: int = 5,
) -> dict:
    """MERGE one micro-batch (``s``) into ``t`` exactly once; returns the MERGE's metrics.

    A batch merged before (a replay after a crash) is not merged again: its metrics come from the original
    commit. A commit conflict (e.g. with a concurrent OPTIMIZE) re-runs the MERGE on the new snapshot.

    ``clauses`` adds the WHEN clauses, e.g. ``lambda m: m.when_not_matched_insert_all()``.
    """
    for attempt in range(attempts):
        if already_committed(settings, uri, app_id, batch_id):
            return committed_metrics(settings, uri, app_id, batch_id)
        merger = open_table(settings, uri).merge(
            source,
            predicate,
            source_alias="s",
            target_alias="t",
            merge_schema=merge_schema,
            commit_properties=_commit(app_id, batch_id),
        )
        try:
            return clauses(merger).execute()
        except CommitFailedError:  # a concurrent OPTIMIZE rewrote what the MERGE read: redo it on the new snapshot
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def batch_tag(app_id: str, batch_id: int) -> str:
    """The ``userMetadata`` of the commit a streaming batch writes (how its commit is found again)."""
    return f"batch {batch_id} of {app_id}"


def write_batch_spark(
    df,
    uri: str,
    *,
    app_id: str,
    batch_id: int,
    partition_by: Sequence[str] | None = None,
    mode: str = "append",
) -> None:
    """Spark's Delta writer, idempotent per streaming batch (``txnAppId``/``txnVersion``: Delta skips a batch
    of ``app_id`` whose id is not newer than the one it recorded)."""
    writer = (
        df.write.format("delta")
        .mode(mode)
        .option("txnAppId", app_id)
        .option("txnVersion", batch_id)
        .option("userMetadata", batch_tag(app_id, batch_id))
    )
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(uri)


def commit_of(spark, uri: str, app_id: str, batch_id: int, since_ms: int, search: int = 50) -> tuple[int, bool]:
    """(rows written, whether the commit is new since ``since_ms``) of the commit of (``app_id``, ``batch_id``);
    (0, False) if it is not among the last ``search`` commits. Reads the Delta log only."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    found = (
        DeltaTable.forPath(spark, uri)
        .history(search)
        .where(F.col("userMetadata") == batch_tag(app_id, batch_id))
        .select("timestamp", "operationMetrics")
        .first()
    )
    if found is None:
        return 0, False
    rows = int((found["operationMetrics"] or {}).get("numOutputRows", 0))
    return rows, found["timestamp"].timestamp() * 1000 >= since_ms - 1000


def read_arrow(
    settings: Settings,
    uri: str,
    version: int | None = None,
    columns: list[str] | None = None,
    filters: list[tuple[str, str, Any]] | None = None,
) -> pa.Table:
    """The table (optionally at an earlier ``version``, only the rows matching DNF ``filters`` such as
    ``[("event_date", ">=", date(2026, 3, 1))]``; partitions are pruned) as Arrow — for Polars, DuckDB, pandas."""
    return open_table(settings, uri, version).to_pyarrow_table(columns=columns, filters=filters)


def history(settings: Settings, uri: str, limit: int | None = None) -> list[dict]:
    return open_table(settings, uri).history(limit)
