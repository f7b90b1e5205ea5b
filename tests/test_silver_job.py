"""Silver's exactly-once writes on real Delta tables: dedup against earlier batches, replays, schema evolution."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from lakehouse import delta
from lakehouse.streaming import WatermarkState
from lakehouse.tables import ensure
from silver.job import SilverWriter, TransactionsBatch
from silver.tables import MARKET_TICKS

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture()
def writer(settings, tmp_path, monkeypatch):
    local = settings.model_copy(
        update={
            "lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path / "lh")}),
            "spark": settings.spark.model_copy(update={"checkpoint_root": str(tmp_path / "ck")}),
        }
    )
    w = SilverWriter(local, "silver.market_ticks")
    monkeypatch.setattr(w, "app", lambda output: f"test-query/{output}")
    ensure(local, MARKET_TICKS)
    return w


def ticks(*minutes: int, **extra) -> pa.Table:
    rows = [
        {"symbol": "ACME", "event_time": T0 + timedelta(minutes=m), "price": 10.0 + m, "volume": 1.0, "scenario": None,
         "source_partition": 0, "source_offset": m, "log_time": T0, "processed_at": T0, "event_date": T0.date(),
         **extra}
        for m in minutes
    ]  # fmt: skip
    schema = MARKET_TICKS.schema
    for name in extra:
        schema = schema.append(pa.field(name, pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def rows(w):
    return delta.read_arrow(w.settings, MARKET_TICKS.uri(w.settings))


def test_rows_already_in_silver_are_counted_not_inserted(writer):
    assert writer.insert_new(MARKET_TICKS, ticks(1, 2, 3), ["symbol", "event_time"], batch_id=0) == 3
    assert writer.insert_new(MARKET_TICKS, ticks(3, 4), ["symbol", "event_time"], batch_id=1) == 1
    assert sorted(rows(writer).column("source_offset").to_pylist()) == [1, 2, 3, 4]


def test_a_replayed_batch_writes_nothing_and_reports_what_it_wrote_the_first_time(writer):
    assert writer.insert_new(MARKET_TICKS, ticks(1, 2), ["symbol", "event_time"], batch_id=0) == 2
    assert writer.insert_new(MARKET_TICKS, ticks(1, 2, 9), ["symbol", "event_time"], batch_id=0) == 2
    assert rows(writer).num_rows == 2


def test_a_field_added_by_a_newer_contract_becomes_a_column(writer):
    writer.insert_new(MARKET_TICKS, ticks(1), ["symbol", "event_time"], batch_id=0)
    writer.insert_new(MARKET_TICKS, ticks(2, venue="XPAR"), ["symbol", "event_time"], batch_id=1)
    table = rows(writer).sort_by("source_offset")
    assert table.column("venue").to_pylist() == [None, "XPAR"]


def test_watermark_state_is_per_batch_so_a_replay_sees_the_same_watermark(tmp_path):
    state = WatermarkState(str(tmp_path))
    assert state.before(0) is None
    state.record(0, T0)
    state.record(1, T0 + timedelta(minutes=5))
    assert state.before(1) == T0  # batch 1 replayed: the watermark batch 0 left, not its own
    assert state.before(7) == T0 + timedelta(minutes=5)
    w = SilverWriter.__new__(SilverWriter)
    w.lateness = timedelta(minutes=10)
    assert w.next_watermark(T0, T0 + timedelta(minutes=30)) == T0 + timedelta(minutes=20)
    assert w.next_watermark(T0, T0 + timedelta(minutes=5)) == T0  # never moves back


def test_a_label_delivered_again_changes_nothing_a_correction_does(settings, tmp_path, monkeypatch):
    """An identical label again (an at-least-once producer) keeps ``labeled_at``, the instant audits turn on; a
    different label reported at the same time, or a later one, replaces it; an older one does not."""
    from silver.tables import LABELS_TABLE, TRANSACTIONS

    local = settings.model_copy(
        update={"lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path / "lh")}),
                "spark": settings.spark.model_copy(update={"checkpoint_root": str(tmp_path / "ck")})}
    )  # fmt: skip
    w = TransactionsBatch.__new__(TransactionsBatch)  # the label MERGEs need no Spark: no reference cache
    SilverWriter.__init__(w, local, "silver.transactions")
    w.label_horizon = timedelta(days=local.streaming.label_horizon_days)
    monkeypatch.setattr(w, "app", lambda output: f"test-query/{output}")
    ensure(local, TRANSACTIONS)
    ensure(local, LABELS_TABLE)
    tx = pa.Table.from_pylist(
        [{"transaction_id": "t1", "card_id": "card-0001", "event_time": T0, "event_date": T0.date(), "amount": 5.0}],
        schema=TRANSACTIONS.schema,
    )
    assert w.insert_new(TRANSACTIONS, tx, ["transaction_id"], batch_id=0) == 1

    def label(value: str, reported: datetime, source: str = "chargeback") -> pa.Table:
        return pa.Table.from_pylist(
            [{"transaction_id": "t1", "card_id": "card-0001", "label": value, "label_source": source,
              "label_scenario": None, "label_reported_at": reported}],
            schema=pa.schema([LABELS_TABLE.schema.field(c) for c in ("transaction_id", "card_id", "label",
                              "label_source", "label_scenario", "label_reported_at")]),
        )  # fmt: skip

    def state() -> tuple:
        row = delta.read_arrow(local, TRANSACTIONS.uri(local)).to_pylist()[0]
        return row["label"], row["label_reported_at"], row["labeled_at"]

    t1 = T0 + timedelta(days=1)
    assert w._labels(label("fraud", t1), tx.slice(0, 0), batch_id=1) == 1
    first = state()
    assert first[:2] == ("fraud", t1) and first[2] is not None
    assert w._labels(label("fraud", t1), tx.slice(0, 0), batch_id=2) == 0  # the same label again
    assert state() == first
    assert w._labels(label("fraud", t1 - timedelta(hours=1), "analyst"), tx.slice(0, 0), batch_id=3) == 0  # older
    assert state() == first
    assert w._labels(label("genuine", t1, "analyst"), tx.slice(0, 0), batch_id=4) == 1  # a correction, same time
    corrected = state()
    assert corrected[:2] == ("genuine", t1) and corrected[2] > first[2]
    labels = delta.read_arrow(local, LABELS_TABLE.uri(local)).to_pylist()
    assert [(r["label"], r["label_source"]) for r in labels] == [("genuine", "analyst")]
