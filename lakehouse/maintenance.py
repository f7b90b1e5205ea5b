"""Table maintenance on delta-spark: OPTIMIZE (compact small files), VACUUM, checkpoints; time travel (delta-rs).

Streaming micro-batches leave many small files per partition; ``optimize`` compacts the partitions that hold at
least ``lakehouse.compact_min_files`` of them into files of about ``lakehouse.target_file_mb`` (Delta's
``OPTIMIZE``). Its commits carry ``dataChange=false``, so change-data readers (Spark's Delta streaming source,
with or without ``readChangeFeed``) do not see the compacted rows again. ``vacuum`` (Delta's ``VACUUM``) deletes
the files no version younger than the retention window needs, and ``checkpoint`` forces a Delta checkpoint, at
which Delta also drops the log files older than the table's ``delta.logRetentionDuration``.

``as_of``/``open_as_of`` read a table at a version or a time with delta-rs, no JVM: the API and the notebooks use
them.

``python -m lakehouse.maintenance optimize|vacuum|checkpoint|all [--table bronze.transactions ...] [--dry-run]``
(``make optimize``) runs the jobs over the catalog in one Spark session. ``docs/maintenance.md`` has the schedule
and the read recipes.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import DeltaTable

from lakehouse.catalog import CATALOG
from lakehouse.config import Settings, get_settings
from lakehouse.delta import open_table
from lakehouse.storage import s3_client
from lakehouse.tables import TableSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# the Delta protocol's default when a table does not set delta.deletedFileRetentionDuration; VACUUM's safety check
_DEFAULT_FILE_RETENTION = timedelta(days=7)
_COMPACT_ATTEMPTS = 3
# another writer (a MERGE) committed a rewrite of files the OPTIMIZE read: io.delta.exceptions.Concurrent*
_CONFLICTS = ("Concurrent", "MetadataChangedException", "ProtocolChangedException")
_MAX_FILE = "spark.databricks.delta.optimize.maxFileSize"
_MIN_FILE = "spark.databricks.delta.optimize.minFileSize"
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_VACUUM_LOGGING = "spark.databricks.delta.vacuum.logging.enabled"
_UNITS = {
    "week": timedelta(weeks=1),
    "day": timedelta(days=1),
    "hour": timedelta(hours=1),
    "minute": timedelta(minutes=1),
    "second": timedelta(seconds=1),
    "millisecond": timedelta(milliseconds=1),
    "microsecond": timedelta(microseconds=1),
}


class TimeTravelError(LookupError):
    """The requested version or timestamp is not (or no longer) readable."""


@dataclass(frozen=True)
class OptimizeResult:
    table: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    files_removed: int  # on a dry run: the files that would be rewritten
    files_added: int
    partitions: tuple[str, ...] = ()  # the partitions compacted (or, on a dry run, that would be)
    seconds: float = 0.0
    dry_run: bool = False
    conflicts: tuple[str, ...] = ()  # partitions left as they were: concurrent rewrites (MERGE) kept winning


@dataclass(frozen=True)
class VacuumResult:
    table: str
    files: int  # deleted (or, on a dry run, deletable)
    bytes: int | None  # None when unknown
    retention_hours: int
    seconds: float = 0.0
    dry_run: bool = False
    paths: tuple[str, ...] = ()  # on a dry run, the deletable files (Delta does not list the ones it deletes)


@dataclass(frozen=True)
class CheckpointResult:
    table: str
    version: int  # the version the latest checkpoint is at
    log_files_before: int
    log_files_after: int
    seconds: float = 0.0
    written: bool = True  # False: the latest checkpoint was already at the current version


# ---------------------------------------------------------------------------------------------- OPTIMIZE


def optimize(
    spark: SparkSession,
    settings: Settings,
    spec_or_uri: TableSpec | str,
    *,
    min_files: int | None = None,
    dry_run: bool = False,
) -> OptimizeResult:
    """Compact every partition holding at least ``min_files`` (default ``compact_min_files``) small files.

    Small means smaller than ``target_file_mb``, which is also the size Delta's OPTIMIZE aims for
    (``optimize.maxFileSize``) and below which it rewrites a file (``optimize.minFileSize``). The partitions
    chosen are compacted in one OPTIMIZE commit (``dataChange=false``); none if no partition qualifies. If a
    concurrent rewrite (a MERGE; appends never conflict) wins, each partition is compacted on its own, retried,
    and one that keeps conflicting is left for the next run and listed in ``conflicts``. ``dry_run`` only reports
    what would be compacted.
    """
    name, uri = _name_uri(settings, spec_or_uri)
    path = spark_path(uri)
    threshold = min_files if min_files is not None else settings.lakehouse.compact_min_files
    target = settings.lakehouse.target_file_mb * 1024 * 1024
    start = time.perf_counter()
    cols = _detail(spark, path)["partitionColumns"]
    parts = _partitions(spark, path, cols, target)
    chosen = sorted((key for key, (_, _, small) in parts.items() if small >= threshold), key=_order)
    files_before, bytes_before = sum(p[0] for p in parts.values()), sum(p[1] for p in parts.values())
    removed = added = 0
    conflicts: list[tuple] = []
    after = files_before, bytes_before
    if dry_run:
        removed = sum(parts[key][2] for key in chosen)
    elif chosen:
        with session_conf(spark, {_MAX_FILE: str(target), _MIN_FILE: str(target)}):
            try:
                metrics = [_compact(spark, path, _predicate(cols, chosen))]
            except Exception as e:
                if not _conflict(e):
                    raise
                metrics = []
                for key in chosen:  # one partition at a time: a busy one does not hold up the others
                    done = _compact_retrying(spark, path, _predicate(cols, [key]))
                    if done is None:
                        conflicts.append(key)
                    else:
                        metrics.append(done)
        removed = sum(m["numFilesRemoved"] for m in metrics)
        added = sum(m["numFilesAdded"] for m in metrics)
        detail = _detail(spark, path)
        after = detail["numFiles"], detail["sizeInBytes"]
    return OptimizeResult(
        table=name,
        files_before=files_before,
        files_after=after[0],
        bytes_before=bytes_before,
        bytes_after=after[1],
        files_removed=removed,
        files_added=added,
        partitions=tuple(_partition_label(cols, key) for key in chosen if key not in conflicts),
        seconds=time.perf_counter() - start,
        dry_run=dry_run,
        conflicts=tuple(_partition_label(cols, key) for key in conflicts),
    )


def _compact(spark: SparkSession, path: str, predicate: str | None) -> dict[str, int]:
    """One Delta OPTIMIZE (bin-packing compaction) of the partitions matching ``predicate``; its metrics."""
    builder = _spark_table(spark, path).optimize()
    if predicate:
        builder = builder.where(predicate)
    metrics = builder.executeCompaction().select("metrics.numFilesAdded", "metrics.numFilesRemoved").first()
    return {"numFilesAdded": int(metrics[0] or 0), "numFilesRemoved": int(metrics[1] or 0)}


def _compact_retrying(spark: SparkSession, path: str, predicate: str | None) -> dict[str, int] | None:
    """``_compact``, retried on commit conflicts; None if it kept conflicting."""
    for attempt in range(_COMPACT_ATTEMPTS):
        try:
            return _compact(spark, path, predicate)
        except Exception as e:
            if not _conflict(e):
                raise
            time.sleep(0.2 * (attempt + 1))
    return None


def _conflict(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {str(exc)[:500]}"
    return any(name in text for name in _CONFLICTS)


def _partitions(spark: SparkSession, path: str, cols: list[str], target: int) -> dict[tuple, tuple[int, int, int]]:
    """Per partition (its values as Delta's log writes them, None for null): files, bytes, files under ``target``.

    Read from the live files of the current snapshot (``AddFile`` actions; no data file is opened), aggregated
    by Spark. Delta has no public API for them: this is ``DeltaLog.forTableWithSnapshot(...)._2().allFiles()``.
    """
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    snapshot = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTableWithSnapshot(spark._jsparkSession, path)._2()
    files = DataFrame(snapshot.allFiles().toDF(), spark)
    keys = [F.col("partitionValues")[c].alias(f"p{i}") for i, c in enumerate(cols)]
    rows = files.groupBy(*keys).agg(F.count("*"), F.sum("size"), F.count(F.when(F.col("size") < target, 1))).collect()
    width = len(cols)
    return {tuple(r[:width]): (int(r[width]), int(r[width + 1] or 0), int(r[width + 2])) for r in rows}


def _predicate(cols: list[str], keys: list[tuple]) -> str | None:
    """A Delta partition predicate matching exactly the partitions ``keys`` (None: the whole table)."""
    if not cols:
        return None
    return " OR ".join("(" + " AND ".join(_equals(c, v) for c, v in zip(cols, key, strict=True)) + ")" for key in keys)


def _equals(col: str, value: str | None) -> str:
    name = "`" + col.replace("`", "``") + "`"
    if value is None:
        return f"{name} IS NULL"
    return f"{name} = '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _order(key: tuple) -> tuple:
    return tuple((v is None, v or "") for v in key)


def _partition_label(cols: list[str], key: tuple) -> str:
    return "/".join(f"{c}={'null' if v is None else v}" for c, v in zip(cols, key, strict=True)) or "(table)"


# ---------------------------------------------------------------------------------------------- VACUUM


def vacuum(
    spark: SparkSession, settings: Settings, spec_or_uri: TableSpec | str, *, dry_run: bool = False
) -> VacuumResult:
    """Delete the files no version younger than the retention window needs (Delta's VACUUM); what it deleted.

    The window is the table's ``delta.deletedFileRetentionDuration`` (``lakehouse.tables.ensure`` sets it from
    ``lakehouse.retention_hours``), or ``lakehouse.retention_hours`` if that is longer: never shorter than
    either, so time travel to any version inside the window keeps working. Delta lists the whole table, so it
    also deletes files the log never mentions (left by a crashed writer) once they are older than the window.
    ``dry_run`` lists the deletable files (``VACUUM ... DRY RUN``) and deletes nothing.
    """
    name, uri = _name_uri(settings, spec_or_uri)
    path = spark_path(uri)
    start = time.perf_counter()
    table_retention = _interval(_detail(spark, path)["properties"].get("delta.deletedFileRetentionDuration"))
    hours = max(
        settings.lakehouse.retention_hours,
        math.ceil((_DEFAULT_FILE_RETENTION if table_retention is None else table_retention) / timedelta(hours=1)),
    )
    # Delta's safety check refuses a window shorter than the table's delta.deletedFileRetentionDuration, which
    # ``hours`` never is; a window under Delta's default week still runs with the check off, for this call only
    conf = {_VACUUM_LOGGING: "true"}
    if hours < _DEFAULT_FILE_RETENTION / timedelta(hours=1):
        conf[_RETENTION_CHECK] = "false"
    with session_conf(spark, conf):
        if dry_run:
            quoted = path.replace("`", "``")
            listed = spark.sql(f"VACUUM delta.`{quoted}` RETAIN {hours} HOURS DRY RUN").collect()
            paths = tuple(sorted(row[0] for row in listed))
            return VacuumResult(name, len(paths), _sizes(spark, paths), hours, time.perf_counter() - start, True, paths)
        table = _spark_table(spark, path)
        before = table.history(1).select("version").first()[0]
        table.vacuum(float(hours))
    files, size = _vacuum_metrics(spark, path, before)
    return VacuumResult(name, files, size, hours, time.perf_counter() - start)


def _vacuum_metrics(spark: SparkSession, path: str, before: int) -> tuple[int, int | None]:
    """(files deleted, bytes deleted) from the VACUUM START/END commits Delta wrote after version ``before``."""
    from pyspark.sql import functions as F

    commits = (
        _spark_table(spark, path)
        .history(20)
        .where((F.col("version") > before) & F.col("operation").isin("VACUUM START", "VACUUM END"))
        .select("operation", "operationMetrics")
        .collect()
    )
    metrics = {row[0]: row[1] or {} for row in commits}
    files = metrics.get("VACUUM END", {}).get(
        "numDeletedFiles", metrics.get("VACUUM START", {}).get("numFilesToDelete")
    )
    size = metrics.get("VACUUM START", {}).get("sizeOfDataToDelete")
    return int(files or 0), None if size is None else int(size)


def _sizes(spark: SparkSession, paths: tuple[str, ...]) -> int:
    """The total size of the files at ``paths`` (Hadoop file system URIs; directories and vanished files: 0)."""
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    total = 0
    for p in paths:
        hpath = jvm.org.apache.hadoop.fs.Path(p)
        fs = hpath.getFileSystem(conf)
        if fs.exists(hpath):
            total += fs.getFileStatus(hpath).getLen()
    return total


# ---------------------------------------------------------------------------------------------- checkpoint


def checkpoint(spark: SparkSession, settings: Settings, spec_or_uri: TableSpec | str) -> CheckpointResult:
    """Force a Delta checkpoint of the current version, unless the latest checkpoint is already at it.

    Delta writes a checkpoint itself every ``delta.checkpointInterval`` (10) commits of a Spark writer, and at
    each checkpoint it deletes the log files older than the table's ``delta.logRetentionDuration`` that no kept
    version needs. Forcing one (the JVM's ``DeltaLog.checkpoint(snapshot)``, as Delta's post-commit hook does)
    spares readers the replay of the commits since the last one and runs that cleanup on tables that are rarely
    written (or written by delta-rs, which checkpoints every 100 commits).
    """
    name, uri = _name_uri(settings, spec_or_uri)
    path = spark_path(uri)
    start = time.perf_counter()
    jvm = spark._jvm
    log_and_snapshot = jvm.org.apache.spark.sql.delta.DeltaLog.forTableWithSnapshot(spark._jsparkSession, path)
    delta_log, snapshot = log_and_snapshot._1(), log_and_snapshot._2()  # the snapshot of the latest version
    version = snapshot.version()
    before = _log_file_count(spark, path)
    last = delta_log.readLastCheckpointFile()
    if last.isDefined() and last.get().version() == version:
        return CheckpointResult(name, version, before, before, time.perf_counter() - start, written=False)
    delta_log.checkpoint(snapshot, jvm.scala.Option.empty())  # no catalog table: the table is a path
    return CheckpointResult(name, version, before, _log_file_count(spark, path), time.perf_counter() - start)


def _log_file_count(spark: SparkSession, path: str) -> int:
    """The files in the table's ``_delta_log`` (commits, checkpoints, checksums; not Hadoop's hidden ``.crc``)."""
    jvm = spark._jvm
    log = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}/_delta_log")
    fs = log.getFileSystem(spark._jsc.hadoopConfiguration())
    return sum(1 for st in fs.listStatus(log) if st.isFile() and not st.getPath().getName().startswith("."))


# ---------------------------------------------------------------------------------------------- Spark


def spark_path(uri: str) -> str:
    """The table's URI for Spark: ``s3://`` (delta-rs' scheme, as in conf/compose.yaml) is Hadoop's ``s3a://``."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


