"""The run's traffic: one generator (every fraud scenario, delayed labels, market ticks) cut at a time into the
history the models train on and the traffic they score, plus planted bad records and a producer's repeats.

One generator for both parts keeps one population of cards, and labels of history transactions arrive with the
scored traffic, so the label MERGEs of the second part change rows an audit can see before and after.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from lakehouse.config import Settings
from lakehouse.contracts import KEY_FIELDS, TIME_FIELDS, encode
from lakehouse.eventlog.producer import topic_for
from tools.traffic.__main__ import merge
from tools.traffic.generator import SCENARIOS, GeneratorConfig, TrafficGenerator, cycle
from tools.traffic.market import MarketConfig, MarketGenerator

DAY_MS = 86_400_000
MARKET_RATE = 0.002  # ticks per second per symbol: a few thousand over two days


@dataclass
class Part:
    """One part of the traffic: valid ``(kind, event)`` in time order, and raw records (topic, key, value)
    sent beside them: the planted bad ones (keys ``bad-*``) and the repeats."""

    events: list[tuple[str, dict]] = field(default_factory=list)
    raw: list[tuple[str, str, bytes]] = field(default_factory=list)

    def chunks(self, n: int) -> list[Part]:
        """``n`` consecutive parts; the raw records spread over them."""
        size = max(1, math.ceil(len(self.events) / n))
        out = [Part(self.events[i * size : (i + 1) * size]) for i in range(n)]
        for i, record in enumerate(self.raw):
            out[i % n].raw.append(record)
        return out

    def ids(self) -> list[str]:
        """The ids of its transactions."""
        return [e["transaction_id"] for k, e in self.events if k == "transaction"]


@dataclass
class Traffic:
    history: Part
    scored: Part
    split_ms: int
    expected_reasons: dict[str, str]  # bad record key -> the dead-letter reason it must get

    def events(self, kind: str) -> list[dict]:
        return [e for part in (self.history, self.scored) for k, e in part.events if k == kind]


def rate_for(transactions: int, start_ms: int, days: float) -> float:
    """The generator's ``rate`` that yields about ``transactions`` over ``days`` (its daily and weekly cycles)."""
    step = 60_000
    span = int(days * DAY_MS)
    seconds = sum(cycle(start_ms + t) for t in range(0, span, step)) * step / 1000
    return transactions / seconds


