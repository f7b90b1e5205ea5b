"""Synthetic traffic: determinism, contracts, scenarios with ground truth, delayed labels, market ticks."""

import io
import time
from collections import Counter, defaultdict

import pytest

from lakehouse.contracts import TIME_FIELDS, Limits, check, encode
from lakehouse.eventlog import EventLog, EventLogError
from lakehouse.eventlog.producer import UndeliveredError, send, topic_for
from tools.traffic.__main__ import merge
from tools.traffic.generator import SCENARIOS, GeneratorConfig, TrafficGenerator
from tools.traffic.market import MARKET_SCENARIOS, MarketConfig, MarketGenerator
from tools.traffic.population import haversine_km

HOURS = 3_600_000
CFG = GeneratorConfig(seed=11, rate=12, fraud_rate=0.03, customers=800, label_delay_days=0.02, compromise_days=0.02)
LIMITS = Limits(max_future_skew_ms=10**13)


@pytest.fixture(scope="module")
def events():
    return list(TrafficGenerator(CFG).events(until_ms=CFG.start_ms + 8 * HOURS))


def test_same_seed_same_events():
    a = list(TrafficGenerator(CFG).events(until_ms=CFG.start_ms + HOURS // 2))
    b = list(TrafficGenerator(CFG).events(until_ms=CFG.start_ms + HOURS // 2))
    assert len(a) > 1000
    assert a == b


def test_other_seed_other_events():
    other = GeneratorConfig(**{**CFG.__dict__, "seed": 12})
    a = list(TrafficGenerator(CFG).events(until_ms=CFG.start_ms + HOURS // 4))
    b = list(TrafficGenerator(other).events(until_ms=CFG.start_ms + HOURS // 4))
    assert [e["transaction_id"] for _, e in a[:50]] != [e["transaction_id"] for _, e in b[:50]]


def test_every_event_meets_its_contract_and_comes_in_time_order(events):
    times = []
    for kind, event in events:
        check(kind, event, LIMITS)
        times.append(event[TIME_FIELDS[kind]])
    assert times == sorted(times)
    assert len({e["transaction_id"] for k, e in events if k == "transaction"}) == sum(
        1 for k, _ in events if k == "transaction"
    )


def test_every_scenario_is_injected_with_fraud_labels_after_the_transaction(events):
    tx = {e["transaction_id"]: e for k, e in events if k == "transaction"}
    labels = [e for k, e in events if k == "label"]
    fraud = [lab for lab in labels if lab["label"] == "fraud"]
    assert set(SCENARIOS) <= {lab["scenario"] for lab in fraud}
    assert any(lab["label"] == "genuine" for lab in labels)
    for lab in labels:
        assert lab["reported_at"] - tx[lab["transaction_id"]]["event_time"] >= HOURS  # labels arrive late
        assert lab["card_id"] == tx[lab["transaction_id"]]["card_id"]
    share = len(fraud) / len(tx)
    assert 0.01 < share < 0.08, share


def test_scenarios_have_their_signatures(events):
    tx = {e["transaction_id"]: e for k, e in events if k == "transaction"}
    by_scenario = defaultdict(list)
    for k, e in events:
        if k == "label" and e["label"] == "fraud":
            by_scenario[e["scenario"]].append(tx[e["transaction_id"]])
    assert sum(t["amount"] <= 3.0 for t in by_scenario["card_testing"]) / len(by_scenario["card_testing"]) > 0.8
    assert all(t["country"] not in ("FR", "DE", "ES", "IT", "NL", "BE") for t in by_scenario["impossible_travel"])
    assert all(
        t["transaction_type"] == "TRANSFER" and t["channel"] == "MOBILE" for t in by_scenario["account_takeover"]
    )
    assert all(t["amount"] >= 200 for t in by_scenario["amount_spike"])
    assert len({t["terminal_id"] for t in by_scenario["compromised_terminal"]}) < len(
        by_scenario["compromised_terminal"]
    )
    burst_cards = Counter(t["card_id"] for t in by_scenario["velocity_burst"])
    assert max(burst_cards.values()) >= 8


def test_impossible_travel_is_far_from_home_quickly(events):
    tx = [e for k, e in events if k == "transaction"]
    fraud_ids = {e["transaction_id"] for k, e in events if k == "label" and e["scenario"] == "impossible_travel"}
    last_seen = {}
    checked = 0
    for t in tx:
        prev = last_seen.get(t["card_id"])
        first_abroad = t["transaction_id"] in fraud_ids and prev is not None and prev["transaction_id"] not in fraud_ids
        if first_abroad and prev["lat"] is not None and t["lat"] is not None:
            hours = (t["event_time"] - prev["event_time"]) / HOURS
            assert haversine_km(prev["lat"], prev["lon"], t["lat"], t["lon"]) / max(hours, 1e-6) > 1000
            checked += 1
        last_seen[t["card_id"]] = t
    assert checked > 0


def test_market_ticks_are_deterministic_with_anomalies():
    cfg = MarketConfig(seed=3, rate=20, anomaly_rate=0.01)
    a = list(MarketGenerator(cfg).events(until_ms=cfg.start_ms + 600_000))
    assert a == list(MarketGenerator(cfg).events(until_ms=cfg.start_ms + 600_000))
    assert {e["scenario"] for _, e in a} >= set(MARKET_SCENARIOS)
    for kind, e in a:
        check(kind, e, LIMITS)
    assert {e["symbol"] for _, e in a} == set(cfg.symbols)


def test_merge_keeps_event_time_order(events):
    cfg = MarketConfig(seed=3, start_ms=CFG.start_ms)
    merged = list(merge(iter(events[:2000]), MarketGenerator(cfg).events(until_ms=CFG.start_ms + 60_000)))
    times = [e[TIME_FIELDS[k]] for k, e in merged]
    assert times == sorted(times)


class FlakyLog(EventLog):
    """An in-memory event log whose ``produce_batch`` calls fail as told (``failures``, one flag per call), after
    applying the first half of the failing batch, as a pipelined write cut by a broken connection does."""

    def __init__(self, failures: list[bool], answers: bool = False):
        self.failures = failures
        self.answers = answers  # what ping says while produce fails
        self.records: dict[str, list[bytes]] = defaultdict(list)

    def produce_batch(self, topic, records):
        values = [v for _, v in records]
        if self.failures and self.failures.pop(0):
            self.records[topic] += values[: len(values) // 2]
            raise EventLogError("connection reset by peer")
        self.records[topic] += values
        return [(0, i) for i in range(len(values))]

    def ping(self) -> bool:
        return self.answers

    def create_topic(self, topic, partitions):
        raise NotImplementedError

    def partitions(self, topic):
        raise NotImplementedError

    def end_offsets(self, topic):
        raise NotImplementedError

    def read(self, topic, partition, start, end, batch_size=5000):
        raise NotImplementedError

    def delete_topic(self, topic):
        raise NotImplementedError


def two_kinds(n: int) -> list[tuple[str, dict]]:
    """``n`` transactions, each followed by a market tick (only the fields the producer reads)."""
    t0 = CFG.start_ms
    return [
        pair
        for i in range(n)
        for pair in (
            ("transaction", {"transaction_id": f"t{i}", "card_id": "card-0001", "event_time": t0 + i}),
            ("market_tick", {"symbol": "ACME", "event_time": t0 + i}),
        )
    ]


def test_send_holds_a_failed_batch_and_retries_it_with_capped_backoff(settings):
    """A batch the log failed is retried (0.5, 1, 2, 4, 4 s) and delivered whole: nothing lost, the part applied
    before the failure repeated (at least once), a kind already delivered not sent again."""
    events = two_kinds(10)
    # call 1 (transactions) succeeds, call 2 (ticks) fails 5 times half applied, then succeeds
    log = FlakyLog([False, True, True, True, True, True])
    waits: list[float] = []
    out = io.StringIO()
    stats = send(iter(events), log, settings, speedup=0, retry_max_s=4.0, out=out, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    tx, ticks = (log.records[topic_for(settings, kind)] for kind in ("transaction", "market_tick"))
    assert tx == [encode(e) for k, e in events if k == "transaction"]  # delivered once
    sent_ticks = [encode(e) for k, e in events if k == "market_tick"]
    assert set(ticks) == set(sent_ticks) and Counter(ticks)[sent_ticks[0]] == 6  # 5 partial attempts + the whole
    assert stats.total == 20 and stats.retries == 5
    text = out.getvalue()
    assert "event log unreachable (connection reset by peer): holding 10 events, retry in 0.5 s" in text
    assert "5 retries over" in stats.line() and "reachable again after" in text


def test_send_raises_an_error_of_a_log_that_answers_instead_of_waiting_for_it(settings):
    """An error while the log answers its ping (a missing topic, say) is not an outage: one retry, then raised."""
    log = FlakyLog([True, True], answers=True)
    waits: list[float] = []
    with pytest.raises(EventLogError, match="connection reset by peer"):
        send(iter(two_kinds(3)), log, settings, speedup=0, out=io.StringIO(), sleep=waits.append)
    assert waits == [] and not log.failures


def test_send_gives_up_after_the_configured_outage(settings):
    """``give_up_after_s`` bounds the outage; ``traffic.outage_give_up_s`` is its default (null: forever)."""
    assert settings.traffic.outage_give_up_s is None
    log = FlakyLog([True] * 1000)
    waits: list[float] = []
    with pytest.raises(UndeliveredError, match="6 events not delivered, 0 sent before") as caught:
        send(iter(two_kinds(3)), log, settings, speedup=0, give_up_after_s=0.0, out=io.StringIO(), sleep=waits.append)
    assert (caught.value.undelivered, caught.value.sent, waits) == (6, 0, [])
    configured = settings.model_copy(update={"traffic": settings.traffic.model_copy(update={"outage_give_up_s": 0.01})})
    with pytest.raises(UndeliveredError):
        send(iter(two_kinds(3)), log, configured, speedup=0, out=io.StringIO(), sleep=lambda s: time.sleep(0.02))
