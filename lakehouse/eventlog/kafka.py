"""The event log on Apache Kafka, through librdkafka (``confluent-kafka``).

Producers write with ``acks=all`` and idempotence on (no duplicates or reordering from the client's own
retries) and Kafka's Java partitioner (murmur2 of the key), so a key lands in the partition any Kafka client
would choose. A produce either succeeds within ``message.timeout.ms`` or fails with :class:`EventLogError`:
nothing stays queued in the client after a failure, so the caller's retry is the only resend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lakehouse.eventlog import EventLog, EventLogError, Record


class KafkaLog(EventLog):
    def __init__(self, bootstrap: str, timeout_s: float = 10.0):
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        common = {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": int(timeout_s * 1000),
            "log_level": 2,  # an outage is reported by the errors raised here, not by librdkafka's own lines
        }
        self._common = common
        self._admin = AdminClient(common)
        try:
            self._admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise EventLogError(f"Kafka at {bootstrap} unreachable: {exc.args[0]}") from exc
        self._producer = Producer(
            {
                **common,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",  # the Java client's partitioner (keyless: random)
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": int(timeout_s * 1000),
                "queue.buffering.max.messages": 500_000,
            }
        )
        self._partitions: dict[str, int] = {}

    def _metadata(self, topic: str):
        try:
            meta = self._admin.list_topics(topic=topic, timeout=self.timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise EventLogError(f"Kafka at {self.bootstrap} unreachable: {exc.args[0]}") from exc
        if meta is None or (meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            raise EventLogError(f"topic {topic!r} does not exist")
        if meta.error is not None:
            raise EventLogError(f"topic {topic!r}: {meta.error.str()}")
        return meta

    def create_topic(self, topic: str, partitions: int) -> None:
        future = self._admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            future.result(timeout=self.timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EventLogError(f"creating topic {topic!r}: {exc.args[0].str()}") from exc
            found = len(self._metadata(topic).partitions)
            if found != partitions:
                raise EventLogError(f"topic {topic!r} exists with {found} partitions") from None
        self._partitions[topic] = partitions

    def delete_topic(self, topic: str) -> None:
        future = self._admin.delete_topics([topic], operation_timeout=self.timeout_s)[topic]
        try:
            future.result(timeout=self.timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise EventLogError(f"deleting topic {topic!r}: {exc.args[0].str()}") from exc
        self._partitions.pop(topic, None)

    def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            self._partitions[topic] = len(self._metadata(topic).partitions)
        return self._partitions[topic]

    def produce_batch(self, topic: str, records: Sequence[tuple[bytes | str | None, bytes]]) -> list[tuple[int, int]]:
        self.partitions(topic)  # a missing topic is an error at once, not after the delivery timeout
        placed: list[tuple[int, int] | None] = [None] * len(records)
        errors: list[KafkaError] = []

        def on_delivery(i: int):
            def done(err, msg) -> None:
                if err is not None:
                    errors.append(err)
                else:
                    placed[i] = (msg.partition(), msg.offset())

            return done

        for i, (key, value) in enumerate(records):
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery(i))
                    break
                except BufferError:  # the client's queue is full: serve delivery reports, then go on
                    self._producer.poll(0.05)
        left = self._producer.flush(self.timeout_s + 5)
        if errors or left:
            reason = errors[0].str() if errors else f"{left} records undelivered"
            raise EventLogError(f"Kafka produce to {topic!r} failed: {reason}")
        return placed  # type: ignore[return-value] - every record was delivered

    def _consumer(self) -> Consumer:
        return Consumer({**self._common, "group.id": "lakehouse-eventlog-reader", "enable.auto.commit": False})

    def _end(self, consumer: Consumer, topic: str, partition: int) -> int:
        """The partition's end offset; a retriable error (a broker that has just restarted and does not lead its
        partitions yet: NOT_LEADER_FOR_PARTITION) is retried for up to ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)[1]
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() >= deadline:
                    raise EventLogError(
                        f"Kafka at {self.bootstrap}: end offset of {topic}[{partition}]: {exc.args[0]}"
                    ) from exc
                time.sleep(0.2)

    def end_offsets(self, topic: str) -> dict[int, int]:
        n = self.partitions(topic)
        consumer = self._consumer()
        try:
            return {p: self._end(consumer, topic, p) for p in range(n)}
        finally:
            consumer.close()

    def read(self, topic: str, partition: int, start: int, end: int, batch_size: int = 5000) -> Iterator[Record]:
        consumer = self._consumer()
        try:
            end = min(end, self._end(consumer, topic, partition))
            if start >= end:
                return
            consumer.assign([TopicPartition(topic, partition, start)])
            position = start
            while position < end:
                polled = consumer.consume(min(batch_size, end - position), timeout=self.timeout_s)
                if not polled:
                    raise EventLogError(f"{topic}[{partition}] stopped at offset {position}, expected up to {end}")
                for msg in polled:
                    if msg.error() is not None:
                        raise EventLogError(f"{topic}[{partition}] at offset {position}: {msg.error().str()}")
                    if msg.offset() >= end:
                        return
                    yield Record(topic, partition, msg.offset(), msg.key(), msg.value(), msg.timestamp()[1])
                    position = msg.offset() + 1
        finally:
            consumer.close()

    def ping(self) -> bool:
        try:
            self._admin.list_topics(timeout=1.0)
            return True
        except KafkaException:
            return False

    def close(self) -> None:
        self._producer.flush(1.0)