def table_exists(spark: SparkSession, uri: str) -> bool:
    from delta.tables import DeltaTable as SparkDeltaTable

    return SparkDeltaTable.isDeltaTable(spark, spark_path(uri))


def _spark_table(spark: SparkSession, path: str):
    """delta-spark's ``DeltaTable`` (imported here: the API imports this module for ``as_of`` alone)."""
    from delta.tables import DeltaTable as SparkDeltaTable

    return SparkDeltaTable.forPath(spark, path)


@contextmanager
def session_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    """``values`` set on the session's SQL configuration inside, the previous values (or none) restored after."""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _detail(spark: SparkSession, path: str) -> dict:
    """``DESCRIBE DETAIL``: numFiles, sizeInBytes, partitionColumns, properties, ..."""
    row = _spark_table(spark, path).detail().first().asDict()
    row["partitionColumns"] = list(row.get("partitionColumns") or [])
    row["properties"] = dict(row.get("properties") or {})
    return row


# ---------------------------------------------------------------------------------------------- time travel


def as_of(
    settings: Settings,
    uri: TableSpec | str,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    columns: list[str] | None = None,
    filters: list[tuple] | None = None,
) -> pa.Table:
    """The table's rows (those matching DNF ``filters``, if given) at ``version``, or at the last version
    committed at or before ``timestamp``.

    ``timestamp`` is a datetime or an ISO-8601 string (UTC when naive). Raises ``TimeTravelError`` for a version
    that does not exist, that the log retention dropped, or whose files VACUUM deleted, and for a timestamp
    before the oldest version kept.
    """
    dt = open_as_of(settings, uri, version=version, timestamp=timestamp)
    try:
        return dt.to_pyarrow_table(columns=columns, filters=filters)
    except FileNotFoundError as e:
        raise TimeTravelError(
            f"{dt.table_uri}: the files of version {dt.version()} were deleted by VACUUM (retention "
            f"{settings.lakehouse.retention_hours} h; only versions younger than that stay readable): {e}"
        ) from e


