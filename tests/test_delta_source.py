"""Spark reads delta-rs tables through the ``deltars`` Python data source: streams by version, batch time travel."""

import time
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lakehouse.delta_source import _bin_pack, _chunks, _partition_filter, read_delta, read_delta_stream

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("event_date", pa.date32()),
    ]
)


def rows(ids, day=date(2026, 1, 1)) -> pa.Table:
    ids = list(ids)
    return pa.table(
        {
            "id": ids,
            "name": [f"n{i}" for i in ids],
            "ts": [datetime(2026, 1, 1, tzinfo=UTC)] * len(ids),
            "event_date": [day] * len(ids),
        },
        schema=SCHEMA,
    )


def append(uri, ids, day=date(2026, 1, 1)) -> int:
    write_deltalake(uri, rows(ids, day), mode="append", partition_by=["event_date"])
    return DeltaTable(uri).version()


def empty_table(uri) -> str:
    """Like ``tables.ensure``: version 0 only sets the schema."""
    DeltaTable.create(uri, schema=SCHEMA, partition_by=["event_date"])
    return uri


def run_available(spark, settings, uri, checkpoint, max_versions=None):
    """One ``availableNow`` run; returns ``[(batch_id, [row dicts])]`` of the non-empty micro-batches."""
    got = []
    df = read_delta_stream(spark, settings, uri, max_versions_per_trigger=max_versions)
    q = (
        df.writeStream.foreachBatch(lambda b, i: got.append((i, [r.asDict() for r in b.collect()])))
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    assert q.awaitTermination(300), "availableNow query did not stop"
    assert q.exception() is None
    return [(i, batch) for i, batch in got if batch]


def ids_of(batches) -> list[int]:
    return sorted(r["id"] for _, batch in batches for r in batch)


def test_stream_reads_each_row_once_across_triggers_and_restarts(spark, settings, tmp_path):
    uri = str(tmp_path / "t")
    append(uri, range(0, 10))  # version 0 creates the table (metadata without change data feed) with rows
    append(uri, range(10, 20))
    append(uri, range(20, 30), date(2026, 1, 2))
    checkpoint = str(tmp_path / "ckpt")

    first = run_available(spark, settings, uri, checkpoint)
    assert ids_of(first) == list(range(30))
    row = first[0][1][0]
    assert set(row) == {*SCHEMA.names, "_change_type", "_commit_version", "_commit_timestamp"}
    all_rows = [r for _, batch in first for r in batch]
    assert {r["_change_type"] for r in all_rows} == {"insert"}
    assert {r["_commit_version"] for r in all_rows} == {0, 1, 2}
    assert all(isinstance(r["_commit_timestamp"], datetime) for r in all_rows)
    assert {r["event_date"] for r in all_rows} == {date(2026, 1, 1), date(2026, 1, 2)}

    # more versions, then a restart from the same checkpoint: only the new rows
    append(uri, range(30, 35))
    append(uri, range(35, 50))
    second = run_available(spark, settings, uri, checkpoint)
    assert ids_of(second) == list(range(30, 50))
    assert {r["_commit_version"] for _, b in second for r in b} == {3, 4}
    assert min(i for i, _ in second) > max(i for i, _ in first)
    assert run_available(spark, settings, uri, checkpoint) == []


def test_max_versions_per_trigger_limits_each_micro_batch(spark, settings, tmp_path):
    uri = empty_table(str(tmp_path / "t"))
    for v in range(5):
        append(uri, range(v * 10, v * 10 + 10))  # versions 1..5
    batches = run_available(spark, settings, str(uri), str(tmp_path / "ckpt"), max_versions=2)
    assert ids_of(batches) == list(range(50))
    versions = [sorted({r["_commit_version"] for r in batch}) for _, batch in batches]
    # offsets -1 -> 1 -> 3 -> 5: versions {0, 1}, {2, 3}, {4, 5} (version 0 has no rows)
    assert versions == [[1], [2, 3], [4, 5]]


def test_plain_format_gives_table_columns_and_opt_in_change_columns(spark, tmp_path):
    uri = empty_table(str(tmp_path / "t"))
    plain = spark.readStream.format("deltars").load(uri)
    assert plain.isStreaming and plain.columns == SCHEMA.names
    cdf = spark.readStream.format("deltars").option("path", uri).option("readChangeFeed", "true").load()
    assert cdf.columns == [*SCHEMA.names, "_change_type", "_commit_version", "_commit_timestamp"]
    assert dict(cdf.dtypes)["_commit_version"] == "bigint"
    assert dict(cdf.dtypes)["_commit_timestamp"] == "timestamp"


def test_batch_read_time_travel(spark, settings, tmp_path):
    uri = str(tmp_path / "t")
    append(uri, range(0, 3))
    time.sleep(0.05)
    append(uri, range(3, 6))
    time.sleep(0.05)
    append(uri, range(6, 9))
    commit_ts = {h["version"]: h["timestamp"] for h in DeltaTable(uri).history()}

    current = read_delta(spark, settings, uri)
    assert current.columns == SCHEMA.names
    assert sorted(r.id for r in current.collect()) == list(range(9))
    assert sorted(r.id for r in read_delta(spark, settings, uri, version=1).collect()) == list(range(6))
    assert sorted(r.id for r in read_delta(spark, settings, uri, version=0).collect()) == [0, 1, 2]

    # timestampAsOf: the last version committed at or before the timestamp
    at_v1 = datetime.fromtimestamp(commit_ts[1] / 1000, tz=UTC) + timedelta(milliseconds=1)
    assert sorted(r.id for r in read_delta(spark, settings, uri, timestamp=at_v1).collect()) == list(range(6))
    iso = at_v1.replace(tzinfo=None).isoformat()  # naive means UTC
    df = spark.read.format("deltars").option("timestampAsOf", iso).load(uri)
    assert sorted(r.id for r in df.collect()) == list(range(6))
    with pytest.raises(Exception, match="before the first commit"):
        read_delta(spark, settings, uri, timestamp=datetime(2000, 1, 1, tzinfo=UTC))


def commit_times(uri) -> dict[int, datetime]:
    """Each version's ``commitInfo.timestamp`` (the latest table's history numbers its versions right)."""
    return {h["version"]: datetime.fromtimestamp(h["timestamp"] / 1000, tz=UTC) for h in DeltaTable(uri).history()}


def test_timestamp_as_of_between_commits_reads_the_earlier_version(spark, settings, tmp_path):
    uri = str(tmp_path / "t")
    append(uri, range(0, 3))
    time.sleep(0.3)
    append(uri, range(3, 6))
    time.sleep(0.3)
    append(uri, range(6, 9))
    commits = commit_times(uri)
    assert sorted(commits) == [0, 1, 2]

    def ids_at(ts: datetime) -> list[int]:
        return sorted(r.id for r in read_delta(spark, settings, uri, timestamp=ts).collect())

    # strictly between versions 0 and 1 (delta-rs 1.6.6's history() on version 0 used to make this "before the
    # first commit"), then between 1 and 2, then after the last commit
    assert ids_at(commits[0] + (commits[1] - commits[0]) / 2) == [0, 1, 2]
    assert ids_at(commits[1] + (commits[2] - commits[1]) / 2) == list(range(6))
    assert ids_at(commits[2] + timedelta(seconds=5)) == list(range(9))
    with pytest.raises(Exception, match="before the first commit"):
        ids_at(commits[0] - timedelta(seconds=1))


@pytest.mark.parametrize("change_data_feed", [False, True], ids=["file-actions", "change-data-feed"])
def test_stream_commit_timestamps_are_the_commits(spark, settings, tmp_path, change_data_feed):
    uri = str(tmp_path / "t")
    # commits more than a second apart, so a timestamp taken from the wrong commit cannot pass
    append(uri, range(0, 3))  # version 0: rows, no change data feed (read from its file actions)
    if change_data_feed:
        time.sleep(1.1)
        DeltaTable(uri).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})  # version 1: no rows
    for start in (3, 6):
        time.sleep(1.1)
        append(uri, range(start, start + 3))
    commits = commit_times(uri)
    assert len(commits) == (4 if change_data_feed else 3)

    batches = run_available(spark, settings, uri, str(tmp_path / "ckpt"))
    # collected timestamps are naive local times: astimezone reads them so
    got = sorted((r["_commit_version"], r["_commit_timestamp"].astimezone(UTC), r["id"]) for _, b in batches for r in b)
    assert sorted(i for *_, i in got) == list(range(9))
    data_versions = sorted(commits)[-2:]
    assert {v for v, *_ in got} == {0, *data_versions}
    stamps = [ts for _, ts, _ in got]
    assert stamps == sorted(stamps)  # non-decreasing with the version
    for version, ts, _ in got:
        assert abs(ts - commits[version]) < timedelta(seconds=1), (version, ts, commits[version])


