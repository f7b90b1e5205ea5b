"""Spark reads the event log through its own Kafka source (the Maven jars); offsets live in the checkpoint."""

from lakehouse import eventlog
from lakehouse.spark import read_event_stream


def run_available(spark, settings, topic, checkpoint, max_records=None):
    got = []
    df = read_event_stream(spark, settings, topic, max_records)
    q = (
        df.writeStream.foreachBatch(lambda b, i: got.append((i, [tuple(r) for r in b.collect()])))
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    q.awaitTermination(300)
    assert q.exception() is None
    return [(i, rows) for i, rows in got if rows]


def test_stream_reads_each_record_once_across_restarts(stack, spark, tmp_path):
    log = eventlog.from_settings(stack)
    log.create_topic("t-spark", 3)
    placed = log.produce_batch("t-spark", [(f"card-{i}", f"{i}".encode()) for i in range(300)])
    checkpoint = str(tmp_path / "ckpt")
    first = [row for _, rows in run_available(spark, stack, "t-spark", checkpoint) for row in rows]
    assert sorted(int(r[1]) for r in first) == list(range(300))
    key, value, topic, partition, offset, timestamp, ts_type = first[0]
    assert key == f"card-{int(value)}".encode()
    assert topic == "t-spark" and timestamp is not None and ts_type == 0
    assert (partition, offset) == placed[int(value)]  # where the producer was told it landed
    # a restarted query resumes from the checkpoint: only the new records
    log.produce_batch("t-spark", [(f"card-{i}", f"{i}".encode()) for i in range(300, 420)])
    second = [row for _, rows in run_available(spark, stack, "t-spark", checkpoint) for row in rows]
    assert sorted(int(r[1]) for r in second) == list(range(300, 420))
    assert run_available(spark, stack, "t-spark", checkpoint) == []
    # availableNow with a rate limit drains everything there is, in several batches (not one capped batch)
    log.produce_batch("t-spark", [(f"card-{i}", f"{i}".encode()) for i in range(420, 520)])
    third = run_available(spark, stack, "t-spark", checkpoint, max_records=30)
    assert len(third) >= 4 and all(len(rows) <= 30 for _, rows in third)
    assert sorted(int(r[1]) for _, rows in third for r in rows) == list(range(420, 520))
    log.close()
