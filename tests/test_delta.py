"""Delta writes through delta-rs: exactly-once per micro-batch, time travel, on a local path and on S3."""

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from lakehouse import delta


@pytest.fixture(params=["local", "s3"])
def table_uri(request, stack, tmp_path):
    if request.param == "local":
        return str(tmp_path / "t")
    return f"s3://{stack.s3.bucket}/tests/{tmp_path.name}/t"


def batch(ids):
    return pa.table({"id": pa.array(ids, pa.int64()), "day": pa.array(["2026-01-01"] * len(ids))})


def test_replayed_batches_are_skipped_and_time_travel_works(stack, table_uri):
    assert delta.write_batch(stack, table_uri, batch([1, 2]), app_id="q1", batch_id=0, partition_by=["day"])
    assert delta.write_batch(stack, table_uri, batch([3]), app_id="q1", batch_id=1, partition_by=["day"])
    # a crash after the commit but before the checkpoint replays batch 1: nothing is written twice
    assert not delta.write_batch(stack, table_uri, batch([3]), app_id="q1", batch_id=1, partition_by=["day"])
    assert delta.committed_version(stack, table_uri, "q1") == 1
    # another query (e.g. a reset checkpoint) has its own batch ids
    assert delta.write_batch(stack, table_uri, batch([4]), app_id="q2", batch_id=0, partition_by=["day"])
    assert sorted(delta.read_arrow(stack, table_uri)["id"].to_pylist()) == [1, 2, 3, 4]
    assert sorted(delta.read_arrow(stack, table_uri, version=0)["id"].to_pylist()) == [1, 2]
    commits = delta.history(stack, table_uri)
    assert {c.get("streaming.batch_id") for c in commits} >= {"0", "1"}


def test_tables_are_readable_by_polars_and_duckdb(stack, tmp_path):
    uri = str(tmp_path / "t")
    delta.write_batch(stack, uri, batch([1, 2, 3]), app_id="q", batch_id=0)
    arrow = delta.read_arrow(stack, uri)
    assert pl.from_arrow(arrow)["id"].sum() == 6
    assert duckdb.sql("select sum(id) from arrow").fetchall()[0][0] == 6


def test_a_commit_names_the_streaming_batch_that_wrote_it():
    assert delta.batch_of({"userMetadata": delta.batch_tag("5f0c-q/decisions", 12)}) == ("5f0c-q", 12)
    assert delta.batch_of({"userMetadata": delta.batch_tag("5f0c-q", 0)}) == ("5f0c-q", 0)
    assert delta.batch_of({"streaming.query_id": "q1", "streaming.batch_id": "3"}) == ("q1", 3)  # delta-rs's
    assert delta.batch_of({"operation": "OPTIMIZE"}) == delta.batch_of({"userMetadata": "a note"}) == (None, None)
