"""Spark reads Delta tables through delta-rs: a Python Data Source named ``deltars`` (no Delta jars needed).

Streaming, ``spark.readStream.format("deltars").load(uri)``: each micro-batch is a range of Delta versions read
with delta-rs' change data feed, so silver streams from bronze and gold from silver. Offsets are
``{"version": N}`` (the last version fully consumed) and live in the query's checkpoint, so a restarted query
resumes after the last committed batch. Options:

- ``readChangeFeed``: ``true`` adds ``_change_type``, ``_commit_version``, ``_commit_timestamp`` to the table's
  columns (``read_delta_stream`` sets it). Spark asks a Python source for its schema without saying whether
  the read is a stream, so, as with Spark's own Delta source, the CDF columns are opt-in for both;
- ``startingVersion``: first version to read (default 0, i.e. everything; ``latest``: only new commits);
- ``maxVersionsPerTrigger``: at most this many versions per micro-batch (a ``ReadMaxFiles`` read limit: one
  version is one commit file), also honoured by ``trigger(availableNow=True)``, which then stops;
- ``changeTypes``: comma list of change types to keep (default ``insert,update_postimage``);
- ``numPartitions``: at most this many Spark partitions per micro-batch or batch read (default 8).

Batch, ``spark.read.format("deltars").load(uri)``: the table's rows at ``versionAsOf`` (int) or
``timestampAsOf`` (ISO-8601, UTC when naive), else at the version current when the DataFrame is created;
files are pruned by ``partitionFilter`` (JSON ``[[column, op, value], ...]``, delta-rs tuple filters) and
bin-packed into partitions read in parallel. With ``readChangeFeed=true`` a batch read returns the changes of
versions ``startingVersion`` (default 0) to ``endingVersion`` (default: that current version) instead.

Both take ``storageOptions`` (JSON dict of delta-rs storage options; ``read_delta``/``read_delta_stream`` fill
it from settings for ``s3://`` URIs).

Tables without ``delta.enableChangeDataFeed`` are streamed from their add/remove actions, so only append-only
tables stream correctly then (a rewrite would re-emit the rewritten rows as inserts); tables that are updated
need the change data feed (``TableSpec.change_data_feed``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import DataSource, DataSourceReader, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxFiles,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

if TYPE_CHECKING:  # Spark's Python workers import this module: keep their start-up light (no boto3, pydantic)
    from lakehouse.config import Settings

NAME = "deltars"
CDF_FIELDS = (
    StructField("_change_type", StringType()),
    StructField("_commit_version", LongType()),
    StructField("_commit_timestamp", TimestampType()),
)
DEFAULT_CHANGE_TYPES = "insert,update_postimage"
DEFAULT_NUM_PARTITIONS = 8
_BATCH_ROWS = 65_536
_NO_CDF = "does not have change data enabled"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- helpers


def _uri(options) -> str:
    uri = options.get("path")
    if not uri:
        raise ValueError(f'{NAME}: give the table URI, e.g. .load("s3://bucket/table") or .option("path", ...)')
    return uri


def _flag(options, key: str) -> bool:
    return str(options.get(key) or "false").strip().lower() == "true"


def _change_types(options) -> list[str]:
    raw = options.get("changeTypes") or DEFAULT_CHANGE_TYPES
    return [t.strip() for t in raw.split(",") if t.strip()]


def _storage(options) -> dict[str, str] | None:
    raw = options.get("storageOptions")
    return json.loads(raw) if raw else None


def _open(uri: str, opts: dict[str, str] | None, version: int | None = None, without_files: bool = False):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, version=version, storage_options=opts, without_files=without_files)
    except TableNotFoundError as e:
        raise FileNotFoundError(f"{NAME}: no Delta table at {uri!r} ({e})") from None


def _spark_schema(table) -> StructType:
    return from_arrow_schema(pa.schema(table.schema().to_arrow()), prefer_timestamp_ntz=True)


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly ``target``'s columns and types (by name; missing columns become nulls)."""
    names = batch.schema.names
    cols = []
    for field in target:
        if field.name in names:
            col = batch.column(names.index(field.name))
            if field.name == "_commit_timestamp" and pa.types.is_timestamp(col.type) and col.type.tz is None:
                col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))  # delta-rs gives naive UTC millis
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(cols, schema=target)


def _partition_filter(raw: str | None) -> list | None:
    """``[[col, op, value], ...]`` (a conjunction) or ``[[[col, op, value], ...], ...]`` (an OR of them) as
    delta-rs tuple filters."""
    if not raw:
        return None
    parsed = json.loads(raw)

    def conj(items: list) -> list[tuple]:
        return [(c, op, tuple(v) if isinstance(v, list) else v) for c, op, v in items]

    if parsed and all(isinstance(x, list) and x and isinstance(x[0], list) for x in parsed):
        return [conj(c) for c in parsed]
    return conj(parsed)


