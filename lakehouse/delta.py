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
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from delta.tables import DeltaMergeBuilder
from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.table import TableMerger
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

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


def batch_of(commit: dict) -> tuple[str | None, int | None]:
    """(streaming query id, batch id) of a commit a micro-batch wrote, from Spark's ``userMetadata`` tag
    (``batch_tag``: the app id is the query id, or ``<query id>/<output>``) or delta-rs's custom metadata;
    (None, None) for any other commit."""
    tag = commit.get("userMetadata") or ""
    if tag.startswith("batch ") and " of " in tag:
        batch, app = tag.removeprefix("batch ").split(" of ", 1)
        if batch.isdigit():
            return app.split("/")[0], int(batch)
    if commit.get("streaming.batch_id"):
        return commit.get("streaming.query_id"), int(commit["streaming.batch_id"])
    return None, None


_TXN_APP, _TXN_VERSION = "spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion"
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# another writer (OPTIMIZE, a backfill) committed what this one read: the write is re-run on the new snapshot
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
)


@contextmanager
def idempotent(spark: SparkSession, app_id: str, batch_id: int) -> Iterator[None]:
    """Every Delta write and MERGE of ``spark`` inside is an app transaction (``app_id``, ``batch_id``): Delta
    skips it on a table that already has that transaction, and tags its commit with ``batch_tag``.

    The session of a ``foreachBatch`` DataFrame is the query's own clone, so concurrent queries don't share
    these settings."""
    conf = spark.conf
    conf.set(_TXN_APP, app_id)
    conf.set(_TXN_VERSION, str(batch_id))
    conf.set(_USER_METADATA, batch_tag(app_id, batch_id))
    try:
        yield
    finally:
        for key in (_TXN_APP, _TXN_VERSION, _USER_METADATA):
            conf.unset(key)


def _conflict(exc: Exception) -> bool:
    return any(name in type(exc).__name__ or name in str(exc)[:300] for name in _CONFLICTS)


def _retrying(write: Callable[[], None], attempts: int = 5) -> None:
    for attempt in range(attempts):
        try:
            return write()
        except Exception as exc:
            if not _conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def write_batch_spark(
    df: DataFrame,
    uri: str,
    *,
    app_id: str,
    batch_id: int,
    partition_by: Sequence[str] | None = None,
    mode: str = "append",
    replace_partitions: bool = False,
    replace_where: str | None = None,
    merge_schema: bool = False,
) -> None:
    """Spark's Delta writer, idempotent per streaming batch (``txnAppId``/``txnVersion``: Delta skips a batch
    of ``app_id`` whose id is not newer than the one it recorded). ``replace_partitions`` overwrites exactly
    the partitions ``df`` has rows in (dynamic partition overwrite); ``replace_where`` (a predicate) overwrites the
    rows matching it."""
    writer = (
        df.write.format("delta")
        .mode("overwrite" if replace_partitions or replace_where else mode)
        .option("txnAppId", app_id)
        .option("txnVersion", batch_id)
        .option("userMetadata", batch_tag(app_id, batch_id))
    )
    if replace_partitions:
        writer = writer.option("partitionOverwriteMode", "dynamic")
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    _retrying(lambda: writer.save(uri))


def merge_batch_spark(
    source: DataFrame,
    uri: str,
    condition: str,
    clauses: Callable[[DeltaMergeBuilder], DeltaMergeBuilder],
    *,
    app_id: str,
    batch_id: int,
    evolve_schema: bool = False,
) -> dict[str, int]:
    """MERGE ``source`` (alias ``s``) into the table at ``uri`` (alias ``t``) once per (``app_id``,
    ``batch_id``); returns the MERGE's metrics (of the original commit when the batch is replayed).

    ``clauses`` adds the WHEN clauses, e.g. ``lambda m: m.whenNotMatchedInsertAll()``."""
    spark = source.sparkSession

    def merge() -> None:
        builder = SparkDeltaTable.forPath(spark, uri).alias("t").merge(source.alias("s"), condition)
        if evolve_schema:  # a field a newer contract version added becomes a new column
            builder = builder.withSchemaEvolution()
        clauses(builder).execute()

    with idempotent(spark, app_id, batch_id):
        _retrying(merge)
    return commit_metrics(spark, uri, app_id, batch_id)


def commit_metrics(spark: SparkSession, uri: str, app_id: str, batch_id: int, search: int = 50) -> dict[str, int]:
    """The operation metrics of the commit of (``app_id``, ``batch_id``) ({} if not among the last ``search``)."""
    found = _tagged_commit(spark, uri, app_id, batch_id, search)
    return {} if found is None else {k: int(v) for k, v in (found["operationMetrics"] or {}).items()}


def _tagged_commit(spark: SparkSession, uri: str, app_id: str, batch_id: int, search: int):
    return (
        SparkDeltaTable.forPath(spark, uri)
        .history(search)
        .where(F.col("userMetadata") == batch_tag(app_id, batch_id))
        .select("timestamp", "operationMetrics")
        .first()
    )


def commit_of(spark, uri: str, app_id: str, batch_id: int, since_ms: int, search: int = 50) -> tuple[int, bool]:
    """(rows written, whether the commit is new since ``since_ms``) of the commit of (``app_id``, ``batch_id``);
    (0, False) if it is not among the last ``search`` commits. Reads the Delta log only."""
    found = _tagged_commit(spark, uri, app_id, batch_id, search)
    if found is None:
        return 0, False
    rows = int((found["operationMetrics"] or {}).get("numOutputRows", 0))
    return rows, found["timestamp"].timestamp() * 1000 >= since_ms - 1000


def latest_version(spark: SparkSession, uri: str) -> int:
    """The table's current version (reads the Delta log only)."""
    return SparkDeltaTable.forPath(spark, uri).history(1).select("version").first()[0]


def read(
    spark: SparkSession, uri: str, version: int | None = None, timestamp: datetime | str | None = None
) -> DataFrame:
    """The table with Spark's Delta reader (optionally as of an earlier ``version`` or ``timestamp``)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    if timestamp is not None:
        if isinstance(timestamp, datetime):  # the session's time zone is UTC (lakehouse.spark)
            timestamp = timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        reader = reader.option("timestampAsOf", timestamp)
    return reader.load(uri)


def read_days(spark: SparkSession, uri: str, start: date, end: date, column: str = "event_date") -> DataFrame:
    """The table's rows dated ``start``..``end`` (both included; partitions outside are pruned)."""
    return read(spark, uri).where(F.col(column).between(F.lit(start), F.lit(end)))


def days_predicate(start: date, end: date, column: str = "event_date") -> str:
    """A Delta predicate (``replaceWhere``) selecting the dates ``start``..``end``, both included."""
    return f"{column} >= '{start.isoformat()}' AND {column} <= '{end.isoformat()}'"


def read_stream(
    spark: SparkSession,
    uri: str,
    *,
    change_feed: bool = False,
    max_files: int | None = None,
    starting_version: int | None = None,
) -> DataFrame:
    """The table as a stream (Spark's Delta source): appended rows, or with ``change_feed`` every change
    (``_change_type``: insert, update_preimage/postimage, delete; ``_commit_version``, ``_commit_timestamp``).

    A new query starts with the table's current rows (as inserts), then its changes; ``starting_version`` skips
    the snapshot and starts with the changes of that version."""
    reader = spark.readStream.format("delta")
    if change_feed:
        reader = reader.option("readChangeFeed", "true")
    if starting_version is not None:
        reader = reader.option("startingVersion", starting_version)
    if max_files is not None:
        reader = reader.option("maxFilesPerTrigger", max_files)
    return reader.load(uri)


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