def open_as_of(
    settings: Settings, uri: TableSpec | str, *, version: int | None = None, timestamp: datetime | str | None = None
) -> DeltaTable:
    """The table at ``version``, or at the last version committed at or before ``timestamp`` (see ``as_of``)."""
    if (version is None) == (timestamp is None):
        raise ValueError("as_of needs exactly one of version= or timestamp=")
    _, uri = _name_uri(settings, uri)
    if version is not None:
        dt = _open_version(settings, uri, version)
    else:
        ts = _utc(timestamp)
        dt = open_table(settings, uri)
        dt.load_as_version(ts)
        version = dt.version()
        # delta-rs resolves a timestamp before the oldest kept commit to that commit: refuse instead
        if version == 0 or _log_mtime(settings, uri, version - 1) is None:
            first = _log_mtime(settings, uri, version)
            if first is not None and ts < first:
                raise TimeTravelError(
                    f"{uri}: timestamp {ts.isoformat()} is before the oldest version kept, {version} "
                    f"(committed {first.isoformat()})"
                )
    return dt


def _open_version(settings: Settings, uri: str, version: int) -> DeltaTable:
    if version < 0:
        raise TimeTravelError(f"{uri}: no version {version}")
    try:
        return open_table(settings, uri, version)
    except Exception as e:
        latest = open_table(settings, uri).version()  # raises TableNotFoundError if there is no table at all
        if version > latest:
            raise TimeTravelError(f"{uri}: no version {version} yet (latest is {latest})") from e
        oldest = _oldest_version(settings, uri, latest)
        if version < oldest:
            raise TimeTravelError(
                f"{uri}: version {version} is older than the oldest version the log retention kept ({oldest}; "
                f"log retention {settings.lakehouse.log_retention_days} days)"
            ) from e
        raise


