"""A Spark streaming source over the event log, written with Spark's Python Data Source API.

``spark.readStream.format("eventlog").option("url", ...).option("topic", ...)`` gives the same columns as
Spark's Kafka source. Offsets are ``{"<partition>": next_offset}`` and live in the query's checkpoint, so a
restarted query resumes exactly where the last committed batch ended; a batch is always the same
deterministic offset range, which is what exactly-once sinks need.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)

SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
_ARROW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("timestampType", pa.int32()),
    ]
)


class OffsetRange(InputPartition):
    def __init__(self, partition: int, start: int, end: int):
        super().__init__((partition, start, end))
        self.partition, self.start, self.end = partition, start, end


class EventLogDataSource(DataSource):
    """Options: ``url`` (redis://...), ``topic``, ``maxRecordsPerTrigger``, ``startingOffsets`` (earliest|latest)."""

    @classmethod
    def name(cls) -> str:
        return "eventlog"

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> DataSourceStreamReader:
        return EventLogStreamReader(self.options)


class EventLogStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options):
        self.url = options["url"]
        self.topic = options["topic"]
        self.max_records = int(options.get("maxRecordsPerTrigger", 0)) or None
        self.starting = options.get("startingOffsets", "earliest")
        self.batch_size = int(options.get("readBatchSize", 5000))
        self.target: dict[str, int] | None = None  # the ends an availableNow query reads up to

    def _log(self):
        from lakehouse.eventlog.redis_streams import RedisStreamsLog

        return RedisStreamsLog(self.url)

    def _ends(self) -> dict[str, int]:
        log = self._log()
        try:
            return {str(p): end for p, end in log.end_offsets(self.topic).items()}
        finally:
            log.close()

    def initialOffset(self) -> dict:
        ends = self._ends()
        return ends if self.starting == "latest" else {p: 0 for p in ends}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_records) if self.max_records else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        """``trigger(availableNow=True)``: read up to the ends of now, in as many batches as the limit needs
        (including a batch left planned but uncommitted by a crash, then the rest)."""
        self.target = self._ends()

    def latestOffset(self, start: dict | None = None, limit: ReadLimit | None = None) -> dict:
        ends = self._ends() if self.target is None else dict(self.target)
        start = start or {p: 0 for p in ends}
        ends = {p: max(end, start.get(p, 0)) for p, end in ends.items()}
        if isinstance(limit, ReadMaxRows):
            return cap_offsets(start, ends, limit.max_rows)
        return ends

    def reportLatestOffset(self) -> dict:
        return self._ends()

    def partitions(self, start: dict, end: dict) -> list[OffsetRange]:
        return [
            OffsetRange(int(p), start.get(p, 0), e)
            for p, e in sorted(end.items(), key=lambda kv: int(kv[0]))
            if e > start.get(p, 0)
        ]

    def read(self, partition: OffsetRange) -> Iterator[pa.RecordBatch]:
        log = self._log()
        try:
            rows: list = []
            for rec in log.read(self.topic, partition.partition, partition.start, partition.end, self.batch_size):
                rows.append(rec)
                if len(rows) >= self.batch_size:
                    yield _to_batch(rows)
                    rows = []
            if rows:
                yield _to_batch(rows)
        finally:
            log.close()

    def commit(self, end: dict) -> None:
        """Nothing to do: the log keeps records (retention trims them); offsets live in the checkpoint."""


def cap_offsets(start: dict[str, int], ends: dict[str, int], max_rows: int) -> dict[str, int]:
    """End offsets admitting at most ``max_rows`` records, shared fairly between partitions."""
    available = {p: ends[p] - start.get(p, 0) for p in ends}
    total = sum(available.values())
    if total <= max_rows:
        return dict(ends)
    out, budget = {}, max_rows
    parts = sorted(available, key=lambda p: available[p])
    for i, p in enumerate(parts):
        share = min(available[p], budget // (len(parts) - i))
        out[p] = start.get(p, 0) + share
        budget -= share
    return out


def _to_batch(records) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "key": [r.key for r in records],
            "value": [r.value for r in records],
            "topic": [r.topic for r in records],
            "partition": [r.partition for r in records],
            "offset": [r.offset for r in records],
            "timestamp": [datetime.fromtimestamp(r.timestamp_ms / 1000, tz=UTC) for r in records],
            "timestampType": [0] * len(records),
        },
        schema=_ARROW_SCHEMA,
    )
