"""The event log through the real broker (the test stack's own Kafka broker, KRaft mode)."""

import pytest

from lakehouse import eventlog
from lakehouse.eventlog import EventLogError
from tools.stack.process import ProcessManager
from tools.stack.services import stack_services


@pytest.fixture()
def log(stack):
    log = eventlog.from_settings(stack)
    yield log
    log.close()


def test_topics_exist_after_up(log, stack):
    for topic in stack.eventlog.topics.all():
        assert log.partitions(topic.name) == topic.partitions


def test_produce_and_read_back_by_key_partition_in_order(log):
    log.create_topic("t-order", 4)
    records = [(f"card-{i % 10}", f"v{i}".encode()) for i in range(500)]
    placed = log.produce_batch("t-order", records)
    partition_of = {}
    for (key, _), (p, _) in zip(records, placed, strict=True):  # a key always lands in one partition
        assert partition_of.setdefault(key, p) == p
    assert len(set(partition_of.values())) > 1
    ends = log.end_offsets("t-order")
    assert sum(ends.values()) == 500
    seen = {}
    for p, end in ends.items():
        got = list(log.read("t-order", p, 0, end, batch_size=37))
        assert [r.offset for r in got] == list(range(end))  # dense offsets from 0 (no transactions here)
        for r in got:
            seen[r.value] = r
    assert len(seen) == 500
    for i in range(10):  # per-key order holds
        values = [
            r.value for r in sorted((r for r in seen.values() if r.key == f"card-{i}".encode()), key=lambda r: r.offset)
        ]
        assert values == [f"v{j}".encode() for j in range(i, 500, 10)]


def test_read_is_a_half_open_range(log):
    log.create_topic("t-range", 1)
    log.produce_batch("t-range", [(None, str(i).encode()) for i in range(20)])
    assert [int(r.value) for r in log.read("t-range", 0, 5, 9)] == [5, 6, 7, 8]
    assert list(log.read("t-range", 0, 20, 30)) == []


def test_topic_errors_are_clear(log):
    with pytest.raises(EventLogError, match="does not exist"):
        log.produce("no-such-topic", "k", b"v")
    log.create_topic("t-fixed", 2)
    with pytest.raises(EventLogError, match="exists with 2 partitions"):
        log.create_topic("t-fixed", 3)


def test_records_survive_a_broker_restart(stack, log):
    log.create_topic("t-durable", 2)
    log.produce_batch("t-durable", [(f"k{i}", f"{i}".encode()) for i in range(100)])
    before = log.end_offsets("t-durable")
    svc = next(s for s in stack_services(stack) if s.name == "kafka")
    manager = ProcessManager(stack.state_path)
    assert manager.stop(svc) == "stopped"
    assert not log.ping()
    manager.start(svc)
    after = eventlog.from_settings(stack)
    assert after.end_offsets("t-durable") == before
    values = sorted(int(r.value) for p, e in before.items() for r in after.read("t-durable", p, 0, e))
    assert values == list(range(100))
    after.close()


def test_an_unreachable_broker_is_a_clear_error():
    with pytest.raises(EventLogError, match=r"Kafka at 127\.0\.0\.1:1 unreachable"):
        eventlog.open_event_log("127.0.0.1:1", timeout_s=2)
