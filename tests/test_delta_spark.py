"""Spark's own Delta reader and writer at the edge (``lakehouse.delta``): idempotent batch writes and MERGEs,
partition replacement, time travel and the change data feed, on tables the catalog creates with delta-rs."""

import time
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakehouse import delta

SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string()), ("event_date", pa.date32())])
D1, D2 = date(2026, 1, 1), date(2026, 1, 2)


def table(tmp_path, cdf: bool = False) -> str:
    """An empty partitioned table created like ``lakehouse.tables.ensure`` does (delta-rs)."""
    uri = str(tmp_path / "t")
    config = {"delta.enableChangeDataFeed": "true"} if cdf else None
    DeltaTable.create(uri, schema=SCHEMA, partition_by=["event_date"], configuration=config)
    return uri


def frame(spark, rows):
    return spark.createDataFrame(rows, "id bigint, v string, event_date date")


def ids(spark, uri, **kw) -> list[int]:
    return sorted(r.id for r in delta.read(spark, uri, **kw).collect())


def test_a_replayed_batch_write_is_skipped(spark, tmp_path):
    uri = table(tmp_path)
    kw = {"app_id": "q1", "partition_by": ["event_date"]}
    delta.write_batch_spark(frame(spark, [(1, "a", D1), (2, "b", D1)]), uri, batch_id=0, **kw)
    started = int(time.time() * 1000)
    delta.write_batch_spark(frame(spark, [(3, "c", D1)]), uri, batch_id=1, **kw)
    assert delta.commit_of(spark, uri, "q1", 1, started) == (1, True)
    later = int(time.time() * 1000) + 5000
    delta.write_batch_spark(frame(spark, [(3, "c", D1)]), uri, batch_id=1, **kw)  # a crash before the checkpoint
    delta.write_batch_spark(frame(spark, [(9, "z", D1)]), uri, batch_id=0, **kw)  # an older batch id: skipped too
    assert ids(spark, uri) == [1, 2, 3]
    assert delta.commit_of(spark, uri, "q1", 1, later) == (1, False)  # found, but it is the earlier commit
    delta.write_batch_spark(frame(spark, [(4, "d", D1)]), uri, batch_id=0, app_id="q2")  # another query's ids
    assert ids(spark, uri) == [1, 2, 3, 4]
    assert delta.commit_of(spark, uri, "q3", 0, started) == (0, False)


def test_a_replayed_merge_is_skipped_and_reports_the_original_metrics(spark, tmp_path):
    uri = table(tmp_path)
    delta.write_batch_spark(frame(spark, [(1, "a", D1)]), uri, app_id="seed", batch_id=0)
    source = frame(spark, [(1, "A", D1), (2, "b", D1)])

    def merge():
        return delta.merge_batch_spark(
            source,
            uri,
            "t.id = s.id",
            lambda m: m.whenMatchedUpdateAll().whenNotMatchedInsertAll(),
            app_id="q",
            batch_id=7,
        )

    first = merge()
    assert (first["numTargetRowsInserted"], first["numTargetRowsUpdated"], first["numSourceRows"]) == (1, 1, 2)
    version = delta.latest_version(spark, uri)
    assert merge() == first  # replayed: no new commit, the same metrics
    assert delta.latest_version(spark, uri) == version
    assert {(r.id, r.v) for r in delta.read(spark, uri).collect()} == {(1, "A"), (2, "b")}
    # the settings that made it idempotent do not leak into the session's later writes
    assert spark.conf.get("spark.databricks.delta.write.txnAppId", None) is None


def test_replace_partitions_overwrites_only_the_dates_written(spark, tmp_path):
    uri = table(tmp_path)
    kw = {"partition_by": ["event_date"]}
    delta.write_batch_spark(frame(spark, [(1, "a", D1), (2, "b", D2)]), uri, app_id="seed", batch_id=0, **kw)
    delta.write_batch_spark(frame(spark, [(3, "c", D2)]), uri, app_id="g", batch_id=0, replace_partitions=True, **kw)
    assert ids(spark, uri) == [1, 3]
    delta.write_batch_spark(
        frame(spark, [(4, "d", D1)]), uri, app_id="b", batch_id=0, replace_where=delta.days_predicate(D1, D2), **kw
    )
    assert ids(spark, uri) == [4]
    assert [r.id for r in delta.read_days(spark, uri, D2, D2).collect()] == []


