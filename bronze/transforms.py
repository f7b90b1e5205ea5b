"""Pure DataFrame → DataFrame transformations of the bronze stage."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

VALIDATED_SCHEMA = (
    "source_topic string, source_partition int, source_offset long, key string, payload binary, "
    "log_time timestamp, event_time timestamp, reason string, detail string"
)


def _validator(kind: str, max_bytes: int, max_future_skew_ms: int, min_event_time_ms: int):
    def validate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from lakehouse.contracts import TIME_FIELDS, ContractError, Limits, decode

        limits = Limits(max_bytes, max_future_skew_ms, min_event_time_ms)
        time_field = TIME_FIELDS[kind]
        for batch in batches:
            payloads = batch.column("value").to_pylist()
            log_ms = [None if t is None else int(t.timestamp() * 1000) for t in batch.column("timestamp").to_pylist()]
            event_ms, reasons, details = [], [], []
            for raw, now_ms in zip(payloads, log_ms, strict=True):
                # "the future" is judged against when the event entered the log (replays decide the same); fields
                # a newer contract version added are kept in the payload, not dead-lettered
                try:
                    event = decode(kind, raw, limits, now_ms=now_ms, allow_unknown=True)
                    event_ms.append(event[time_field] * 1000)
                    reasons.append(None)
                    details.append(None)
                except ContractError as exc:
                    event_ms.append(None)
                    reasons.append(exc.reason)
                    details.append(exc.detail[:2000])
            yield pa.RecordBatch.from_pydict(
                {
                    "source_topic": batch.column("topic"),
                    "source_partition": batch.column("partition"),
                    "source_offset": batch.column("offset"),
                    "key": pa.array(
                        [None if k is None else k.decode("utf-8", "replace") for k in batch.column("key").to_pylist()],
                        pa.string(),
                    ),
                    "payload": batch.column("value"),
                    "log_time": batch.column("timestamp"),
                    "event_time": pa.array(event_ms, pa.timestamp("us", tz="UTC")),
                    "reason": pa.array(reasons, pa.string()),
                    "detail": pa.array(details, pa.string()),
                }
            )

    return validate


def validate_records(df: DataFrame, kind: str, limits) -> DataFrame:
    """Check every record's payload against the ``kind`` contract: a ``reason`` for each one that fails."""
    fn = _validator(kind, limits.max_bytes, limits.max_future_skew_ms, limits.min_event_time_ms)
    return df.mapInArrow(fn, VALIDATED_SCHEMA)


def accepted(validated: DataFrame) -> DataFrame:
    """Bronze rows: valid events as received, partitioned by event date."""
    return validated.where(F.col("reason").isNull()).select(
        "source_topic",
        "source_partition",
        "source_offset",
        "key",
        F.col("payload").cast("string").alias("payload"),
        "event_time",
        "log_time",
        F.current_timestamp().alias("ingested_at"),
        F.to_date("event_time").alias("event_date"),
    )


def dead_letters(validated: DataFrame) -> DataFrame:
    """Records that broke their contract: raw bytes, the reason, where they came from and when."""
    return validated.where(F.col("reason").isNotNull()).select(
        "source_topic",
        "source_partition",
        "source_offset",
        "key",
        "payload",
        "reason",
        "detail",
        "log_time",
        F.current_timestamp().alias("failed_at"),
        F.to_date("log_time").alias("log_date"),
    )