def _chunks(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Split the inclusive range [lo, hi] into at most ``parts`` contiguous ranges."""
    size = math.ceil((hi - lo + 1) / max(parts, 1))
    return [(a, min(a + size - 1, hi)) for a in range(lo, hi + 1, size)]


def _bin_pack(sizes: dict[str, int], parts: int) -> list[list[str]]:
    """Files into at most ``parts`` groups of similar total size (largest first into the lightest group)."""
    bins: list[tuple[int, list[str]]] = [(0, []) for _ in range(min(parts, len(sizes)))]
    for path in sorted(sizes, key=lambda p: -sizes[p]):
        i = min(range(len(bins)), key=lambda j: bins[j][0])
        bins[i] = (bins[i][0] + sizes[path], [*bins[i][1], path])
    return [files for _, files in bins if files]


def _fragments(table, paths: set[str], file_filter: list | None = None) -> pds.Dataset:
    """The table's dataset restricted to the files ``paths`` (partition columns filled from the log)."""
    ds = table.to_pyarrow_dataset(file_pruning_predicate=file_filter)
    frags = [f for f in ds.get_fragments() if f.path in paths]
    return pds.FileSystemDataset(frags, ds.schema, ds.format, ds.filesystem)


def _file_paths(table) -> dict[str, int]:
    actions = pa.table(table.get_add_actions())
    return dict(zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist(), strict=True))


# Commit times come from the commit files themselves, never from ``DeltaTable.history()``: delta-rs 1.6.6 numbers
# the history of a table opened at an older version down from that version while listing the latest commits.


def _log_fs(uri: str, opts: dict[str, str] | None) -> pafs.FileSystem:
    """The table's object store (local or ``s3://``, with ``opts``), paths relative to the table root."""
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(uri, opts))


def _commit_file(version: int) -> str:
    return f"_delta_log/{version:020d}.json"


def _commit_mtime_ms(uri: str, opts: dict[str, str] | None, version: int) -> int | None:
    """When commit ``version``'s file was written, in epoch milliseconds (what delta-rs resolves a timestamp to a
    version by); None if the log no longer has the file."""
    info = _log_fs(uri, opts).get_file_info(_commit_file(version))
    if info.type != pafs.FileType.File or info.mtime_ns is None:
        return None
    return info.mtime_ns // 1_000_000


def _commit_timestamp(uri: str, opts: dict[str, str] | None, version: int) -> datetime:
    """The commit's own timestamp (``commitInfo.inCommitTimestamp``, else ``commitInfo.timestamp``: what delta-rs'
    change data feed reports as ``_commit_timestamp``), else its file's modification time."""
    try:
        with _log_fs(uri, opts).open_input_stream(_commit_file(version)) as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{NAME}: no commit file for version {version} of {uri!r}") from None
    for line in lines:
        info = json.loads(line).get("commitInfo") if line.strip() else None
        if info is not None:
            millis = next((info[k] for k in ("inCommitTimestamp", "timestamp") if info.get(k) is not None), None)
            if millis is not None:
                return datetime.fromtimestamp(millis / 1000, tz=UTC)
    millis = _commit_mtime_ms(uri, opts, version)
    if millis is None:
        raise ValueError(f"{NAME}: no commit info for version {version} of {uri!r}")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


# ---------------------------------------------------------------------------------------------- source