def test_time_travel_by_version_and_timestamp(spark, tmp_path):
    uri = table(tmp_path)
    delta.write_batch_spark(frame(spark, [(1, "a", D1)]), uri, app_id="q", batch_id=0)
    between = datetime.now(UTC)
    time.sleep(1.1)
    delta.write_batch_spark(frame(spark, [(2, "b", D1)]), uri, app_id="q", batch_id=1)
    assert ids(spark, uri, version=1) == [1]
    assert ids(spark, uri, timestamp=between) == [1]
    assert ids(spark, uri) == [1, 2]
    with pytest.raises(Exception, match=r"(?i)before the earliest|timestamp"):
        delta.read(spark, uri, timestamp=datetime(2000, 1, 1, tzinfo=UTC)).collect()


def test_the_change_feed_streams_inserts_and_merge_updates(spark, tmp_path):
    uri = table(tmp_path, cdf=True)
    delta.write_batch_spark(frame(spark, [(1, "a", D1), (2, "b", D1)]), uri, app_id="q", batch_id=0)
    delta.merge_batch_spark(
        frame(spark, [(2, "B", D1)]), uri, "t.id = s.id", lambda m: m.whenMatchedUpdateAll(), app_id="q", batch_id=1
    )
    got = []
    query = (
        delta.read_stream(spark, uri, change_feed=True, starting_version=1)
        .writeStream.foreachBatch(lambda b, _: got.extend(b.select("id", "v", "_change_type").collect()))
        .option("checkpointLocation", str(tmp_path / "cp"))
        .trigger(availableNow=True)
        .start()
    )
    assert query.awaitTermination(120)
    changes = sorted((r.id, r.v, r._change_type) for r in got)
    assert changes == [
        (1, "a", "insert"),
        (2, "B", "update_postimage"),
        (2, "b", "insert"),
        (2, "b", "update_preimage"),
    ]


def test_a_new_change_feed_stream_starts_with_the_current_rows(spark, tmp_path):
    uri = table(tmp_path, cdf=True)
    delta.write_batch_spark(frame(spark, [(1, "a", D1)]), uri, app_id="q", batch_id=0)
    delta.merge_batch_spark(
        frame(spark, [(1, "A", D1)]), uri, "t.id = s.id", lambda m: m.whenMatchedUpdateAll(), app_id="q", batch_id=1
    )
    got = []
    query = (
        delta.read_stream(spark, uri, change_feed=True)
        .writeStream.foreachBatch(lambda b, _: got.extend(b.select("id", "v", "_change_type").collect()))
        .option("checkpointLocation", str(tmp_path / "cp"))
        .trigger(availableNow=True)
        .start()
    )
    assert query.awaitTermination(120)
    assert [(r.id, r.v, r._change_type) for r in got] == [(1, "A", "insert")]


def test_a_query_killed_while_planning_its_first_batch_starts_again(spark, tmp_path):
    from lakehouse.config import isolated
    from lakehouse.streaming import checkpoint_dir, start_batches

    uri = table(tmp_path)
    delta.write_batch_spark(frame(spark, [(1, "a", D1)]), uri, app_id="q", batch_id=0)
    settings, _ = isolated(tmp_path, "torn")
    # what a SIGKILL between writing offsets/0's temporary file and renaming it leaves
    offsets = tmp_path / "checkpoints" / "torn.q" / "offsets"
    offsets.mkdir(parents=True)
    (offsets / ".0.6f1c.tmp").write_text("v1\n")
    assert checkpoint_dir(settings, "torn.q") == str(offsets.parent)
    got = []
    handler = lambda b, _: got.extend(r.id for r in b.collect())  # noqa: E731
    query = start_batches(settings, "torn.q", delta.read_stream(spark, uri), handler, trigger={"availableNow": True})
    assert query.awaitTermination(120)
    assert query.exception() is None and got == [1]
    assert sorted(p.name for p in offsets.iterdir() if not p.name.startswith(".")) == ["0"]
