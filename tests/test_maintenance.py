"""OPTIMIZE, VACUUM and checkpoints through delta-spark, time travel through delta-rs, on tables under tmp_path
(one test on the S3 server of the stack)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lakehouse import PROJECT_ROOT, catalog, maintenance, tables
from lakehouse.config import Settings
from lakehouse.maintenance import TimeTravelError

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("day", pa.string())])
SPEC = tables.TableSpec("test", "events", SCHEMA, ("day",), "maintenance test table")
CDF_SPEC = tables.TableSpec("test", "changes", SCHEMA, ("day",), change_data_feed=True)
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def local(settings: Settings, tmp_path: Path, **lakehouse) -> Settings:
    lh = settings.lakehouse.model_copy(update={"root": str(tmp_path / "lake"), **lakehouse})
    return settings.model_copy(update={"lakehouse": lh})


def append(spark, uri: str, rows: list[tuple[int, str | None]]) -> None:
    """One Spark commit writing one Parquet file per row: the small files of many streaming micro-batches."""
    data = spark.sparkContext.parallelize(rows, len(rows))  # one row per slice, so one file per row
    spark.createDataFrame(data, "id bigint, day string").write.format("delta").mode("append").save(uri)


def layout(per_day: dict[str | None, int]) -> list[tuple[int, str | None]]:
    rows, n = [], 0
    for day, count in per_day.items():
        rows += [(n + i, day) for i in range(count)]
        n += count
    return rows


def files_per_partition(uri: str) -> dict[str | None, set[str]]:
    """The live files per ``day``, as delta-rs reads the log (a second opinion on what Spark committed)."""
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    out: dict[str | None, set[str]] = {}
    for path, day in zip(actions["path"].to_pylist(), actions["partition.day"].to_pylist(), strict=True):
        out.setdefault(day, set()).add(path)
    return out


def counts(uri: str) -> dict[str | None, int]:
    return {day: len(paths) for day, paths in files_per_partition(uri).items()}


def version(uri: str) -> int:
    return DeltaTable(uri).version()


def rows(spark, uri: str, **as_of) -> list[tuple]:
    reader = spark.read.format("delta")
    if "version" in as_of:
        reader = reader.option("versionAsOf", as_of["version"])
    return sorted((r.id, r.day) for r in reader.load(uri).collect())


def arrow_rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(table["id"].to_pylist(), table["day"].to_pylist(), strict=True))


def commit_actions(uri: str, v: int) -> list[dict]:
    import json

    lines = (Path(uri) / "_delta_log" / f"{v:020d}.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------------------------------------- OPTIMIZE


def test_optimize_compacts_the_busy_partitions_and_leaves_quiet_ones(spark, settings, tmp_path):
    s = local(settings, tmp_path)  # compact_min_files 8
    uri = tables.ensure(s, SPEC)
    append(spark, uri, layout({"2026-01-01": 30, "2026-01-02": 12, None: 9, "2026-01-03": 3}))
    before_version, before_rows, before = version(uri), rows(spark, uri), files_per_partition(uri)
    assert counts(uri) == {"2026-01-01": 30, "2026-01-02": 12, None: 9, "2026-01-03": 3}

    planned = maintenance.optimize(spark, s, SPEC, dry_run=True)
    assert (planned.files_before, planned.files_after, planned.files_removed, planned.files_added) == (54, 54, 51, 0)
    assert planned.partitions == ("day=2026-01-01", "day=2026-01-02", "day=null") and planned.dry_run
    assert files_per_partition(uri) == before and version(uri) == before_version

    result = maintenance.optimize(spark, s, SPEC)
    assert counts(uri) == {"2026-01-01": 1, "2026-01-02": 1, None: 1, "2026-01-03": 3}
    assert files_per_partition(uri)["2026-01-03"] == before["2026-01-03"]  # below the threshold: the same files
    assert (result.files_before, result.files_after, result.files_removed, result.files_added) == (54, 6, 51, 3)
    assert result.partitions == ("day=2026-01-01", "day=2026-01-02", "day=null") and result.conflicts == ()
    assert result.bytes_after < result.bytes_before
    assert rows(spark, uri) == before_rows
    # one OPTIMIZE commit whose every action is dataChange=false
    assert version(uri) == before_version + 1
    actions = commit_actions(uri, before_version + 1)
    assert next(a["commitInfo"]["operation"] for a in actions if "commitInfo" in a) == "OPTIMIZE"
    changes = [a.get("add") or a.get("remove") for a in actions if "add" in a or "remove" in a]
    assert len(changes) == 54 and not any(c["dataChange"] for c in changes)
    # until VACUUM, the version before the compaction reads the same, in Spark and with delta-rs (the API)
    assert rows(spark, uri, version=before_version) == before_rows
    assert arrow_rows(maintenance.as_of(s, uri, version=before_version)) == before_rows

    again = maintenance.optimize(spark, s, SPEC)  # idempotent: nothing left to compact, no commit
    assert again.partitions == () and again.files_removed == 0 and version(uri) == before_version + 1
    assert maintenance.optimize(spark, s, SPEC, min_files=3).partitions == ("day=2026-01-03",)
    assert counts(uri) == {"2026-01-01": 1, "2026-01-02": 1, None: 1, "2026-01-03": 1}


def test_optimize_runs_alongside_streaming_appends(spark, settings, tmp_path):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, SPEC)
    append(spark, uri, [(i, "a") for i in range(40)])
    stop, written = threading.Event(), []

    def stream() -> None:
        n = 1000
        while not stop.is_set():
            append(spark, uri, [(n, "a")])
            written.append(n)
            n += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        time.sleep(1)
        first = version(uri)
        result = maintenance.optimize(spark, s, SPEC)
        appended_during = version(uri) - first - 1
    finally:
        stop.set()
        writer.join()
    assert result.partitions == ("day=a",) and result.conflicts == () and result.files_removed >= 40
    assert appended_during >= 1, "no append committed while OPTIMIZE ran: the test proved nothing"
    assert rows(spark, uri) == [*((i, "a") for i in range(40)), *((n, "a") for n in written)]


def test_optimize_leaves_a_partition_that_keeps_conflicting(spark, settings, tmp_path, monkeypatch):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, SPEC)
    append(spark, uri, layout({"a": 8, "b": 8}))
    real, calls = maintenance._compact, []

    def compact(spark_, path, predicate):
        calls.append(predicate)
        if "'b'" in predicate:  # as Delta reports a MERGE that rewrote partition b first
            raise RuntimeError(
                "[DELTA_CONCURRENT_DELETE_READ] ConcurrentDeleteReadException: This transaction attempted to read "
                "one or more files that were deleted (for example day=b/part-00000.parquet) by a concurrent update."
            )
        return real(spark_, path, predicate)

    monkeypatch.setattr(maintenance, "_compact", compact)
    result = maintenance.optimize(spark, s, SPEC)
    assert result.partitions == ("day=a",) and result.conflicts == ("day=b",)
    assert calls == ["(`day` = 'a') OR (`day` = 'b')", "(`day` = 'a')", *["(`day` = 'b')"] * 3]
    assert counts(uri) == {"a": 1, "b": 8}
    out = io.StringIO()
    maintenance.run(spark, s, "optimize", [SPEC], out=out)
    assert "compacted 0 partition(s)" in out.getvalue()
    assert "not compacted, concurrent writes: day=b" in out.getvalue()


@pytest.mark.parametrize("change_feed", [True, False], ids=["readChangeFeed", "appends"])
def test_a_delta_stream_does_not_deliver_compacted_rows_again(spark, settings, tmp_path, change_feed):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, CDF_SPEC)
    sink, checkpoint = str(tmp_path / "sink"), str(tmp_path / "checkpoint")

    def run_stream() -> None:
        reader = spark.readStream.format("delta")
        if change_feed:
            reader = reader.option("readChangeFeed", "true")
        writer = reader.load(uri).writeStream.format("delta").option("checkpointLocation", checkpoint)
        query = writer.trigger(availableNow=True).start(sink)
        query.awaitTermination()
        assert query.exception() is None

    append(spark, uri, [(i, "a") for i in range(10)])  # version 1
    run_stream()
    append(spark, uri, [(i, "a") for i in range(10, 20)])  # version 2
    optimized = maintenance.optimize(spark, s, CDF_SPEC)  # version 3 rewrites all 20 rows into one file
    assert optimized.files_removed == 20 and optimized.files_added == 1
    append(spark, uri, [(20, "a")])  # version 4
    run_stream()

    delivered = spark.read.format("delta").load(sink)
    assert sorted(r.id for r in delivered.select("id").collect()) == list(range(21))  # every row exactly once
    if change_feed:
        assert {r[0] for r in delivered.select("_change_type").distinct().collect()} == {"insert"}
        assert {r[0] for r in delivered.select("_commit_version").distinct().collect()} == {1, 2, 4}


# ---------------------------------------------------------------------------------------------- VACUUM


def stray_file(uri: str, name: str, age: timedelta) -> Path:
    """A data file no commit mentions (as a crashed writer leaves), modified ``age`` ago."""
    partition = Path(uri) / "day=a"
    target = partition / name
    shutil.copy(next(partition.glob("part-*.parquet")), target)
    when = (datetime.now(UTC) - age).timestamp()
    os.utime(target, (when, when))
    return target


def test_vacuum_keeps_the_retention_window(spark, settings, tmp_path):
    s = local(settings, tmp_path)  # retention 168 h, on the table too
    uri = tables.ensure(s, SPEC)
    append(spark, uri, [(i, "a") for i in range(10)])
    previous = version(uri)
    maintenance.optimize(spark, s, SPEC)
    compacted_away = [Path(uri) / p for p in DeltaTable(uri, version=previous).file_uris()]
    old = stray_file(uri, "part-stray-old.parquet", timedelta(days=8))
    new = stray_file(uri, "part-stray-new.parquet", timedelta(days=6))

    planned = maintenance.vacuum(spark, s, SPEC, dry_run=True)
    assert (planned.files, planned.retention_hours, planned.dry_run) == (1, 168, True)
    assert [Path(p).name for p in planned.paths] == [old.name] and planned.bytes == old.stat().st_size
    assert old.exists()

    result = maintenance.vacuum(spark, s, SPEC)
    assert (result.files, result.bytes, result.retention_hours) == (1, planned.bytes, 168)
    assert not old.exists() and new.exists() and all(Path(p).exists() for p in compacted_away)
    assert rows(spark, uri, version=previous) == [(i, "a") for i in range(10)]
    assert arrow_rows(maintenance.as_of(s, uri, version=previous)) == [(i, "a") for i in range(10)]

    # a lower setting never undercuts the table's own delta.deletedFileRetentionDuration (168 h here)
    lower = maintenance.vacuum(spark, local(settings, tmp_path, retention_hours=0), SPEC)
    assert (lower.files, lower.retention_hours) == (0, 168) and new.exists()
    assert spark.conf.get(RETENTION_CHECK, None) is None


def test_vacuum_with_zero_retention_deletes_what_optimize_replaced(spark, settings, tmp_path):
    s = local(settings, tmp_path, retention_hours=0)  # the table is created with a 0 h retention too
    uri = tables.ensure(s, SPEC)
    append(spark, uri, layout({"a": 10, "b": 2}))
    previous, before_rows = version(uri), rows(spark, uri)
    replaced = [Path(uri) / p for p in files_per_partition(uri)["a"]]
    maintenance.optimize(spark, s, SPEC)

    planned = maintenance.vacuum(spark, s, SPEC, dry_run=True)  # deletes nothing
    assert (planned.files, planned.retention_hours, planned.dry_run) == (10, 0, True)
    assert sorted(Path(p).name for p in planned.paths) == sorted(p.name for p in replaced)
    assert planned.bytes == sum(p.stat().st_size for p in replaced)
    assert arrow_rows(maintenance.as_of(s, uri, version=previous)) == before_rows
    # Spark itself refuses to travel further back than the table's delta.deletedFileRetentionDuration
    with pytest.raises(Exception, match="DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_DURATION"):
        rows(spark, uri, version=previous)

    result = maintenance.vacuum(spark, s, SPEC)
    assert (result.files, result.bytes, result.retention_hours, result.dry_run) == (10, planned.bytes, 0, False)
    assert not any(p.exists() for p in replaced)
    assert rows(spark, uri) == before_rows
    assert spark.conf.get(RETENTION_CHECK, None) is None  # turned off for the call only
    with pytest.raises(TimeTravelError, match="deleted by VACUUM"):
        maintenance.as_of(s, uri, version=previous)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_delta_checkpoints_and_drops_expired_log_files_and_as_of_says_so(spark, settings, tmp_path):
    s = local(settings, tmp_path)  # log retention 30 days
    uri = tables.ensure(s, SPEC)  # version 0
    log = Path(uri) / "_delta_log"
    for i in range(1, 10):  # versions 1..9 from delta-rs (which checkpoints every 100 commits only)
        write_deltalake(uri, pa.table({"id": [i], "day": ["a"]}, schema=SCHEMA), mode="append", partition_by=["day"])
    assert not list(log.glob("*.checkpoint.parquet"))
    append(spark, uri, [(10, "a")])  # version 10: Delta checkpoints every delta.checkpointInterval (10) commits
    assert (log / f"{10:020d}.checkpoint.parquet").exists()
    same = maintenance.checkpoint(spark, s, SPEC)
    assert (same.version, same.written, same.log_files_before) == (10, False, same.log_files_after)

    append(spark, uri, [(11, "a")])  # version 11
    forced = maintenance.checkpoint(spark, s, SPEC)
    assert (forced.version, forced.written) == (11, True)
    assert forced.log_files_after == forced.log_files_before + 1
    assert (log / f"{11:020d}.checkpoint.parquet").exists()

    old = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    for f in log.glob("0*"):  # versions 0..10 committed 40 days ago, 11 inside the 30 days
        if int(f.name[:20]) <= 10:
            os.utime(f, (old, old))
    append(spark, uri, [(12, "a")])  # version 12
    cleaned = maintenance.checkpoint(spark, s, SPEC)  # checkpoint 12, and Delta's cleanup of the expired log
    assert (cleaned.version, cleaned.written) == (12, True) and cleaned.log_files_after < cleaned.log_files_before
    assert sorted(f.name for f in log.glob("0*")) == [  # the log now starts at checkpoint 11
        f"{v:020d}.{kind}" for v in (11, 12) for kind in ("checkpoint.parquet", "crc", "json")
    ]

    assert arrow_rows(maintenance.as_of(s, uri, version=12)) == [(i, "a") for i in range(1, 13)]
    assert rows(spark, uri, version=11) == [(i, "a") for i in range(1, 12)]
    with pytest.raises(TimeTravelError, match=r"older than the oldest version the log retention kept \(11"):
        maintenance.as_of(s, uri, version=3)
    with pytest.raises(TimeTravelError, match="before the oldest version kept, 11"):
        maintenance.as_of(s, uri, timestamp=datetime.now(UTC) - timedelta(days=45))


# ---------------------------------------------------------------------------------------------- time travel


def test_as_of_by_version_and_by_timestamp(spark, settings, tmp_path):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, SPEC)
    append(spark, uri, [(1, "a")])  # version 1
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    append(spark, uri, [(2, "a")])  # version 2
    maintenance.optimize(spark, s, SPEC, min_files=2)  # version 3

    assert arrow_rows(maintenance.as_of(s, uri, version=1)) == [(1, "a")]
    assert arrow_rows(maintenance.as_of(s, SPEC, version=3)) == [(1, "a"), (2, "a")]
    assert maintenance.as_of(s, uri, version=0).num_rows == 0
    assert arrow_rows(maintenance.as_of(s, uri, timestamp=between)) == [(1, "a")]
    assert arrow_rows(maintenance.as_of(s, uri, timestamp=between.isoformat())) == [(1, "a")]
    naive = between.replace(tzinfo=None).isoformat()  # naive: UTC
    assert arrow_rows(maintenance.as_of(s, uri, timestamp=naive)) == [(1, "a")]
    assert maintenance.as_of(s, uri, timestamp=datetime.now(UTC), columns=["id"]).column_names == ["id"]

    with pytest.raises(TimeTravelError, match="before the oldest version kept"):
        maintenance.as_of(s, uri, timestamp="2001-01-01T00:00:00Z")
    with pytest.raises(TimeTravelError, match="no version 9 yet"):
        maintenance.as_of(s, uri, version=9)
    with pytest.raises(ValueError, match="exactly one"):
        maintenance.as_of(s, uri, version=1, timestamp=between)


# ---------------------------------------------------------------------------------------------- CLI


def test_run_prints_one_line_per_table(spark, settings, tmp_path, monkeypatch):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, SPEC)
    append(spark, uri, [(i, "a") for i in range(9)])  # version 1
    missing = tables.TableSpec("test", "missing", SCHEMA)

    out = io.StringIO()
    assert maintenance.run(spark, s, "all", [SPEC, missing], dry_run=True, out=out) == 0
    dry = out.getvalue().splitlines()
    assert dry[0].startswith("test.events: files 9 -> 9 (")
    assert "would compact 1 partition(s) [9 -> 0 files]; 0 files vacuumable (0 B, retention 168 h); " in dry[0]
    assert version(uri) == 1

    out = io.StringIO()
    assert maintenance.run(spark, s, "all", [SPEC, missing], out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    # OPTIMIZE is version 2, VACUUM START/END 3 and 4, then the checkpoint of version 4
    assert lines[0].startswith("test.events: files 9 -> 1 (") and "compacted 1 partition(s) [9 -> 1 files]" in lines[0]
    assert "0 files vacuumed (0 B, retention 168 h); checkpoint v4, log files " in lines[0]
    assert lines[1] == f"test.missing: skipped, table does not exist yet ({missing.uri(s)})"

    def broken(*args, **kwargs):
        raise RuntimeError("boom\n\tat some.java.Frame")

    monkeypatch.setattr(maintenance, "vacuum", broken)
    out = io.StringIO()
    assert maintenance.run(spark, s, "all", [SPEC], out=out) == 1
    assert out.getvalue().startswith("test.events: FAILED RuntimeError: boom (after files 1 -> 1 (")
    assert out.getvalue().count("\n") == 1


def test_cli_module_runs_over_the_catalog(settings, tmp_path):
    s = local(settings, tmp_path)
    spec = catalog.get("bronze.dead_letter")
    uri = tables.ensure(s, spec)
    now = datetime.now(UTC)
    for i in range(8):  # 8 one-row commits, as the bronze stream writes them
        record = {
            "source_topic": "transactions",
            "source_partition": 0,
            "source_offset": i,
            "key": "k",
            "payload": b"{",
            "reason": "malformed_json",
            "detail": "",
            "log_time": now,
            "failed_at": now,
            "log_date": now.date(),
        }
        data = pa.Table.from_pylist([record], schema=spec.schema)
        write_deltalake(uri, data, mode="append", partition_by=list(spec.partition_by))
    env = {**os.environ, "LAKEHOUSE_PROFILE": "test", "LAKEHOUSE__LAKEHOUSE__ROOT": s.lakehouse.root}
    cmd = [sys.executable, "-m", "lakehouse.maintenance"]

    done = subprocess.run([*cmd, "all"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(catalog.CATALOG)
    line = next(line for line in lines if line.startswith("bronze.dead_letter: "))
    assert line.startswith("bronze.dead_letter: files 8 -> 1 (") and "compacted 1 partition(s)" in line
    assert "0 files vacuumed (0 B, retention 168 h); checkpoint v11" in line
    assert "bronze.transactions: skipped, table does not exist yet" in done.stdout
    assert "Traceback" not in done.stderr
    assert DeltaTable(uri).to_pyarrow_table().num_rows == 8

    started = time.perf_counter()
    bad = subprocess.run([*cmd, "vacuum", "--table", "no.such"], env=env, cwd=PROJECT_ROOT, capture_output=True)
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().count("\n") == 1 and b"unknown table(s) no.such; known: " in bad.stderr
    assert time.perf_counter() - started < 30  # refused before any Spark session starts


# ---------------------------------------------------------------------------------------------- S3


def test_maintenance_of_a_table_on_the_s3_server(spark, stack, tmp_path):
    """``s3://`` (delta-rs) and ``s3a://`` (Spark) name the same table on the stack's S3 server."""
    lh = stack.lakehouse.model_copy(update={"root": f"s3://{stack.s3.bucket}/tests/{tmp_path.name}"})
    s = stack.model_copy(update={"lakehouse": lh})
    uri = tables.ensure(s, SPEC)
    path = maintenance.spark_path(uri)
    assert path.startswith("s3a://")
    append(spark, path, [(i, "a") for i in range(9)])  # version 1

    out = io.StringIO()
    assert maintenance.run(spark, s, "all", [SPEC], out=out) == 0, out.getvalue()
    assert out.getvalue().startswith("test.events: files 9 -> 1 (")
    assert "compacted 1 partition(s) [9 -> 1 files]; 0 files vacuumed (0 B, retention 168 h); checkpoint v4" in (
        out.getvalue()
    )
    assert rows(spark, path) == [(i, "a") for i in range(9)]
    assert arrow_rows(maintenance.as_of(s, uri, version=1)) == [(i, "a") for i in range(9)]
    planned = maintenance.vacuum(spark, s, SPEC, dry_run=True)
    assert (planned.files, planned.bytes) == (0, 0)
