"""Table maintenance: OPTIMIZE (compact small files), VACUUM, checkpoints and log cleanup, time travel.

Streaming micro-batches leave many small files per partition; ``optimize`` rewrites the partitions that hold at
least ``lakehouse.compact_min_files`` of them into files of about ``lakehouse.target_file_mb``. Its commits carry
``dataChange=false``, so change-data readers (``load_cdf``, the ``deltars`` stream source) do not see the
compacted rows again. ``vacuum`` deletes files no version younger than ``lakehouse.retention_hours`` needs, and
``checkpoint_and_cleanup`` writes a checkpoint and drops log files older than ``lakehouse.log_retention_days``.

``python -m lakehouse.maintenance optimize|vacuum|all [--table bronze.transactions ...] [--dry-run]``
(``make optimize``) runs them over the catalog. ``docs/maintenance.md`` has the schedule and the read recipes.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from lakehouse.config import Settings, get_settings
from lakehouse.delta import open_table, table_exists
from lakehouse.storage import s3_client
from lakehouse.tables import TableSpec, load_catalog

# defaults of the Delta protocol when a table does not set the property
_DEFAULT_FILE_RETENTION = timedelta(days=7)
_DEFAULT_LOG_RETENTION = timedelta(days=30)
_COMPACT_ATTEMPTS = 3
_COMMIT = CommitProperties(custom_metadata={"maintenance.job": "lakehouse.maintenance"})
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
    files: tuple[str, ...]  # deleted (or, on a dry run, deletable), relative to the table root
    bytes: int | None  # None when unknown (dry run on object storage)
    retention_hours: int
    seconds: float = 0.0
    dry_run: bool = False


@dataclass(frozen=True)
class CheckpointResult:
    table: str
    version: int
    log_files_before: int
    log_files_after: int
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------- OPTIMIZE


def optimize(
    settings: Settings, spec_or_uri: TableSpec | str, *, min_files: int | None = None, dry_run: bool = False
) -> OptimizeResult:
    """Compact every partition holding at least ``min_files`` (default ``compact_min_files``) small files.

    Files already at the target size do not count. One commit per partition compacted; none if no partition
    qualifies. A partition whose commit keeps conflicting with concurrent rewrites (MERGE; appends never
    conflict) is retried, then left for the next run and listed in ``conflicts``. ``dry_run`` only reports what
    would be compacted.
    """
    name, uri = _name_uri(settings, spec_or_uri)
    threshold = min_files if min_files is not None else settings.lakehouse.compact_min_files
    target = settings.lakehouse.target_file_mb * 1024 * 1024
    start = time.perf_counter()
    dt = open_table(settings, uri)
    cols, before = _add_actions(dt)
    small = Counter(key for key, size in before if size < target)
    chosen = sorted((key for key, n in small.items() if n >= threshold), key=str)
    removed = added = 0
    conflicts: list[tuple] = []
    if not dry_run:
        for key in chosen:
            filters = [(col, "=", _filter_value(value)) for col, value in zip(cols, key, strict=True)]
            dt, metrics = _compact(settings, uri, dt, filters, target)
            if metrics is None:
                conflicts.append(key)
                continue
            removed += metrics["numFilesRemoved"]
            added += metrics["numFilesAdded"]
        after = _add_actions(open_table(settings, uri))[1] if chosen else before
    else:
        removed, after = sum(small[k] for k in chosen), before
    return OptimizeResult(
        table=name,
        files_before=len(before),
        files_after=len(after),
        bytes_before=sum(size for _, size in before),
        bytes_after=sum(size for _, size in after),
        files_removed=removed,
        files_added=added,
        partitions=tuple(_partition_label(cols, key) for key in chosen if key not in conflicts),
        seconds=time.perf_counter() - start,
        dry_run=dry_run,
        conflicts=tuple(_partition_label(cols, key) for key in conflicts),
    )


def _compact(
    settings: Settings, uri: str, dt: DeltaTable, filters: list[tuple[str, str, str]], target: int
) -> tuple[DeltaTable, dict[str, Any] | None]:
    """Compact one partition, retrying on commit conflicts; None metrics if it kept conflicting."""
    for _ in range(_COMPACT_ATTEMPTS):
        try:
            return dt, dt.optimize.compact(
                partition_filters=filters or None, target_size=target, commit_properties=_COMMIT
            )
        except CommitFailedError:
            dt = open_table(settings, uri)
    return dt, None


def _add_actions(dt: DeltaTable) -> tuple[list[str], list[tuple[tuple, int]]]:
    """The partition columns and, per live file, (partition values, size in bytes)."""
    cols = list(dt.metadata().partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=False))
    sizes = actions.column("size_bytes").to_pylist()
    if not cols:
        return cols, [((), size) for size in sizes]
    parts = actions.column("partition").to_pylist()
    return cols, [(tuple(p[c] for c in cols), size) for p, size in zip(parts, sizes, strict=True)]


def _filter_value(value: Any) -> str:
    """A partition value as a delta-rs partition filter string (null partitions match ``""``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _partition_label(cols: list[str], key: tuple) -> str:
    return "/".join(f"{c}={_filter_value(v) or 'null'}" for c, v in zip(cols, key, strict=True)) or "(table)"


# ---------------------------------------------------------------------------------------------- VACUUM


def vacuum(settings: Settings, uri: TableSpec | str, *, dry_run: bool = False, full: bool = False) -> VacuumResult:
    """Delete the files no version younger than the retention window needs; returns them.

    The window is ``lakehouse.retention_hours``, or the table's ``delta.deletedFileRetentionDuration`` if that is
    longer: never shorter than either, so time travel to any version inside the window keeps working.
    ``full`` also sweeps files the log does not mention (not only those removed since the last checkpoint).
    """
    name, uri = _name_uri(settings, uri)
    start = time.perf_counter()
    dt = open_table(settings, uri)
    table_retention = _interval(dt.metadata().configuration.get("delta.deletedFileRetentionDuration"))
    hours = max(
        settings.lakehouse.retention_hours,
        math.ceil((_DEFAULT_FILE_RETENTION if table_retention is None else table_retention) / timedelta(hours=1)),
    )
    files = dt.vacuum(
        retention_hours=hours,
        dry_run=dry_run,
        enforce_retention_duration=True,
        full=full,
        commit_properties=_COMMIT,
    )
    if not files:
        size: int | None = 0
    elif dry_run:
        size = _local_sizes(uri, files)
    else:
        size = _vacuumed_bytes(dt_after=open_table(settings, uri), count=len(files))
    return VacuumResult(name, tuple(files), size, hours, time.perf_counter() - start, dry_run)


def _vacuumed_bytes(dt_after: DeltaTable, count: int) -> int | None:
    """Bytes deleted, from the metrics of the VACUUM START commit delta-rs just wrote."""
    for commit in dt_after.history(20):
        metrics = commit.get("operationMetrics") or {}
        if commit.get("operation") == "VACUUM START" and int(metrics.get("numFilesToDelete", -1)) == count:
            return int(metrics.get("sizeOfDataToDelete", 0))
    return None


def _local_sizes(uri: str, files: list[str]) -> int | None:
    root = _local_root(uri)
    if root is None:
        return None
    return sum((root / f).stat().st_size for f in files if (root / f).exists())


# ---------------------------------------------------------------------------------------------- checkpoint


def checkpoint_and_cleanup(settings: Settings, uri: TableSpec | str) -> CheckpointResult:
    """Write a checkpoint of the current version, then delete log files older than the log retention.

    The retention is the table's ``delta.logRetentionDuration`` (what delta-rs applies); if that is shorter than
    ``lakehouse.log_retention_days`` the cleanup is skipped, so the log never keeps less than configured.
    """
    name, uri = _name_uri(settings, uri)
    start = time.perf_counter()
    dt = open_table(settings, uri)
    before = len(_log_files(settings, uri))
    dt.create_checkpoint()
    notes: list[str] = []
    wanted = timedelta(days=settings.lakehouse.log_retention_days)
    table_retention = _interval(dt.metadata().configuration.get("delta.logRetentionDuration"))
    effective = _DEFAULT_LOG_RETENTION if table_retention is None else table_retention
    if effective < wanted:
        notes.append(
            f"log cleanup skipped: delta.logRetentionDuration ({effective}) is shorter than "
            f"lakehouse.log_retention_days ({settings.lakehouse.log_retention_days} days)"
        )
    else:
        if effective > wanted:
            notes.append(f"log kept for the table's delta.logRetentionDuration ({effective})")
        dt.cleanup_metadata()
    after = len(_log_files(settings, uri))
    return CheckpointResult(name, dt.version(), before, after, time.perf_counter() - start, tuple(notes))


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
            parts.append(f"{len(r.files)} files {what} ({_size(r.bytes)}, retention {r.retention_hours} h)")
        else:
            parts.append(f"checkpoint v{r.version}, log files {r.log_files_before} -> {r.log_files_after}")
            parts.extend(r.notes)
    return "; ".join(parts)


def run(
    settings: Settings,
    action: str,
    specs: list[TableSpec],
    *,
    dry_run: bool = False,
    full: bool = False,
    out=None,
) -> int:
    """Run ``action`` (optimize, vacuum, checkpoint or all) on each table, one line per table. Returns failures."""
    out = out or sys.stdout
    failures = 0
    for spec in specs:
        uri = spec.uri(settings)
        if not table_exists(settings, uri):
            print(f"{spec.full_name}: skipped, table does not exist yet ({uri})", file=out, flush=True)
            continue
        start = time.perf_counter()
        results: list[OptimizeResult | VacuumResult | CheckpointResult] = []
        try:
            if action in ("optimize", "all"):
                results.append(optimize(settings, spec, dry_run=dry_run))
            if action in ("vacuum", "all"):
                results.append(vacuum(settings, spec, dry_run=dry_run, full=full))
            if action == "checkpoint" or (action == "all" and not dry_run):
                results.append(checkpoint_and_cleanup(settings, spec))
        except Exception as e:  # report it and go on with the other tables
            failures += 1
            done = _describe(results)
            print(f"{spec.full_name}: FAILED {type(e).__name__}: {e}" + (f" (after {done})" if done else ""), file=out)
            continue
        print(f"{spec.full_name}: {_describe(results)}; {time.perf_counter() - start:.2f} s", file=out, flush=True)
    return failures


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.maintenance", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["optimize", "vacuum", "checkpoint", "all"])
    parser.add_argument("--table", action="append", metavar="LAYER.NAME", help="only this table (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be compacted or deleted")
    parser.add_argument("--full", action="store_true", help="VACUUM also files the log does not mention")
    args = parser.parse_args(argv)
    settings = settings or get_settings()
    catalog = load_catalog()
    names = args.table or sorted(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(catalog))}")
    failures = run(settings, args.action, [catalog[n] for n in names], dry_run=args.dry_run, full=args.full)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