def test_batch_dataframe_keeps_its_snapshot(spark, settings, tmp_path):
    uri = str(tmp_path / "t")
    append(uri, range(3))
    df = read_delta(spark, settings, uri)
    append(uri, range(3, 5))
    assert df.count() == 3
    assert read_delta(spark, settings, uri).count() == 5


def test_partition_filter_prunes_and_reads_in_parallel(spark, settings, tmp_path):
    uri = str(tmp_path / "t")
    for d in range(1, 6):
        append(uri, range(d * 10, d * 10 + 5), date(2026, 1, d))
    df = read_delta(spark, settings, uri)
    assert df.rdd.getNumPartitions() == 5  # one group per file, at most numPartitions (8)
    assert df.count() == 25
    pruned = read_delta(spark, settings, uri, partition_filter=[["event_date", ">=", "2026-01-04"]])
    assert pruned.rdd.getNumPartitions() == 2  # only the two matching files are planned
    got = pruned.collect()
    assert sorted(r.id for r in got) == [*range(40, 45), *range(50, 55)]
    assert {r.event_date for r in got} == {date(2026, 1, 4), date(2026, 1, 5)}
    two = spark.read.format("deltars").option("numPartitions", "2").load(uri)
    assert two.rdd.getNumPartitions() == 2 and two.count() == 25
    in_list = read_delta(spark, settings, uri, partition_filter=[["event_date", "in", ["2026-01-01", "2026-01-03"]]])
    assert sorted(r.id for r in in_list.collect()) == [*range(10, 15), *range(30, 35)]


