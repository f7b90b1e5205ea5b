"""The end-to-end run's invariants catch what they are for: each violation planted in otherwise good rows."""

from __future__ import annotations

from datetime import date

import pytest

from tools.e2e import invariants as inv

DAY = date(2026, 4, 6)


def log(*records: tuple[str, int, int, str]) -> list[dict]:
    return [{"topic": t, "partition": p, "offset": o, "key": k} for t, p, o, k in records]


LOG = log(("tx", 0, 0, "a"), ("tx", 0, 1, "bad-1"), ("tx", 1, 0, "b"), ("labels", 0, 0, "a"))
LANDED = [{"topic": t, "partition": p, "offset": o} for t, p, o in (("tx", 0, 0), ("tx", 1, 0), ("labels", 0, 0))]
DEAD = [{"topic": "tx", "partition": 0, "offset": 1, "key": "bad-1", "reason": "malformed_json"}]
REASONS = {"bad-1": "malformed_json"}


def test_bronze_conservation_holds_for_good_rows():
    assert inv.bronze_conservation(LOG, LANDED, DEAD, REASONS).ok


@pytest.mark.parametrize(
    ("landed", "dead", "reasons", "problem"),
    [
        (LANDED + LANDED[:1], DEAD, REASONS, "twice in bronze"),
        (LANDED, DEAD + DEAD, REASONS, "twice in the dead letter"),
        (LANDED[1:], DEAD, REASONS, "in neither"),
        ([*LANDED, {"topic": "tx", "partition": 0, "offset": 1}], [], REASONS, "bad records landed in bronze"),
        (LANDED, DEAD, {"bad-1": "oversized"}, "dead-lettered for the wrong reason"),
        (LANDED[1:], [*DEAD, {**LANDED[0], "key": "a", "reason": "oversized"}], REASONS, "good records dead-lettered"),
        ([*LANDED, {"topic": "tx", "partition": 9, "offset": 9}], DEAD, REASONS, "not from the log"),
    ],
)
def test_bronze_conservation_catches(landed, dead, reasons, problem):
    found = inv.bronze_conservation(LOG, landed, dead, reasons)
    assert not found.ok and problem in found.detail


def test_exactly_once_catches_twice_missing_and_unexpected():
    assert inv.exactly_once({"a", "b"}, ["b", "a"], "x").ok
    assert "twice: 1 (a)" in inv.exactly_once({"a", "b"}, ["a", "a", "b"], "x").detail
    assert "missing: 1 (b)" in inv.exactly_once({"a", "b"}, ["a"], "x").detail
    assert "unexpected: 1 (c)" in inv.exactly_once({"a"}, ["a", "c"], "x").detail


def test_producer_loss_is_caught():
    assert inv.produced_in_log({"a", "b"}, ["a", "b", "b"], "transaction").ok
    assert not inv.produced_in_log({"a", "b"}, ["a"], "transaction").ok


def test_latest_label_wins_and_a_stale_or_invented_label_is_caught():
    events = [
        {"transaction_id": "a", "label": "genuine", "reported_at": 1},
        {"transaction_id": "a", "label": "fraud", "reported_at": 2},
    ]
    assert inv.latest_labels(
        events, [{"transaction_id": "a", "label": "fraud"}, {"transaction_id": "b", "label": None}]
    ).ok
    assert not inv.latest_labels(events, [{"transaction_id": "a", "label": "genuine"}]).ok
    invented = [{"transaction_id": "a", "label": "fraud"}, {"transaction_id": "b", "label": "fraud"}]
    assert "label without a label event" in inv.latest_labels(events, invented).detail


SILVER = [
    {"transaction_id": "a", "event_date": DAY, "amount": 10.0, "label": "fraud"},
    {"transaction_id": "b", "event_date": DAY, "amount": 5.5, "label": None},
]
DECISIONS = [{"transaction_id": "a", "decision": "block"}, {"transaction_id": "b", "decision": "approve"}]
SUMMARY = {"event_date": DAY, "total_count": 2, "total_amount": 15.5, "fraud_count": 1, "fraud_amount": 10.0,
           "flagged_count": 1, "blocked_count": 1}  # fmt: skip


def test_gold_totals_agree_with_silver():
    assert inv.gold_totals(SILVER, DECISIONS, [SUMMARY]).ok


@pytest.mark.parametrize(
    ("change", "problem"),
    [({"total_count": 3}, "total_count"), ({"fraud_amount": 9.0}, "fraud_amount"),
     ({"blocked_count": 0}, "blocked_count"), ({"event_date": date(2026, 4, 7)}, "no gold row")],
)  # fmt: skip
def test_gold_totals_catch_a_wrong_or_missing_day(change, problem):
    found = inv.gold_totals(SILVER, DECISIONS, [{**SUMMARY, **change}])
    assert not found.ok and problem in found.detail


def test_gold_totals_catch_a_day_twice():
    assert "rows twice" in inv.gold_totals(SILVER, DECISIONS, [SUMMARY, SUMMARY]).detail


def test_alerts_once_and_only_for_flagged():
    assert inv.alerts_once_for_flagged(["a"], DECISIONS).ok
    assert "alerted twice" in inv.alerts_once_for_flagged(["a", "a"], DECISIONS).detail
    assert "approved or unknown" in inv.alerts_once_for_flagged(["b"], DECISIONS).detail


def test_decided_by_the_champion():
    rows = [{"transaction_id": "a", "model_name": "m", "model_version": "2"},
            {"transaction_id": "b", "model_name": "m", "model_version": "1"}]  # fmt: skip
    assert inv.decided_by(rows, {"a"}, "m", "2").ok
    assert not inv.decided_by(rows, {"a", "b"}, "m", "2").ok


def test_time_travel_needs_the_earlier_state_before_and_the_label_after():
    row = {"silver": {"row": {"transaction_id": "a"}}}
    unlabelled, fraud = {**row, "label": None}, {**row, "label": {"label": "fraud"}}
    genuine = {**row, "label": {"label": "genuine"}}
    assert inv.time_travel([("a", unlabelled, fraud), ("b", genuine, fraud)]).ok
    assert not inv.time_travel([("a", fraud, fraud)]).ok
    assert not inv.time_travel([("a", unlabelled, unlabelled)]).ok
    assert "not in silver" in inv.time_travel([("a", {"status": 404}, fraud)]).detail
    assert not inv.time_travel([]).ok


def test_api_answers_never_a_5xx():
    assert inv.api_answers([200, 200], 200, "x").ok
    assert "500 x1" in inv.api_answers([200, 500], 200, "x").detail
    assert not inv.api_answers([], 200, "x").ok


def test_batch_counters_add_up_across_replays():
    batches = [
        {"batch_id": 0, "rows_in": 5, "inserted": 4, "duplicates_in_batch": 1, "duplicates_seen_before": 0},
        {"batch_id": 1, "rows_in": 3, "inserted": 2, "duplicates_in_batch": 0, "duplicates_seen_before": 1},
    ]
    assert inv.batch_counters(batches, logged=8, unique=6).ok
    assert "batches twice" in inv.batch_counters([*batches, batches[1]], logged=11, unique=8).detail
    assert "inserted 6 != 7" in inv.batch_counters(batches, logged=8, unique=7).detail
    assert "rows_in 8 != 9" in inv.batch_counters(batches, logged=9, unique=6).detail
