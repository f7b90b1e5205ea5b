"""Wiring of streaming queries to exactly-once Delta sinks, with per-batch progress lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from lakehouse import delta, eventlog, metrics
from lakehouse.config import Settings
from lakehouse.topology import consumers


@dataclass(frozen=True)
class Output:
    """One Delta table a micro-batch writes to."""

    name: str
    uri: str
    partition_by: tuple[str, ...] = ()


Outputs = Callable[[DataFrame], list[tuple[Output, DataFrame]]]


def checkpoint_dir(settings: Settings, name: str) -> str:
    root = settings.spark.checkpoint_root
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(settings.path(root) / name)


def query_id(spark: SparkSession, checkpoint: str) -> str:
    """The streaming query's id, as Spark keeps it in the checkpoint (stable across restarts), read with
    Hadoop's file system API, so a checkpoint on ``s3a://`` works as well as a local one."""
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(f"{checkpoint.rstrip('/')}/metadata")
    stream = path.getFileSystem(spark._jsc.hadoopConfiguration()).open(path)
    try:
        text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    return json.loads(text.splitlines()[0])["id"]


def clear_torn_start(spark: SparkSession, checkpoint: str) -> bool:
    """Remove what a process killed during a query's very first batch left behind, and say whether it did.

    Spark writes ``offsets/0`` through a temporary file; a kill before the rename leaves that file, and since
    4.1 Spark refuses to start a query whose checkpoint has no batch but a non-empty ``offsets``, ``commits``
    or ``state`` (``STATE_STORE_CHECKPOINT_LOCATION_NOT_EMPTY``) on every restart. With no numbered offset
    file, no batch was ever planned, so those folders hold nothing that a restart needs (``metadata``, which
    keeps the query id, stays)."""
    jvm = spark._jvm
    root = jvm.org.apache.hadoop.fs.Path(checkpoint.rstrip("/"))
    fs = root.getFileSystem(spark._jsc.hadoopConfiguration())
    offsets = jvm.org.apache.hadoop.fs.Path(root, "offsets")
    if not fs.exists(offsets) or any(s.getPath().getName().isdigit() for s in fs.listStatus(offsets)):
        return False
    for folder in ("offsets", "commits", "state"):
        fs.delete(jvm.org.apache.hadoop.fs.Path(root, folder), True)
    print(f"[streaming] {checkpoint}: cleared a first batch that never committed", file=sys.stderr, flush=True)
    return True


class QueryIds:
    """A query's id, read from its checkpoint once (by the first batch, when the checkpoint exists)."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self._id: str | None = None

    def __call__(self, spark: SparkSession) -> str:
        if self._id is None:
            self._id = query_id(spark, self.checkpoint)
        return self._id


def delta_sink(
    settings: Settings, name: str, outputs: Outputs, stage: Callable[[DataFrame], DataFrame] | None = None
) -> Callable[[DataFrame, int], None]:
    """A ``foreachBatch`` function writing each of ``outputs(staged)`` to its Delta table exactly once, with
    Spark's Delta writer on the executors (nothing is collected to the driver).

    ``stage(batch)`` (e.g. contract validation) is computed once and kept in memory while the outputs are
    written. Every table records (query id, batch id) as ``txnAppId``/``txnVersion`` in its commit, so after a
    crash between two tables' commits the replayed batch skips the table that has it and writes the other.
    """
    ids = QueryIds(checkpoint_dir(settings, name))

    def write(batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        started_ms = int(time.time() * 1000)
        app_id = ids(batch.sparkSession)
        staged = (stage(batch) if stage else batch).persist()
        report = []
        try:
            for out, df in outputs(staged):
                if df.isEmpty():
                    continue
                delta.write_batch_spark(df, out.uri, app_id=app_id, batch_id=batch_id, partition_by=out.partition_by)
                rows, new = delta.commit_of(batch.sparkSession, out.uri, app_id, batch_id, started_ms)
                report.append(f"{out.name} {rows} rows {'written' if new else 'already committed'}")
                if new:
                    metrics.observe_written(name, out.name, rows)
        finally:
            staged.unpersist()
        print(
            f"[{name}] batch {batch_id}: {', '.join(report) or 'empty'} in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    return write


def start_batches(
    settings: Settings,
    name: str,
    source: DataFrame,
    handler: Callable[[DataFrame, int], None],
    *,
    trigger: dict | None = None,
) -> StreamingQuery:
    """Start ``source`` → ``handler(batch, batch_id)``, checkpointed under the query ``name``."""
    checkpoint = checkpoint_dir(settings, name)
    clear_torn_start(source.sparkSession, checkpoint)
    writer = source.writeStream.queryName(name).option("checkpointLocation", checkpoint).foreachBatch(handler)
    default = {"processingTime": f"{settings.streaming.trigger_seconds} seconds"}
    query = writer.trigger(**(trigger or default)).start()
    wait_initialised(query)
    return query


def wait_initialised(query: StreamingQuery, timeout_s: float = 120.0) -> None:
    """Wait until ``query`` has initialised its sources before the caller starts the next one.

    A Python data source starts Python planner processes that must connect back to the JVM within a fixed 10 s;
    many starting at once on 2 cores can miss that, so queries are started one at a time.
    """
    deadline = time.monotonic() + timeout_s
    while query.isActive and time.monotonic() < deadline:
        if query.status.get("message") != "Initializing sources":
            return
        time.sleep(0.2)


def start_to_delta(
    settings: Settings,
    name: str,
    source: DataFrame,
    outputs: Outputs,
    *,
    stage: Callable[[DataFrame], DataFrame] | None = None,
    trigger: dict | None = None,
) -> StreamingQuery:
    """Start ``source`` → ``stage`` → ``outputs`` → Delta tables, checkpointed under the query ``name``."""
    return start_batches(settings, name, source, delta_sink(settings, name, outputs, stage), trigger=trigger)


def committed_offsets(checkpoint: str) -> dict[str, int] | None:
    """The source offsets (partition -> next offset) of a query's last committed batch, from Spark's checkpoint
    (``offsets/N`` holds a batch's planned end, ``commits/N`` marks it done); None before the first commit."""
    root = Path(checkpoint)
    commits = [int(p.name) for p in (root / "commits").glob("[0-9]*")] if (root / "commits").is_dir() else []
    if not commits:
        return None
    lines = (root / "offsets" / str(max(commits))).read_text().splitlines()
    offsets = json.loads(lines[2])  # Kafka's source: {"<topic>": {"<partition>": next offset}}
    if len(offsets) == 1 and isinstance(next(iter(offsets.values())), dict):
        offsets = next(iter(offsets.values()))
    return {str(p): int(o) for p, o in offsets.items()}


def consumer_lag(settings: Settings, log: eventlog.EventLog) -> dict[str, int | None]:
    """Per bronze query, the records of its topic not yet committed to bronze (None: the query never ran)."""
    out: dict[str, int | None] = {}
    for query, topic in consumers(settings).items():
        done = committed_offsets(checkpoint_dir(settings, query))
        ends = log.end_offsets(topic)
        out[query] = None if done is None else sum(max(0, e - done.get(str(p), 0)) for p, e in ends.items())
    return out