def test_batch_change_feed_between_versions(spark, tmp_path):
    uri = empty_table(str(tmp_path / "t"))
    for v in range(3):
        append(uri, range(v * 10, v * 10 + 2))  # versions 1..3
    df = (
        spark.read.format("deltars")
        .option("readChangeFeed", "true")
        .option("startingVersion", "2")
        .option("endingVersion", "3")
        .load(uri)
    )
    got = df.collect()
    assert sorted((r.id, r._commit_version, r._change_type) for r in got) == [
        (10, 2, "insert"),
        (11, 2, "insert"),
        (20, 3, "insert"),
        (21, 3, "insert"),
    ]


def test_missing_table_is_a_clear_error(spark, tmp_path):
    uri = str(tmp_path / "nope")
    with pytest.raises(Exception, match=r"no Delta table at .*nope"):
        spark.read.format("deltars").load(uri)
    with pytest.raises(Exception, match=r"no Delta table at .*nope"):
        spark.readStream.format("deltars").load(uri)


def test_planning_helpers():
    assert _chunks(0, 9, 8) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert _chunks(3, 5, 8) == [(3, 3), (4, 4), (5, 5)]
    groups = _bin_pack({"a": 100, "b": 60, "c": 50, "d": 10}, 2)
    assert sorted(sum({"a": 100, "b": 60, "c": 50, "d": 10}[f] for f in g) for g in groups) == [110, 110]
    assert _partition_filter('[["d", ">=", "x"]]') == [("d", ">=", "x")]
    assert _partition_filter('[["d", "in", ["x", "y"]]]') == [("d", "in", ("x", "y"))]
    assert _partition_filter('[[["d", "=", "x"]], [["d", "=", "y"]]]') == [[("d", "=", "x")], [("d", "=", "y")]]
    assert _partition_filter(None) is None
