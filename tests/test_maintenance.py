"""OPTIMIZE, VACUUM, checkpoints and time travel on local tables under tmp_path (no services needed)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError
from deltalake.table import TableOptimizer

from lakehouse import PROJECT_ROOT, delta, maintenance, tables
from lakehouse.config import Settings
from lakehouse.maintenance import TimeTravelError

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("day", pa.string())])
SPEC = tables.TableSpec("test", "events", SCHEMA, ("day",), "maintenance test table")
CDF_SPEC = tables.TableSpec("test", "changes", SCHEMA, ("day",), change_data_feed=True)


def local(settings: Settings, tmp_path: Path, **lakehouse) -> Settings:
    lh = settings.lakehouse.model_copy(update={"root": str(tmp_path), **lakehouse})
    return settings.model_copy(update={"lakehouse": lh})


def append(s: Settings, uri: str, ids: list[int], day: str | None, batch_id: int) -> None:
    data = pa.table({"id": ids, "day": [day] * len(ids)}, schema=SCHEMA)
    assert delta.write_batch(s, uri, data, app_id="test", batch_id=batch_id, partition_by=["day"])


def fill(s: Settings, spec: tables.TableSpec, per_day: dict[str | None, int]) -> str:
    """One small commit per row, round-robin over the partitions: the streaming small-file pattern."""
    uri = tables.ensure(s, spec)
    batch, todo = 0, dict(per_day)
    while any(todo.values()):
        for day, left in todo.items():
            if left:
                append(s, uri, [batch], day, batch)
                todo[day], batch = left - 1, batch + 1
    return uri


def files_per_partition(s: Settings, uri: str) -> dict[str | None, set[str]]:
    actions = pa.table(delta.open_table(s, uri).get_add_actions(flatten=True))
    out: dict[str | None, set[str]] = {}
    for path, day in zip(actions["path"].to_pylist(), actions["partition.day"].to_pylist(), strict=True):
        out.setdefault(day, set()).add(path)
    return out


def rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(table["id"].to_pylist(), table["day"].to_pylist(), strict=True), key=lambda r: r[0])


def test_optimize_leaves_one_file_per_busy_partition_and_skips_quiet_ones(settings, tmp_path):
    s = local(settings, tmp_path)  # compact_min_files 8
    uri = fill(s, SPEC, {"2026-01-01": 30, "2026-01-02": 12, None: 9, "2026-01-03": 3})
    before_rows = rows(delta.read_arrow(s, uri))
    before = files_per_partition(s, uri)
    assert {k: len(v) for k, v in before.items()} == {"2026-01-01": 30, "2026-01-02": 12, None: 9, "2026-01-03": 3}

    planned = maintenance.optimize(s, SPEC, dry_run=True)
    assert planned.files_removed == 51 and planned.files_after == 54
    assert files_per_partition(s, uri) == before

    result = maintenance.optimize(s, SPEC)
    after = files_per_partition(s, uri)
    assert {k: len(v) for k, v in after.items()} == {"2026-01-01": 1, "2026-01-02": 1, None: 1, "2026-01-03": 3}
    assert after["2026-01-03"] == before["2026-01-03"]  # below the threshold: the very same files
    assert (result.files_before, result.files_after, result.files_removed, result.files_added) == (54, 6, 51, 3)
    assert set(result.partitions) == {"day=2026-01-01", "day=2026-01-02", "day=null"}
    assert result.bytes_after < result.bytes_before
    assert rows(delta.read_arrow(s, uri)) == before_rows
    assert delta.history(s, uri, 1)[0]["operation"] == "OPTIMIZE"

    again = maintenance.optimize(s, SPEC)  # idempotent: nothing left to compact, no commit
    assert again.partitions == () and again.files_removed == 0
    assert delta.history(s, uri, 1)[0]["operation"] == "OPTIMIZE"
    assert maintenance.optimize(s, SPEC, min_files=3).partitions == ("day=2026-01-03",)


def test_optimize_runs_alongside_streaming_appends(settings, tmp_path):
    s = local(settings, tmp_path)
    uri = fill(s, SPEC, {"a": 40})
    stop, written = threading.Event(), []

    def stream() -> None:
        batch = 1000
        while not stop.is_set():
            append(s, uri, [batch], "a", batch)
            written.append(batch)
            batch += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        time.sleep(0.2)
        result = maintenance.optimize(s, SPEC)
    finally:
        stop.set()
        writer.join()
    assert result.partitions == ("day=a",) and result.conflicts == () and result.files_removed >= 40
    assert written and sorted(delta.read_arrow(s, uri)["id"].to_pylist()) == [*range(40), *written]


def test_optimize_leaves_a_partition_that_keeps_conflicting(settings, tmp_path, monkeypatch):
    s = local(settings, tmp_path)
    uri = fill(s, SPEC, {"a": 8, "b": 8})
    real = TableOptimizer.compact
    calls = []

    def compact(self, partition_filters=None, **kwargs):
        calls.append(partition_filters)
        if partition_filters == [("day", "=", "b")]:
            raise CommitFailedError("Commit failed: a concurrent transaction deleted data this operation read.")
        return real(self, partition_filters, **kwargs)

    monkeypatch.setattr(TableOptimizer, "compact", compact)
    result = maintenance.optimize(s, SPEC)
    assert result.partitions == ("day=a",) and result.conflicts == ("day=b",)
    assert calls.count([("day", "=", "b")]) == 3
    assert {k: len(v) for k, v in files_per_partition(s, uri).items()} == {"a": 1, "b": 8}
    out = io.StringIO()
    maintenance.run(s, "optimize", [SPEC], out=out)
    assert "not compacted, concurrent writes: day=b" in out.getvalue()


def test_change_data_feed_does_not_see_compacted_rows_again(settings, tmp_path):
    s = local(settings, tmp_path)
    uri = fill(s, CDF_SPEC, {"a": 10})
    first = delta.open_table(s, uri).version()
    maintenance.optimize(s, CDF_SPEC)
    append(s, uri, [100], "a", 100)
    feed = pa.table(delta.open_table(s, uri).load_cdf(starting_version=1).read_all())
    assert sorted(feed["id"].to_pylist()) == [*range(10), 100]
    assert set(feed["_change_type"].to_pylist()) == {"insert"}
    optimize_version = first + 1
    only = pa.table(delta.open_table(s, uri).load_cdf(optimize_version, optimize_version).read_all())
    assert only.num_rows == 0


def test_vacuum_keeps_the_retention_window(settings, tmp_path):
    s = local(settings, tmp_path)  # retention 168 h
    uri = fill(s, SPEC, {"a": 10})
    previous = delta.open_table(s, uri).version()
    maintenance.optimize(s, SPEC)

    assert maintenance.vacuum(s, SPEC, dry_run=True).files == ()
    result = maintenance.vacuum(s, SPEC)
    assert result.files == () and result.retention_hours == 168
    assert rows(maintenance.as_of(s, uri, version=previous)) == [(i, "a") for i in range(10)]

    # a lower setting never undercuts the table's own delta.deletedFileRetentionDuration (168 h here)
    assert maintenance.vacuum(local(settings, tmp_path, retention_hours=0), SPEC).files == ()


def test_vacuum_with_zero_retention_deletes_the_old_files(settings, tmp_path):
    s = local(settings, tmp_path, retention_hours=0)  # the table is created with a 0 h retention too
    uri = fill(s, SPEC, {"a": 10, "b": 2})
    previous = delta.open_table(s, uri).version()
    before_rows = rows(delta.read_arrow(s, uri))
    maintenance.optimize(s, SPEC)

    planned = maintenance.vacuum(s, SPEC, dry_run=True)
    assert len(planned.files) == 10 and planned.bytes and planned.dry_run
    result = maintenance.vacuum(s, SPEC)
    assert sorted(result.files) == sorted(planned.files) and result.retention_hours == 0
    assert result.bytes == planned.bytes
    assert not any((Path(uri) / f).exists() for f in result.files)
    assert rows(delta.read_arrow(s, uri)) == before_rows
    with pytest.raises(TimeTravelError, match="deleted by VACUUM"):
        maintenance.as_of(s, uri, version=previous)


def test_as_of_by_version_and_by_timestamp(settings, tmp_path):
    s = local(settings, tmp_path)
    uri = tables.ensure(s, SPEC)
    append(s, uri, [1], "a", 0)  # version 1
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    append(s, uri, [2], "a", 1)  # version 2
    maintenance.optimize(s, SPEC, min_files=2)  # version 3

    assert rows(maintenance.as_of(s, uri, version=1)) == [(1, "a")]
    assert rows(maintenance.as_of(s, SPEC, version=3)) == [(1, "a"), (2, "a")]
    assert maintenance.as_of(s, uri, version=0).num_rows == 0
    assert rows(maintenance.as_of(s, uri, timestamp=between)) == [(1, "a")]
    assert rows(maintenance.as_of(s, uri, timestamp=between.isoformat())) == [(1, "a")]
    naive = between.replace(tzinfo=None).isoformat()  # naive: UTC
    assert rows(maintenance.as_of(s, uri, timestamp=naive)) == [(1, "a")]
    assert maintenance.as_of(s, uri, timestamp=datetime.now(UTC), columns=["id"]).column_names == ["id"]

    with pytest.raises(TimeTravelError, match="before the oldest version kept"):
        maintenance.as_of(s, uri, timestamp="2001-01-01T00:00:00Z")
    with pytest.raises(TimeTravelError, match="no version 9 yet"):
        maintenance.as_of(s, uri, version=9)
    with pytest.raises(ValueError, match="exactly one"):
        maintenance.as_of(s, uri, version=1, timestamp=between)


def test_checkpoint_and_cleanup_drops_expired_log_and_as_of_says_so(settings, tmp_path):
    s = local(settings, tmp_path)  # log retention 30 days
    uri = fill(s, SPEC, {"a": 5})  # versions 0..5
    log = Path(uri) / "_delta_log"
    fresh = maintenance.checkpoint_and_cleanup(s, SPEC)
    assert fresh.version == 5 and fresh.log_files_after == fresh.log_files_before + 2  # + checkpoint, _last_checkpoint
    assert (log / f"{5:020d}.checkpoint.parquet").exists()

    old = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    for v in range(3):  # versions 0..2 committed 40 days ago: version 3 (inside the window) still needs them
        os.utime(log / f"{v:020d}.json", (old, old))
    kept = maintenance.checkpoint_and_cleanup(s, SPEC)
    assert kept.log_files_after == kept.log_files_before and (log / f"{0:020d}.json").exists()

    for f in log.glob("0*"):  # all of versions 0..5, checkpoint included, 40 days old
        os.utime(f, (old, old))
    append(s, uri, [99], "a", 99)  # delta-rs' post-commit hook already drops what checkpoint 5 made expendable
    result = maintenance.checkpoint_and_cleanup(s, SPEC)
    assert (result.version, result.log_files_after) == (6, 3)
    assert sorted(f.name for f in log.iterdir() if f.name.startswith("0")) == [
        f"{6:020d}.checkpoint.parquet",
        f"{6:020d}.json",
    ]

    assert rows(maintenance.as_of(s, uri, version=6)) == [*((i, "a") for i in range(5)), (99, "a")]
    with pytest.raises(TimeTravelError, match=r"older than the oldest version the log retention kept \(6"):
        maintenance.as_of(s, uri, version=3)
    # delta-rs alone would silently answer with version 6 here
    with pytest.raises(TimeTravelError, match="before the oldest version kept, 6"):
        maintenance.as_of(s, uri, timestamp=datetime.now(UTC) - timedelta(days=35))


def test_cli_over_a_tmp_catalog(settings, tmp_path):
    s = local(settings, tmp_path)
    fill(s, SPEC, {"a": 9})
    missing = tables.TableSpec("test", "missing", SCHEMA)
    out = io.StringIO()
    assert maintenance.run(s, "all", [SPEC, missing], out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("test.events: files 9 -> 1 (") and "compacted 1 partition(s)" in lines[0]
    assert "0 files vacuumed (0 B, retention 168 h)" in lines[0] and "checkpoint v10" in lines[0]
    assert lines[1].startswith("test.missing: skipped, table does not exist yet")


def test_cli_module_runs_over_the_catalog(settings, tmp_path):
    s = local(settings, tmp_path)
    spec = tables.get("bronze.dead_letter")
    uri = tables.ensure(s, spec)
    now = datetime.now(UTC)
    for i in range(8):
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
        delta.write_batch(s, uri, pa.Table.from_pylist([record], schema=spec.schema), app_id="t", batch_id=i)
    env = {**os.environ, "LAKEHOUSE_PROFILE": "test", "LAKEHOUSE__LAKEHOUSE__ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "lakehouse.maintenance"]

    dry = subprocess.run([*cmd, "all", "--dry-run"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "bronze.dead_letter: files 8 -> 8" in dry.stdout and "would compact 1 partition(s)" in dry.stdout
    assert "bronze.transactions: skipped, table does not exist yet" in dry.stdout

    done = subprocess.run(
        [*cmd, "optimize", "--table", "bronze.dead_letter"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("bronze.dead_letter: files 8 -> 1") and done.stdout.count("\n") == 1
    assert len(delta.read_arrow(s, uri)) == 8

    bad = subprocess.run([*cmd, "vacuum", "--table", "no.such"], env=env, cwd=PROJECT_ROOT, capture_output=True)
    assert bad.returncode == 2 and b"unknown table" in bad.stderr
