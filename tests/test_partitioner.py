from collections import Counter

import pytest

from lakehouse.eventlog.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # the vectors of Kafka's own UtilsTest.testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ],
)
def test_murmur2_matches_kafka(key, expected):
    assert murmur2(key.encode()) == expected


def test_partition_is_stable_and_spread():
    keys = [f"card-{i}" for i in range(4000)]
    parts = [partition_for(k, 4) for k in keys]
    assert parts == [partition_for(k.encode(), 4) for k in keys]
    assert min(Counter(parts).values()) > 800