def _utc(value: datetime | str) -> datetime:
    ts = datetime.fromisoformat(value) if isinstance(value, str) else value
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- the log


def _interval(raw: str | None) -> timedelta | None:
    """A Delta interval property (``interval 168 hours``, ``interval 1 week 2 days``); None if absent/unparsed."""
    if not raw:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+?)s?\b", raw.lower().removeprefix("interval").strip())
    if not parts or any(unit not in _UNITS for _, unit in parts):
        return None
    return sum((float(n) * _UNITS[unit] for n, unit in parts), timedelta())


def _local_root(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def _s3_log_prefix(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, f"{key.rstrip('/')}/_delta_log/".lstrip("/")


def _log_files(settings: Settings, uri: str) -> list[str]:
    """The names of the files in the table's ``_delta_log``."""
    root = _local_root(uri)
    if root is not None:
        log = root / "_delta_log"
        return sorted(p.name for p in log.iterdir() if p.is_file()) if log.is_dir() else []
    bucket, prefix = _s3_log_prefix(uri)
    pages = s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"].rsplit("/", 1)[-1] for page in pages for obj in page.get("Contents", []))


def _oldest_version(settings: Settings, uri: str, latest: int) -> int:
    """The oldest version the log can still rebuild: 0 while commit 0 is kept, else the oldest checkpoint."""
    names = _log_files(settings, uri)
    if f"{0:020d}.json" in names:
        return 0
    checkpoints = [int(n[:20]) for n in names if re.fullmatch(r"\d{20}\.checkpoint(\.\d+\.\d+)?\.parquet", n)]
    return min(checkpoints, default=latest)


def _log_mtime(settings: Settings, uri: str, version: int) -> datetime | None:
    """When commit ``version`` was written (its file's modification time, as delta-rs uses), None if gone."""
    name = f"{version:020d}.json"
    root = _local_root(uri)
    if root is not None:
        path = root / "_delta_log" / name
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) if path.exists() else None
    bucket, prefix = _s3_log_prefix(uri)
    client = s3_client(settings)
    try:
        return client.head_object(Bucket=bucket, Key=prefix + name)["LastModified"]
    except client.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _name_uri(settings: Settings, spec_or_uri: TableSpec | str) -> tuple[str, str]:
    if isinstance(spec_or_uri, TableSpec):
        return spec_or_uri.full_name, spec_or_uri.uri(settings)
    return spec_or_uri, spec_or_uri


# ---------------------------------------------------------------------------------------------- CLI


def _size(n: int | None) -> str:
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _describe(results: list[OptimizeResult | VacuumResult | CheckpointResult]) -> str:
    parts = []
    for r in results:
        if isinstance(r, OptimizeResult):
            what = "would compact" if r.dry_run else "compacted"
            parts.append(
                f"files {r.files_before} -> {r.files_after} ({_size(r.bytes_before)} -> {_size(r.bytes_after)}), "
                f"{what} {len(r.partitions)} partition(s) [{r.files_removed} -> {r.files_added} files]"
            )
            if r.conflicts:
                parts.append(f"not compacted, concurrent writes: {', '.join(r.conflicts)}")
        elif isinstance(r, VacuumResult):
            what = "vacuumable" if r.dry_run else "vacuumed"
            parts.append(f"{r.files} files {what} ({_size(r.bytes)}, retention {r.retention_hours} h)")
        elif r.written:
            parts.append(f"checkpoint v{r.version}, log files {r.log_files_before} -> {r.log_files_after}")
        else:
            parts.append(f"checkpoint v{r.version} already, log files {r.log_files_after}")
    return "; ".join(parts)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:300]


