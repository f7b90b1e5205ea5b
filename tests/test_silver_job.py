"""Silver's exactly-once writes on real Delta tables (Spark's Delta writer): dedup against earlier batches,
replays, schema evolution, the watermark a replay sees, label corrections."""

from datetime import UTC, datetime, timedelta

import pytest

from lakehouse import delta
from lakehouse.catalog import LABELS_TABLE, MARKET_TICKS, STREAM_BATCHES, TRANSACTIONS
from lakehouse.tables import ensure, spark_schema
from silver.job import BatchReport, Counts, SilverWriter, TransactionsBatch

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
KEY = ["symbol", "event_time"]
# a batch's labels as ``silver.transforms.latest_labels`` gives them
LABEL_EVENT = (
    "transaction_id string, card_id string, label string, label_source string, label_scenario string, "
    "label_reported_at timestamp"
)


def local_settings(settings, tmp_path):
    return settings.model_copy(
        update={
            "lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path / "lh")}),
            "spark": settings.spark.model_copy(update={"checkpoint_root": str(tmp_path / "ck")}),
        }
    )


def fixed_ids(w: SilverWriter) -> SilverWriter:
    w.query_id = lambda spark: "test-query"
    return w


@pytest.fixture()
def writer(settings, tmp_path):
    local = local_settings(settings, tmp_path)
    ensure(local, MARKET_TICKS)
    ensure(local, STREAM_BATCHES)
    return fixed_ids(SilverWriter(local, "silver.market_ticks"))


def ticks(spark, *minutes: int, venue: str | None = None):
    rows = [
        {"symbol": "ACME", "event_time": T0 + timedelta(minutes=m), "price": 10.0 + m, "volume": 1.0, "scenario": None,
         "source_partition": 0, "source_offset": m, "log_time": T0, "processed_at": T0, "event_date": T0.date(),
         **({"venue": venue} if venue else {})}
        for m in minutes
    ]  # fmt: skip
    schema = spark_schema(MARKET_TICKS) + (", venue string" if venue else "")
    return spark.createDataFrame(rows, schema)


def counts(*minutes: int) -> Counts:
    times = [T0 + timedelta(minutes=m) for m in minutes]
    return Counts(len(times), len(times), 0, 0, min(times), max(times), max(times))


def insert(w, df, minutes, batch_id) -> int:
    return w.merge_new(MARKET_TICKS, df, KEY, counts(*minutes), batch_id)["numTargetRowsInserted"]


def offsets(spark, w) -> list[int]:
    return sorted(r.source_offset for r in delta.read(spark, MARKET_TICKS.uri(w.settings)).collect())


def test_rows_already_in_silver_are_counted_not_inserted(spark, writer):
    assert insert(writer, ticks(spark, 1, 2, 3), (1, 2, 3), batch_id=0) == 3
    assert insert(writer, ticks(spark, 3, 4), (3, 4), batch_id=1) == 1
    assert offsets(spark, writer) == [1, 2, 3, 4]


def test_a_replayed_batch_writes_nothing_and_reports_what_it_wrote_the_first_time(spark, writer):
    assert insert(writer, ticks(spark, 1, 2), (1, 2), batch_id=0) == 2
    assert insert(writer, ticks(spark, 1, 2, 9), (1, 2, 9), batch_id=0) == 2
    assert offsets(spark, writer) == [1, 2]


def test_a_field_added_by_a_newer_contract_becomes_a_column(spark, writer):
    insert(writer, ticks(spark, 1), (1,), batch_id=0)
    insert(writer, ticks(spark, 2, venue="XPAR"), (2,), batch_id=1)
    rows = delta.read(spark, MARKET_TICKS.uri(writer.settings)).orderBy("source_offset").collect()
    assert [r.venue for r in rows] == [None, "XPAR"]