class DeltaRsDataSource(DataSource):
    """Delta tables through delta-rs, batch and streaming; see the module docstring for the options."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> StructType:
        uri = _uri(self.options)
        table = _open(uri, _storage(self.options), without_files=True)
        # pin the batch snapshot now: this instance is pickled after schema(), so reader() reads this version
        self.version = _batch_version(table, self.options)
        if self.version != table.version():
            table.load_as_version(self.version)
        schema = _spark_schema(table)
        return StructType([*schema.fields, *CDF_FIELDS]) if _flag(self.options, "readChangeFeed") else schema

    def reader(self, schema: StructType) -> DataSourceReader:
        version = getattr(self, "version", None)
        if _flag(self.options, "readChangeFeed"):
            return DeltaChangesReader(self.options, schema, version)
        return DeltaBatchReader(self.options, schema, version)

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return DeltaStreamReader(self.options, schema)


def _batch_version(table, options) -> int:
    """The version a batch read sees: ``versionAsOf``, else ``timestampAsOf``, else the current one."""
    if options.get("versionAsOf") is not None:
        return int(options["versionAsOf"])
    raw = options.get("timestampAsOf")
    if raw is None:
        return table.version()
    ts = datetime.fromisoformat(raw)
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    table.load_as_version(ts)  # the last version whose commit file is at most ``ts`` old, else the oldest kept
    version = table.version()
    # delta-rs resolves a timestamp before the oldest kept commit to that commit: refuse instead (comparing
    # file modification times in milliseconds, as delta-rs does)
    written = _commit_mtime_ms(_uri(options), _storage(options), version)
    if written is not None and (ts - _EPOCH) // timedelta(milliseconds=1) < written:
        first = datetime.fromtimestamp(written / 1000, tz=UTC).isoformat()
        raise ValueError(
            f"{NAME}: timestampAsOf {raw} is before the first commit of {table.table_uri!r} "
            f"(the oldest version kept, {version}, was written {first})"
        )
    return version


class DeltaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets ``{"version": N}``: versions up to N are consumed; a micro-batch reads versions (start, end]."""

    def __init__(self, options, schema: StructType):
        self.uri = _uri(options)
        self.storage = _storage(options)
        self.schema = schema
        self.starting = options.get("startingVersion")
        self.max_versions = int(options.get("maxVersionsPerTrigger") or 0) or None
        self.num_partitions = int(options.get("numPartitions") or DEFAULT_NUM_PARTITIONS)
        self.change_types = _change_types(options)
        self.target: int | None = None  # the last version an availableNow query reads
        self._table = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}  # the cached table stays in the driver-side reader

    def _current(self) -> int:
        if self._table is None:
            self._table = _open(self.uri, self.storage, without_files=True)
        else:
            self._table.update_incremental()
        return self._table.version()

    def initialOffset(self) -> dict:
        if self.starting is None or str(self.starting).lower() == "earliest":
            return {"version": -1}
        if str(self.starting).lower() == "latest":
            return {"version": self._current()}
        return {"version": int(self.starting) - 1}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxFiles(self.max_versions) if self.max_versions else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self.target = self._current()

    def latestOffset(self, start: dict | None = None, limit: ReadLimit | None = None) -> dict:
        begin = (start or self.initialOffset())["version"]
        end = self._current() if self.target is None else self.target
        if isinstance(limit, ReadMaxFiles):
            end = min(end, begin + limit.max_files)
        elif isinstance(limit, ReadMaxRows):  # versions, for lack of a better unit
            end = min(end, begin + limit.max_rows)
        return {"version": max(begin, end)}

    def reportLatestOffset(self) -> dict:
        return {"version": self._current()}

    def partitions(self, start: dict, end: dict) -> list[InputPartition]:
        lo, hi = start["version"] + 1, end["version"]
        if hi < lo:
            return []
        return [InputPartition(r) for r in _chunks(lo, hi, self.num_partitions)]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        lo, hi = partition.value
        yield from _read_changes(self.uri, self.storage, lo, hi, self.change_types, self.schema)

    def commit(self, end: dict) -> None:
        """Nothing to do: offsets live in the checkpoint and the Delta log keeps the versions."""


def _read_changes(
    uri: str, opts: dict[str, str] | None, lo: int, hi: int, change_types: list[str], schema: StructType
) -> Iterator[pa.RecordBatch]:
    """The rows of versions [lo, hi] whose ``_change_type`` is wanted, as ``schema``."""
    target = to_arrow_schema(schema, timezone="UTC")
    wanted = pa.array(change_types, pa.string())
    for batch in _changes(uri, opts, lo, hi, set(change_types)):
        # filter after conforming: pyarrow has no take kernel for the string_view columns delta-rs returns
        keep = pc.is_in(batch.column("_change_type").cast(pa.string()), value_set=wanted)
        batch = _conform(batch, target).filter(keep)
        if batch.num_rows:
            yield batch


def _changes(uri: str, opts: dict[str, str] | None, lo: int, hi: int, types: set[str]) -> Iterator[pa.RecordBatch]:
    """The change rows of versions [lo, hi] (with ``_change_type``, ``_commit_version``, ``_commit_timestamp``).

    delta-rs refuses a change feed starting at a version that sets table metadata without enabling the feed
    (version 0 of such tables, schema or property changes): those versions are read from their file actions.
    """
    from deltalake.exceptions import DeltaError

    table = _open(uri, opts, version=hi, without_files=True)
    v = lo
    while v <= hi:
        try:
            reader = table.load_cdf(starting_version=v, ending_version=hi)
        except DeltaError as e:
            if _NO_CDF not in str(e):
                raise
            yield from _commit_diff(uri, opts, v, types)
            v += 1
            continue
        yield from pa.RecordBatchReader.from_stream(reader)
        return