def run(
    spark: SparkSession,
    settings: Settings,
    action: str,
    specs: list[TableSpec],
    *,
    dry_run: bool = False,
    out=None,
) -> int:
    """Run ``action`` (optimize, vacuum, checkpoint or all) on each table, one line per table. Returns failures."""
    out = out or sys.stdout
    failures = 0
    for spec in specs:
        uri = spec.uri(settings)
        if not table_exists(spark, uri):
            print(f"{spec.full_name}: skipped, table does not exist yet ({uri})", file=out, flush=True)
            continue
        start = time.perf_counter()
        results: list[OptimizeResult | VacuumResult | CheckpointResult] = []
        try:
            if action in ("optimize", "all"):
                results.append(optimize(spark, settings, spec, dry_run=dry_run))
            if action in ("vacuum", "all"):
                results.append(vacuum(spark, settings, spec, dry_run=dry_run))
            if action == "checkpoint" or (action == "all" and not dry_run):
                results.append(checkpoint(spark, settings, spec))
        except Exception as e:  # report it and go on with the other tables
            failures += 1
            done = _describe(results)
            line = f"{spec.full_name}: FAILED {type(e).__name__}: {_first_line(e)}" + (
                f" (after {done})" if done else ""
            )
            print(line, file=out, flush=True)
            continue
        print(f"{spec.full_name}: {_describe(results)}; {time.perf_counter() - start:.2f} s", file=out, flush=True)
    return failures


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.maintenance", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["optimize", "vacuum", "checkpoint", "all"])
    parser.add_argument("--table", action="append", metavar="LAYER.NAME", help="only this table (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be compacted or deleted")
    # delta-rs' VACUUM swept files the log never mentioned only with --full; Delta's always does
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = settings or get_settings()
    catalog = CATALOG
    names = list(dict.fromkeys(args.table)) if args.table else sorted(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        print(
            f"{parser.prog}: unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(catalog))}",
            file=sys.stderr,
        )
        return 2
    spark = _cli_spark(settings)
    try:
        failures = run(spark, settings, args.action, [catalog[n] for n in names], dry_run=args.dry_run)
    finally:
        spark.stop()
    return 1 if failures else 0


def _cli_spark(settings: Settings) -> SparkSession:
    """The CLI's Spark session, its JVM started with stdout on stderr: Delta's VACUUM prints its own summary
    (``Deleted N files and directories ...``) with ``println``, and stdout is one line per table."""
    from lakehouse.spark import get_spark

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # the JVM inherits this process's fd 1 when PySpark launches it
    try:
        return get_spark(settings, "fraud-lakehouse-maintenance")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