def test_the_watermark_is_per_batch_so_a_replay_sees_the_same_watermark(spark, writer):
    assert writer.watermark_before(spark, 0) is None
    writer.finish(spark, 0, BatchReport(rows_in=1, max_event_time=T0 + timedelta(minutes=30)), None, 0.0)
    first = T0 + timedelta(minutes=30) - writer.lateness
    writer.finish(spark, 1, BatchReport(rows_in=1, max_event_time=T0 + timedelta(hours=2)), first, 0.0)
    restarted = fixed_ids(SilverWriter(writer.settings, writer.query))  # nothing in memory: read from the table
    assert restarted.watermark_before(spark, 1) == first  # batch 1 replayed: the watermark batch 0 left
    assert restarted.watermark_before(spark, 7) == T0 + timedelta(hours=2) - writer.lateness
    assert writer.watermark_before(spark, 2) == T0 + timedelta(hours=2) - writer.lateness  # from memory
    other = SilverWriter(writer.settings, writer.query)  # another query id (a reset checkpoint) starts afresh
    other.query_id = lambda spark: "another-query"
    assert other.watermark_before(spark, 5) is None
    assert writer.next_watermark(T0, T0 + timedelta(minutes=5)) == T0  # never moves back


@pytest.fixture()
def labeller(settings, tmp_path) -> TransactionsBatch:
    """silver.transactions' batch writer on a lake of its own, for its label MERGEs (no reference cache)."""
    local = local_settings(settings, tmp_path)
    w = TransactionsBatch.__new__(TransactionsBatch)
    SilverWriter.__init__(w, local, "silver.transactions")
    fixed_ids(w)
    w.label_horizon = timedelta(days=local.streaming.label_horizon_days)
    ensure(local, TRANSACTIONS)
    ensure(local, LABELS_TABLE)
    return w


def test_a_label_delivered_again_changes_nothing_a_correction_does(spark, labeller):
    """An identical label again (an at-least-once producer) keeps ``labeled_at``, the instant audits turn on; a
    different label reported at the same time, or a later one, replaces it; an older one does not."""
    w = labeller
    local = w.settings
    tx = spark.createDataFrame(
        [{"transaction_id": "t1", "card_id": "card-0001", "event_time": T0, "event_date": T0.date(), "amount": 5.0}],
        spark_schema(TRANSACTIONS),
    )
    tx_counts = Counts(1, 1, 0, 0, T0, T0, T0)
    assert w.merge_new(TRANSACTIONS, tx, ["transaction_id"], tx_counts, 0)["numTargetRowsInserted"] == 1
    none = Counts(0, 0, 0, 0, None, None, None)

    def label(value: str, reported: datetime, source: str = "chargeback"):
        return spark.createDataFrame(
            [("t1", "card-0001", value, source, None, reported)],
            LABEL_EVENT,
        )

    def state() -> tuple:
        row = delta.read(spark, TRANSACTIONS.uri(local)).first()
        return row["label"], row["label_reported_at"], row["labeled_at"]

    t1 = T0 + timedelta(days=1)
    assert w._labels(label("fraud", t1), None, none, batch_id=1) == (1, 1)
    first = state()
    assert first[0] == "fraud" and first[2] is not None
    assert w._labels(label("fraud", t1), None, none, batch_id=2) == (1, 0)  # the same label again
    assert state() == first
    assert w._labels(label("fraud", t1 - timedelta(hours=1), "analyst"), None, none, batch_id=3) == (1, 0)  # older
    assert state() == first
    assert w._labels(label("genuine", t1, "analyst"), None, none, batch_id=4) == (1, 1)  # a correction, same time
    corrected = state()
    assert corrected[0] == "genuine" and corrected[1] == first[1] and corrected[2] > first[2]
    labels = delta.read(spark, LABELS_TABLE.uri(local)).collect()
    assert [(r["label"], r["label_source"]) for r in labels] == [("genuine", "analyst")]


def test_a_label_that_came_before_its_transaction_is_applied_when_it_arrives(spark, labeller):
    w = labeller
    local = w.settings
    early = spark.createDataFrame(
        [("t2", "card-0002", "fraud", "chargeback", None, T0 + timedelta(minutes=1))],
        LABEL_EVENT,
    )
    assert w._labels(early, None, Counts(0, 0, 0, 0, None, None, None), batch_id=0) == (1, 0)  # no transaction yet
    tx = spark.createDataFrame(
        [{"transaction_id": "t2", "card_id": "card-0002", "event_time": T0, "event_date": T0.date(), "amount": 9.0}],
        spark_schema(TRANSACTIONS),
    )
    c = Counts(1, 1, 0, 0, T0, T0, T0)
    w.merge_new(TRANSACTIONS, tx, ["transaction_id"], c, 1)
    no_labels = early.limit(0)
    assert w._labels(no_labels, tx, c, batch_id=1) == (0, 1)
    assert delta.read(spark, TRANSACTIONS.uri(local)).first()["label"] == "fraud"
