"""Synthetic traffic: determinism, contracts, scenarios with ground truth, delayed labels, market ticks."""

from collections import Counter, defaultdict

import pytest

from lakehouse.contracts import TIME_FIELDS, Limits, check
from lakehouse.traffic.__main__ import merge
from lakehouse.traffic.generator import SCENARIOS, GeneratorConfig, TrafficGenerator
from lakehouse.traffic.market import MARKET_SCENARIOS, MarketConfig, MarketGenerator
from lakehouse.traffic.population import haversine_km

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
