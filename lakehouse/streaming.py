"""Wiring of streaming queries to exactly-once Delta sinks, with per-batch progress lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from lakehouse import delta
from lakehouse.config import Settings


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


def _query_id(checkpoint: str) -> str:
    """The streaming query's id, as Spark keeps it in the checkpoint (stable across restarts)."""
    return json.loads((Path(checkpoint) / "metadata").read_text())["id"]


def delta_sink(settings: Settings, name: str, outputs: Outputs) -> Callable[[DataFrame, int], None]:
    """A ``foreachBatch`` function writing each of ``outputs(batch)`` to its Delta table exactly once.

    Every table records (query id, batch id) in its own commit, so after a crash between two tables'
    commits the replayed batch skips the table that has it and writes the one that does not.
    """
    checkpoint = checkpoint_dir(settings, name)

    def write(batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        app_id = _query_id(checkpoint)
        batch.persist()
        try:
            report = []
            for out, df in outputs(batch):
                if settings.lakehouse.delta_writer == "spark":
                    delta.write_batch_spark(
                        df, out.uri, app_id=app_id, batch_id=batch_id, partition_by=out.partition_by
                    )
                    report.append(f"{out.name} written")
                    continue
                table = df.toArrow()
                if table.num_rows == 0:
                    continue
                written = delta.write_batch(
                    settings, out.uri, table, app_id=app_id, batch_id=batch_id, partition_by=out.partition_by
                )
                report.append(f"{out.name} {table.num_rows} rows {'written' if written else 'already committed'}")
        finally:
            batch.unpersist()
        print(
            f"[{name}] batch {batch_id}: {', '.join(report) or 'empty'} in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    return write


def start_to_delta(
    settings: Settings, name: str, source: DataFrame, outputs: Outputs, *, trigger: dict | None = None
) -> StreamingQuery:
    """Start ``source`` → ``outputs`` → Delta tables, checkpointed under the query ``name``."""
    writer = (
        source.writeStream.queryName(name)
        .option("checkpointLocation", checkpoint_dir(settings, name))
        .foreachBatch(delta_sink(settings, name, outputs))
    )
    return writer.trigger(**(trigger or {"processingTime": "2 seconds"})).start()
