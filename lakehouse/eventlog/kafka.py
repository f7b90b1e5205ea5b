"""Event log on Kafka (the docker-compose stack), with kafka-python.

Records are sent to the partition chosen by the shared murmur2 partitioner (identical to Kafka's default
one), with ``acks=all`` and retries, so a key lands in the same partition on either backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lakehouse.eventlog import EventLog, EventLogError, Record
from lakehouse.eventlog.partitioner import partition_for


class KafkaLog(EventLog):
    def __init__(self, bootstrap: str, request_timeout_ms: int = 30000, connect_timeout_ms: int = 5000):
        from kafka import KafkaProducer
        from kafka.admin import KafkaAdminClient

        self.bootstrap = bootstrap
        try:
            self._admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=request_timeout_ms,
                api_version_auto_timeout_ms=connect_timeout_ms,
            )
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                retries=10,
                linger_ms=5,
                max_in_flight_requests_per_connection=1,
                api_version_auto_timeout_ms=connect_timeout_ms,
            )
        except Exception as exc:  # kafka-python raises NoBrokersAvailable and friends
            raise EventLogError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
        self._partitions: dict[str, int] = {}

    def _consumer(self):
        from kafka import KafkaConsumer

        return KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)

    def create_topic(self, topic: str, partitions: int) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        try:
            self._admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            if self.partitions(topic) != partitions:
                raise EventLogError(f"topic {topic!r} exists with {self.partitions(topic)} partitions") from None
        self._partitions[topic] = partitions

    def delete_topic(self, topic: str) -> None:
        self._admin.delete_topics([topic])
        self._partitions.pop(topic, None)

    def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            found = self._producer.partitions_for(topic)
            if not found:
                raise EventLogError(f"topic {topic!r} does not exist")
            self._partitions[topic] = len(found)
        return self._partitions[topic]

    def produce_batch(self, topic: str, records: Sequence[tuple[bytes | str | None, bytes]]) -> list[tuple[int, int]]:
        from kafka.errors import KafkaError

        n = self.partitions(topic)
        futures = []
        try:
            for key, value in records:
                kb = key.encode() if isinstance(key, str) else key
                futures.append(self._producer.send(topic, key=kb, value=value, partition=partition_for(kb, n)))
            self._producer.flush()
            return [((meta := future.get(timeout=30)).partition, meta.offset) for future in futures]
        except KafkaError as exc:  # as the Redis log does: the producer holds the batch and retries (traffic.producer)
            raise EventLogError(f"Kafka produce to {topic!r} failed: {exc}") from exc

    def end_offsets(self, topic: str) -> dict[int, int]:
        from kafka import TopicPartition

        consumer = self._consumer()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.partitions(topic))]
            return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        finally:
            consumer.close()

    def read(self, topic: str, partition: int, start: int, end: int, batch_size: int = 5000) -> Iterator[Record]:
        from kafka import TopicPartition

        consumer = self._consumer()
        tp = TopicPartition(topic, partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            position = start
            while position < end:
                polled = consumer.poll(timeout_ms=10000, max_records=min(batch_size, end - position))
                if not polled:
                    raise EventLogError(f"{topic}[{partition}] stopped at offset {position}, expected up to {end}")
                for msg in polled.get(tp, []):
                    if msg.offset >= end:
                        return
                    yield Record(topic, partition, msg.offset, msg.key, msg.value, msg.timestamp)
                    position = msg.offset + 1
        finally:
            consumer.close()

    def ping(self) -> bool:
        return bool(self._producer.bootstrap_connected())

    def close(self) -> None:
        self._producer.close()
        self._admin.close()