def _commit_diff(uri: str, opts: dict[str, str] | None, version: int, types: set[str]) -> Iterator[pa.RecordBatch]:
    """One version's changes from the files it added (inserts) and removed (deletes)."""
    now = _open(uri, opts, version=version)
    before = _open(uri, opts, version=version - 1) if version > 0 else None
    now_files, before_files = set(_file_paths(now)), set(_file_paths(before)) if before else set()
    ts = pa.scalar(_commit_timestamp(uri, opts, version), pa.timestamp("us", tz="UTC"))
    sides = (("insert", now, now_files - before_files), ("delete", before, before_files - now_files))
    for change, table, paths in sides:
        if change not in types or not paths:
            continue
        for batch in _fragments(table, paths).to_batches(batch_size=_BATCH_ROWS):
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [
                    *batch.columns,
                    pa.array([change] * n, pa.string()),
                    pa.array([version] * n, pa.int64()),
                    pa.array([ts.value] * n, ts.type),
                ],
                names=[*batch.schema.names, "_change_type", "_commit_version", "_commit_timestamp"],
            )


class DeltaBatchReader(DataSourceReader):
    """The table at one version, as groups of files read in parallel."""

    def __init__(self, options, schema: StructType, version: int | None):
        self.uri = _uri(options)
        self.storage = _storage(options)
        self.schema = schema
        self.file_filter = _partition_filter(options.get("partitionFilter"))
        self.num_partitions = int(options.get("numPartitions") or DEFAULT_NUM_PARTITIONS)
        if version is None:
            version = _batch_version(_open(self.uri, self.storage, without_files=True), options)
        self.version = version

    def partitions(self) -> list[InputPartition]:
        table = _open(self.uri, self.storage, version=self.version)
        sizes = _file_paths(table)
        kept = {f.path for f in table.to_pyarrow_dataset(file_pruning_predicate=self.file_filter).get_fragments()}
        groups = _bin_pack({p: s for p, s in sizes.items() if p in kept}, self.num_partitions)
        return [InputPartition((self.version, files)) for files in groups]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not partition.value:  # Spark's placeholder partition of an empty table
            return
        version, files = partition.value
        target = to_arrow_schema(self.schema, timezone="UTC")
        table = _open(self.uri, self.storage, version=version)
        for batch in _fragments(table, set(files), self.file_filter).to_batches(batch_size=_BATCH_ROWS):
            if batch.num_rows:
                yield _conform(batch, target)


class DeltaChangesReader(DataSourceReader):
    """Batch read of the change feed: versions ``startingVersion`` to ``endingVersion``, in version ranges."""

    def __init__(self, options, schema: StructType, version: int | None):
        self.uri = _uri(options)
        self.storage = _storage(options)
        self.schema = schema
        self.change_types = _change_types(options)
        self.num_partitions = int(options.get("numPartitions") or DEFAULT_NUM_PARTITIONS)
        self.start = int(options.get("startingVersion") or 0)
        if options.get("endingVersion") is not None:
            version = int(options["endingVersion"])
        elif version is None:
            version = _open(self.uri, self.storage, without_files=True).version()
        self.end = version

    def partitions(self) -> list[InputPartition]:
        if self.end < self.start:
            return []
        return [InputPartition(r) for r in _chunks(self.start, self.end, self.num_partitions)]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not partition.value:  # Spark's placeholder partition of an empty range
            return
        lo, hi = partition.value
        yield from _read_changes(self.uri, self.storage, lo, hi, self.change_types, self.schema)


# ---------------------------------------------------------------------------------------------- entry points


def _options(settings: Settings, uri: str) -> dict[str, str]:
    from lakehouse.storage import storage_options

    opts = storage_options(settings, uri)
    return {"storageOptions": json.dumps(opts)} if opts else {}


def read_delta_stream(
    spark: SparkSession,
    settings: Settings,
    uri: str,
    max_versions_per_trigger: int | None = None,
    starting_version: int | str | None = None,
) -> DataFrame:
    """A streaming DataFrame of the rows appended (or updated) in a Delta table, plus the CDF columns."""
    reader = spark.readStream.format(NAME).options(**_options(settings, uri)).option("readChangeFeed", "true")
    if max_versions_per_trigger:
        reader = reader.option("maxVersionsPerTrigger", str(max_versions_per_trigger))
    if starting_version is not None:
        reader = reader.option("startingVersion", str(starting_version))
    return reader.load(uri)


def event_date_range(start: date, end: date) -> list[list[str]]:
    """A ``partition_filter`` for the ``event_date`` partitions from ``start`` to ``end``, both included."""
    return [["event_date", ">=", start.isoformat()], ["event_date", "<=", end.isoformat()]]


def read_delta(
    spark: SparkSession,
    settings: Settings,
    uri: str,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    partition_filter: list[Any] | None = None,
) -> DataFrame:
    """A Delta table (optionally at an earlier ``version`` or ``timestamp``) as a batch DataFrame."""
    reader = spark.read.format(NAME).options(**_options(settings, uri))
    if version is not None:
        reader = reader.option("versionAsOf", str(version))
    if timestamp is not None:
        reader = reader.option("timestampAsOf", timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp)
    if partition_filter:
        reader = reader.option("partitionFilter", json.dumps(partition_filter, default=str))
    return reader.load(uri)
