"""Wiring of streaming queries to exactly-once Delta sinks, with per-batch progress lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from lakehouse import delta
from lakehouse.config import Settings


def checkpoint_dir(settings: Settings, name: str) -> str:
    root = settings.spark.checkpoint_root
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(settings.path(root) / name)


def _query_id(checkpoint: str) -> str:
    """The streaming query's id, as Spark keeps it in the checkpoint (stable across restarts)."""
    return json.loads((Path(checkpoint) / "metadata").read_text())["id"]


def delta_sink(
    settings: Settings,
    name: str,
    uri: str,
    transform: Callable[[DataFrame], DataFrame],
    partition_by: list[str] | None = None,
) -> Callable[[DataFrame, int], None]:
    """A ``foreachBatch`` function writing ``transform(batch)`` to the Delta table ``uri`` exactly once."""
    checkpoint = checkpoint_dir(settings, name)

    def write(batch: DataFrame, batch_id: int) -> None:
        t0 = time.monotonic()
        app_id = _query_id(checkpoint)
        out = transform(batch)
        if settings.lakehouse.delta_writer == "spark":
            delta.write_batch_spark(out, uri, app_id=app_id, batch_id=batch_id, partition_by=partition_by)
            rows, written = -1, True
        else:
            table = out.toArrow()
            rows = table.num_rows
            written = rows > 0 and delta.write_batch(
                settings, uri, table, app_id=app_id, batch_id=batch_id, partition_by=partition_by
            )
        state = "written" if written else "empty" if rows == 0 else "already committed, skipped"
        print(
            f"[{name}] batch {batch_id}: {rows} rows {state} in {time.monotonic() - t0:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    return write


def start_to_delta(
    settings: Settings,
    name: str,
    source: DataFrame,
    uri: str,
    transform: Callable[[DataFrame], DataFrame],
    *,
    partition_by: list[str] | None = None,
    trigger: dict | None = None,
) -> StreamingQuery:
    """Start ``source`` → ``transform`` → Delta ``uri``, checkpointed under the query ``name``."""
    writer = (
        source.writeStream.queryName(name)
        .option("checkpointLocation", checkpoint_dir(settings, name))
        .foreachBatch(delta_sink(settings, name, uri, transform, partition_by))
    )
    writer = writer.trigger(**(trigger or {"processingTime": "2 seconds"}))
    return writer.start()
