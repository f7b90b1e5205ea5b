"""The event log: Apache Kafka (a broker of the stack's own, or any cluster), behind one small interface.

A topic has N partitions, a record's partition is chosen from its key with Kafka's murmur2 partitioner (so
per-card order holds), offsets are integers per partition from 0, and a reader asks for a half-open range
``[start, end)`` of offsets of one partition. Spark reads the same topics with its own Kafka source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One record read from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class EventLogError(RuntimeError):
    """The event log could not be reached or refused an operation."""


class EventLog(ABC):
    """Produce keyed records and read offset ranges per partition."""

    @abstractmethod
    def create_topic(self, topic: str, partitions: int) -> None:
        """Create a topic (no-op if it exists with the same number of partitions)."""

    @abstractmethod
    def partitions(self, topic: str) -> int:
        """Number of partitions of a topic (raises EventLogError if the topic does not exist)."""

    @abstractmethod
    def produce_batch(self, topic: str, records: Sequence[tuple[bytes | str | None, bytes]]) -> list[tuple[int, int]]:
        """Append (key, value) records; return the (partition, offset) of each, in order."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition (so ``[0, end)`` is everything written)."""

    @abstractmethod
    def read(self, topic: str, partition: int, start: int, end: int, batch_size: int = 5000) -> Iterable[Record]:
        """Records of one partition with ``start <= offset < end``, in offset order (up to what the log holds)."""

    @abstractmethod
    def delete_topic(self, topic: str) -> None:
        """Delete a topic and its records."""

    def produce(self, topic: str, key: bytes | str | None, value: bytes) -> tuple[int, int]:
        return self.produce_batch(topic, [(key, value)])[0]

    @abstractmethod
    def ping(self) -> bool:
        """Whether the broker answers now (no retries)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_event_log(bootstrap: str, timeout_s: float = 10.0) -> EventLog:
    """The Kafka cluster at ``bootstrap`` (``host:port[,host:port]``); EventLogError if it does not answer."""
    from lakehouse.eventlog.kafka import KafkaLog

    return KafkaLog(bootstrap, timeout_s)


def from_settings(settings) -> EventLog:
    return open_event_log(settings.eventlog.kafka_bootstrap)


def ensure_topics(log: EventLog, settings) -> None:
    for topic in settings.eventlog.topics.all():
        log.create_topic(topic.name, topic.partitions)


__all__ = [
    "EventLog",
    "EventLogError",
    "Record",
    "ensure_topics",
    "from_settings",
    "open_event_log",
]