def generate(
    settings: Settings,
    *,
    transactions: int,
    start_ms: int,
    history_days: float,
    scored_days: float,
    fraud_rate: float,
    customers: int,
    seed: int,
    repeats: int,
) -> Traffic:
    """The traffic of a run: ``transactions`` in all over ``history_days + scored_days``."""
    days = history_days + scored_days
    until = start_ms + int(days * DAY_MS)
    split = start_ms + int(history_days * DAY_MS)
    config = GeneratorConfig(
        seed=seed,
        start_ms=start_ms,
        rate=rate_for(transactions, start_ms, days),
        fraud_rate=fraud_rate,
        customers=customers,
        label_delay_days=0.1,
    )
    market = MarketConfig(
        seed=seed, start_ms=start_ms, rate=MARKET_RATE, symbols=tuple(settings.traffic.market_symbols)
    )
    history, scored = Part(), Part()
    # every calendar day of the history (the training and test days) and the first 60 % of the scored traffic (so
    # most of its labels arrive within the run)
    midnights = list(range(start_ms - start_ms % DAY_MS + DAY_MS, split, DAY_MS))
    windows = list(zip([start_ms, *midnights], [*midnights, split], strict=True))
    planted = plant_every_scenario([*windows, (split, split + (until - split) * 6 // 10)])
    transactions = TrafficGenerator(config).events(until, planted)
    for kind, event in merge(transactions, MarketGenerator(market).events(until)):
        (history if event[TIME_FIELDS[kind]] < split else scored).events.append((kind, event))
    rng = random.Random(seed)
    expected: dict[str, str] = {}
    for part, tag in ((history, "h"), (scored, "s")):
        for topic, key, value, reason in bad_records(settings, part, tag):
            part.raw.append((topic, key, value))
            expected[key] = reason
        valid = [(k, e) for k, e in part.events if k in ("transaction", "label")]
        for kind, event in rng.sample(valid, min(repeats, len(valid))):
            part.raw.append((topic_for(settings, kind), event[KEY_FIELDS[kind]], encode(event)))
    return Traffic(history, scored, split, expected)


def plant_every_scenario(windows: list[tuple[int, int]]) -> list[tuple[int, str]]:
    """One episode of every fraud scenario in each ``(start_ms, end_ms)`` window, evenly spread: each training
    day, test day and the scored traffic hold them all, however short the run."""
    return [(a + (b - a) * (2 * i + 1) // (2 * len(SCENARIOS)), s) for a, b in windows for i, s in enumerate(SCENARIOS)]


def bad_records(settings: Settings, part: Part, tag: str) -> list[tuple[str, str, bytes, str]]:
    """Records that break their contract, each with the dead-letter reason bronze must give it: malformed,
    truncated, empty, oversized, non-UTF-8, not an object, a missing field, wrong types, NaN and infinite
    amounts, event times far in the future and before the minimum. (An unknown extra field is valid: see
    :func:`with_unknown_field`.)"""
    tx = next(e for k, e in part.events if k == "transaction")
    label = next((e for k, e in part.events if k == "label"), None)
    tick = next((e for k, e in part.events if k == "market_tick"), None)

    def raw(event: dict) -> bytes:
        return json.dumps(event).encode()  # allows NaN and Infinity: the point of some of these

    def changed(**changes) -> dict:
        return {**tx, **changes}

    missing = {k: v for k, v in tx.items() if k != "card_id"}
    cases = [
        ("malformed", b"{broken", "malformed_json"),
        ("truncated", encode(tx)[:40], "malformed_json"),
        ("empty", b"", "empty_payload"),
        ("oversized", raw(changed(note="x" * (settings.eventlog.max_event_bytes + 1))), "oversized"),
        ("not-utf8", b"\xff\xfe\x00{", "malformed_json"),
        ("array", b"[1, 2, 3]", "not_an_object"),
        ("missing-field", raw(missing), "schema_required"),
        ("amount-string", raw(changed(amount=str(tx["amount"]))), "schema_type"),
        ("time-string", raw(changed(event_time="yesterday")), "schema_type"),
        ("amount-nan", raw(changed(amount=float("nan"))), "non_finite_number"),
        ("amount-inf", raw(changed(amount=float("inf"))), "non_finite_number"),
        ("future", raw(changed(event_time=tx["event_time"] + 3650 * DAY_MS)), "time_in_future"),
        ("past", raw(changed(event_time=631_152_000_000)), "time_too_old"),  # 1990
    ]
    out = [(topic_for(settings, "transaction"), f"bad-{tag}-{name}", value, reason) for name, value, reason in cases]
    if label is not None:
        out.append((topic_for(settings, "label"), f"bad-{tag}-label", raw({**label, "label": "maybe"}), "schema_enum"))
    if tick is not None:
        out.append((topic_for(settings, "market_tick"), f"bad-{tag}-tick", b'{"symbol": 1}', "schema_required"))
    return out


def with_unknown_field(part: Part, every: int = 97) -> None:
    """Give every ``every``-th transaction a field no contract version declares: bronze and silver must keep
    the transaction (forward compatibility), not dead-letter it."""
    n = 0
    for kind, event in part.events:
        if kind == "transaction":
            n += 1
            if n % every == 0:
                event["promo_code"] = "E2E"


def scenarios_present(traffic: Traffic) -> dict[str, int]:
    """Fraud transactions per scenario in the whole traffic (by their labels)."""
    fraud = {e["transaction_id"]: e["scenario"] for e in traffic.events("label") if e["label"] == "fraud"}
    return {s: sum(v == s for v in fraud.values()) for s in SCENARIOS}
