"""Event log on Redis Streams: one stream per topic partition, Kafka-like dense offsets.

Entries are appended with the explicit id ``0-*`` so Redis assigns ``0-1, 0-2, ...`` atomically: the
sequence number minus one is the record's offset, which keeps offsets dense and comparable with Kafka.
Durability comes from the server's AOF (the embedded broker runs with ``appendonly yes``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import redis

from lakehouse.eventlog import EventLog, EventLogError, Record
from lakehouse.eventlog.partitioner import partition_for

_TOPICS = "eventlog:topics"


def stream_key(topic: str, partition: int) -> str:
    return f"eventlog:{topic}:{partition}"


class RedisStreamsLog(EventLog):
    def __init__(self, url: str, retries: int = 20, retry_wait_s: float = 0.5):
        self.url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._partitions: dict[str, int] = {}
        self._retries = retries
        self._retry_wait_s = retry_wait_s

    def _call(self, fn, *, retry: bool = True):
        attempts = self._retries if retry else 1
        for attempt in range(attempts):
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise EventLogError(f"event log at {self.url} unreachable: {exc}") from exc
                time.sleep(self._retry_wait_s)
        raise AssertionError("unreachable")

    def create_topic(self, topic: str, partitions: int) -> None:
        created = self._call(lambda: self._redis.hsetnx(_TOPICS, topic, partitions))
        if not created and self.partitions(topic) != partitions:
            raise EventLogError(f"topic {topic!r} exists with {self.partitions(topic)} partitions, not {partitions}")
        self._partitions[topic] = partitions

    def delete_topic(self, topic: str) -> None:
        n = self.partitions(topic)
        self._call(lambda: self._redis.delete(*(stream_key(topic, p) for p in range(n))))
        self._call(lambda: self._redis.hdel(_TOPICS, topic))
        self._partitions.pop(topic, None)

    def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            value = self._call(lambda: self._redis.hget(_TOPICS, topic))
            if value is None:
                raise EventLogError(f"topic {topic!r} does not exist (run `make up` or create it)")
            self._partitions[topic] = int(value)
        return self._partitions[topic]

    def produce_batch(self, topic: str, records: Sequence[tuple[bytes | str | None, bytes]]) -> list[tuple[int, int]]:
        n = self.partitions(topic)
        now_ms = int(time.time() * 1000)
        parts = [partition_for(key, n) for key, _ in records]

        def send():
            pipe = self._redis.pipeline(transaction=False)
            for (key, value), part in zip(records, parts, strict=True):
                fields = {"v": value, "ts": now_ms}
                if key is not None:
                    fields["k"] = key
                pipe.xadd(stream_key(topic, part), fields, id="0-*")
            return pipe.execute()

        ids = self._call(send)
        return [(part, _offset(entry_id)) for part, entry_id in zip(parts, ids, strict=True)]

    def end_offsets(self, topic: str) -> dict[int, int]:
        n = self.partitions(topic)

        def query():
            pipe = self._redis.pipeline(transaction=False)
            for p in range(n):
                pipe.xinfo_stream(stream_key(topic, p))
            return pipe.execute(raise_on_error=False)

        result = self._call(query)
        return {
            p: 0 if isinstance(info, Exception) else _offset(info["last-generated-id"]) + 1
            for p, info in enumerate(result)
        }

    def read(self, topic: str, partition: int, start: int, end: int, batch_size: int = 5000) -> Iterator[Record]:
        key = stream_key(topic, partition)
        next_offset = start
        while next_offset < end:
            lo, hi = f"0-{next_offset + 1}", f"0-{end}"
            count = min(batch_size, end - next_offset)
            entries = self._call(lambda lo=lo, hi=hi, count=count: self._redis.xrange(key, lo, hi, count=count))
            if not entries:
                return
            for entry_id, fields in entries:
                offset = _offset(entry_id)
                yield Record(topic, partition, offset, fields.get(b"k"), fields.get(b"v"), int(fields.get(b"ts", 0)))
            next_offset = _offset(entries[-1][0]) + 1

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()


def _offset(entry_id: bytes | str) -> int:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, seq = entry_id.split("-")
    if ms != "0":
        raise EventLogError(f"stream entry {entry_id} was not written by this event log")
    return int(seq) - 1
