"""The offline (Spark) feature engine: hand-computed values on a short sequence, and parity with the online engine
on random histories fed to it in micro-batches."""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import functions as F
from support import same

from features import offline, online
from lakehouse.feature_definitions import MARKET_FEATURE_NAMES, TRANSACTION_FEATURE_NAMES

SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RETENTION = online.raw_retention_ms(600)
TX_SCHEMA = (
    "transaction_id string, card_id string, merchant_id string, terminal_id string, amount double, country string, "
    "device_id string, channel string, card_present boolean, lat double, lon double, terminal_lat double, "
    "terminal_lon double, merchant_lat double, merchant_lon double, mcc_risk_tier string, country_risk_tier string, "
    "event_time timestamp, event_date date, label string, label_reported_at timestamp"
)
TX_COLUMNS = [c.split(" ")[0] for c in TX_SCHEMA.split(", ")]
TICK_SCHEMA = "symbol string, event_time timestamp, event_date date, price double, volume double"
PARIS = (48.8566, 2.3522)


def ms(*args: int) -> int:
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


def at(ts_ms: int | None) -> datetime | None:
    return None if ts_ms is None else EPOCH + timedelta(milliseconds=ts_ms)


H = ms(2026, 3, 2, 12)  # Monday 12:00 UTC
T = H + 30 * MIN


def tx(
    tid: str,
    ts: int,
    card: str = "C1",
    amount: float = 10.0,
    label: str | None = None,
    reported_ms: int | None = None,
    **fields: object,
) -> dict:
    """An enriched silver transaction (every column of ``TX_SCHEMA``, plus ``ts`` for the online engine)."""
    row = {
        "transaction_id": tid,
        "card_id": card,
        "merchant_id": "M1",
        "terminal_id": None,
        "amount": amount,
        "country": "FR",
        "device_id": None,
        "channel": "POS",
        "card_present": True,
        "lat": PARIS[0],
        "lon": PARIS[1],
        "terminal_lat": None,
        "terminal_lon": None,
        "merchant_lat": None,
        "merchant_lon": None,
        "mcc_risk_tier": "low",
        "country_risk_tier": "standard",
        "label": label,
        "label_reported_at": at(reported_ms),
    }
    row.update(fields, event_time=at(ts), event_date=at(ts).date(), ts=ts, reported_ms=reported_ms)
    return row


def frame(spark, txs: list[dict]):
    return spark.createDataFrame([tuple(t[c] for c in TX_COLUMNS) for t in txs], TX_SCHEMA)


def check(spark, actual, expected_rows: list[tuple], ddl: str) -> None:
    expected = spark.createDataFrame(expected_rows, ddl)
    cols = [c.split(" ")[0] for c in ddl.split(", ")]
    assert_approx_df_equality(
        actual.select(*cols), expected, 1e-9, ignore_row_order=True, ignore_nullable=True, ignore_column_order=False
    )


# ---- hand-computed -------------------------------------------------------------------------------------------

SHORT = [
    tx("m1_out", T - 60_001, amount=1.0, terminal_id="T1", merchant_id="M1"),
    tx("m1_in", T - 60_000, amount=2.0, terminal_id="T1", merchant_id="M2"),
    tx("d24_in", H - DAY, amount=4.0, terminal_id="T2", merchant_id="M3", country="DE"),
    tx("d24_out", H - DAY - 1, amount=8.0, terminal_id="T2", merchant_id="M3", country="US"),
    tx("x", T, amount=16.0, terminal_id="T1", merchant_id="M1"),
    tx("y", T, amount=32.0, terminal_id=None, merchant_id="M1"),  # same millisecond as x, no terminal
    tx("old", T - 40 * DAY, "C2", 64.0, "fraud", T - HOUR, terminal_id="T1", merchant_id="M1"),
    tx("late", T - 2 * HOUR, "C2", 128.0, "fraud", T + MIN, terminal_id="T1", merchant_id="M1"),
    tx("genuine", T - 3 * HOUR, "C2", 256.0, "genuine", T - 2 * HOUR, terminal_id="T1", merchant_id="M1"),
    # C3, for the IQR score (at M9, no terminal: in no other card's or place's counts)
    tx("iqr_out", H - 30 * DAY - 1, "C3", 5000.0, merchant_id="M9"),  # 1 ms before t's 30d window
    tx("iqr_in", H - 30 * DAY, "C3", 0.0, merchant_id="M9"),  # its first millisecond
    tx("iqr_a", T - 3 * DAY, "C3", 10.0, merchant_id="M9"),
    tx("iqr_b", T - 2 * DAY, "C3", 40.0, merchant_id="M9"),
    tx("iqr_c", T - 20 * MIN, "C3", 30.0, merchant_id="M9"),
    tx("iqr_d", T - 10 * MIN, "C3", 20.0, merchant_id="M9"),
    tx("iqr_t", T, "C3", 55.0, merchant_id="M9"),
    tx("iqr_same", T, "C3", 1000.0, merchant_id="M9"),
]


@pytest.fixture(scope="module")
def short_features(spark):
    return offline.transaction_features(frame(spark, SHORT)).cache()


def test_output_columns(short_features):
    assert short_features.columns == [*offline.KEYS, *TRANSACTION_FEATURE_NAMES]
    assert short_features.count() == len(SHORT)


def test_card_windows_by_hand(spark, short_features):
    check(
        spark,
        short_features.where(F.col("transaction_id").isin("x", "y", "m1_in", "late", "old", "iqr_d")),
        [
            # x and y (same ms) do not see each other. 1m: m1_in (2); 5m, 15m, 1h: + m1_out (1 + 2);
            # 24h tiled, from 12:00 the day before: + d24_in (3 + 4); 7d: + d24_out (7 + 8);
            # merchants 1h: M1, M2; countries 24h: FR, DE
            ("x", 1, 2.0, 2, 3.0, 2, 3.0, 2, 3, 7.0, 4, 15.0, 60.0, 2, 2),
            ("y", 1, 2.0, 2, 3.0, 2, 3.0, 2, 3, 7.0, 4, 15.0, 60.0, 2, 2),
            # m1_in sees m1_out 1 ms earlier; 24h: + d24_in (1 + 4); 7d: + d24_out (5 + 8)
            ("m1_in", 1, 1.0, 1, 1.0, 1, 1.0, 1, 2, 5.0, 3, 13.0, 0.001, 1, 2),
            # C2's late: genuine exactly 1 h earlier (in the 1h window); old is 40 days back, in no window
            ("late", 0, 0.0, 0, 0.0, 0, 0.0, 1, 1, 256.0, 1, 256.0, 3600.0, 1, 1),
            ("old", 0, 0.0, 0, 0.0, 0, 0.0, 0, 0, 0.0, 0, 0.0, None, 0, 0),
            # C3's iqr_d: iqr_c 10 min earlier (in 15m, not in 5m); 7d: + iqr_a, iqr_b (30 + 10 + 40)
            ("iqr_d", 0, 0.0, 0, 0.0, 1, 30.0, 1, 1, 30.0, 3, 80.0, 600.0, 1, 1),
        ],
        "transaction_id string, card_tx_count_1m long, card_amount_sum_1m double, card_tx_count_5m long, "
        "card_amount_sum_5m double, card_tx_count_15m long, card_amount_sum_15m double, card_tx_count_1h long, "
        "card_tx_count_24h long, card_amount_sum_24h double, "
        "card_tx_count_7d long, card_amount_sum_7d double, card_seconds_since_last double, "
        "card_distinct_merchants_1h long, card_distinct_countries_24h long",
    )


def test_iqr_score_by_hand(spark, short_features):
    check(
        spark,
        short_features.where(F.col("transaction_id").startswith("iqr_")),
        [
            ("iqr_out", None),
            ("iqr_in", None),  # iqr_out only
            ("iqr_a", None),  # iqr_in (iqr_out is 30 days and more before iqr_a's hour)
            ("iqr_b", None),  # iqr_in, iqr_a
            ("iqr_c", None),  # iqr_in, iqr_a, iqr_b: under 4
            # iqr_d: 0, 10, 30, 40 -> Q1 7.5 (pos 0.75), median 20 (pos 1.5), Q3 32.5 (pos 2.25): (20 - 20) / 25
            ("iqr_d", 0.0),
            # iqr_t and iqr_same (same ms): 0, 10, 20, 30, 40 -> Q1 10, median 20, Q3 30: (amount - 20) / 20
            ("iqr_t", 1.75),
            ("iqr_same", 49.0),
        ],
        "transaction_id string, card_amount_iqr_score_30d double",
    )


def test_place_features_by_hand(spark, short_features):
    check(
        spark,
        short_features.where(F.col("transaction_id").isin("x", "y", "late", "old", "d24_in")),
        [
            # T1 before x: m1_out, m1_in, late, genuine (old is 40 days back); fraud known before x: old's label
            # (reported an hour before; late's comes a minute after, genuine is no fraud): 1 / 4.
            # M1 before x: m1_out, late, genuine (m1_in was at M2, y is in x's millisecond): 1 / 3
            ("x", 4, 1, 0.25, 4, 1, 3, 1, 1 / 3),
            ("y", None, None, None, None, None, 3, 1, 1 / 3),  # no terminal
            ("late", 1, 0, 0.0, 1, 0, 1, 0, 0.0),  # genuine only; no label reported yet
            ("old", 0, 0, None, 0, 0, 0, 0, None),
            ("d24_in", 1, 0, 0.0, 1, 0, 1, 0, 0.0),  # T2 and M3: d24_out, 1 ms earlier
        ],
        "transaction_id string, terminal_tx_count_1d long, terminal_fraud_count_1d long, "
        "terminal_fraud_rate_1d double, terminal_tx_count_30d long, terminal_fraud_count_30d long, "
        "merchant_tx_count_1d long, merchant_fraud_count_1d long, merchant_fraud_rate_1d double",
    )


def test_fraud_label_events_and_explicit_labels(spark):
    df = frame(spark, SHORT)
    labels = offline.fraud_label_events(df)
    assert sorted(tuple(r) for r in labels.collect()) == [("T1", "M1", T - HOUR), ("T1", "M1", T + MIN)]
    no_labels = offline.transaction_features(df, labels.limit(0)).where(F.col("transaction_id") == "x")
    row = no_labels.select("terminal_fraud_count_30d", "merchant_fraud_rate_1d").first()
    assert (row.terminal_fraud_count_30d, row.merchant_fraud_rate_1d) == (0, 0.0)


# ---- parity with the online engine ---------------------------------------------------------------------------

CITIES = [PARIS, (40.7128, -74.0060), (35.6762, 139.6503), (-33.8688, 151.2093), (51.5074, -0.1278)]
# gaps to the previous transaction of the burst: window edges, the same ms, and a few minutes *before* it
GAPS = [0, 1, 59_999, 60_000, 60_001, 300_000, 300_001, HOUR - 1, HOUR, HOUR + 1, -1, -5 * MIN]


def random_transactions(seed: int, sessions: int = 70) -> list[dict]:
    """~300 transactions of 6 cards over 40 days, in bursts with gaps on the window edges (see ``GAPS``),
    at 4 terminals (or none) and 5 merchants; a fifth labelled fraud, reported up to 10 days later."""
    rng = random.Random(seed)
    start = ms(2026, 1, 20)
    places = {f"T{i}": rng.choice(CITIES) for i in range(4)} | {f"M{i}": rng.choice(CITIES) for i in range(5)}
    txs = []
    for _ in range(sessions):
        card = f"C{rng.randrange(6)}"
        ts = start + rng.randrange(40 * DAY)
        for _ in range(rng.randint(1, 8)):
            ts += rng.choice([*GAPS, rng.randrange(HOUR), rng.randrange(DAY)])
            terminal = rng.choice(["T0", "T1", "T2", "T3", None])
            merchant = f"M{rng.randrange(5)}"
            own = rng.random() < 0.6
            city = rng.choice(CITIES)
            label, reported = None, None
            p = rng.random()
            if p < 0.2:
                label, reported = "fraud", ts + rng.choice([0, 1, rng.randrange(HOUR), rng.randrange(10 * DAY)])
            elif p < 0.22:
                label = "fraud"  # not reported yet: not an event
            elif p < 0.3:
                label, reported = "genuine", ts + rng.randrange(10 * DAY)
            txs.append(
                tx(
                    f"tx{len(txs):03d}",
                    ts,
                    card,
                    round(rng.uniform(-20, 900), 2),
                    label,
                    reported,
                    terminal_id=terminal,
                    merchant_id=merchant,
                    country=rng.choice(["FR", "FR", "FR", "DE", "US", "NG"]),
                    device_id=rng.choice([f"D{card}", f"D{card}", "Dshared", None]),
                    channel=rng.choice(["POS", "ATM", "ONLINE", "ECOM"]),
                    card_present=rng.random() < 0.6,
                    lat=city[0] if own else None,
                    lon=city[1] if own else None,
                    terminal_lat=places[terminal][0] if terminal else None,
                    terminal_lon=places[terminal][1] if terminal else None,
                    merchant_lat=places[merchant][0] if rng.random() < 0.8 else None,
                    merchant_lon=places[merchant][1],
                    mcc_risk_tier=rng.choice(["low", "medium", "high", "unknown", None]),
                    country_risk_tier=rng.choice(["standard", "high", None]),
                )
            )
    return txs


def online_in_batches(
    txs: list[dict], rng: random.Random, batches: int = 25, lateness_ms: int = 0, trigger_ms: int | None = None
) -> tuple[dict[str, dict], set[str]]:
    """The online features of ``txs`` fed in micro-batches by arrival time, each batch shuffled: ``batches``
    batches between random bounds, or one per ``trigger_ms`` of arrival time. A transaction arrives at its event
    time, a fraud label at its reported time, each up to ``lateness_ms`` late (at most ``RETENTION``'s lateness).

    Returns the rows by transaction id and the ids of the transactions whose earlier events all arrived no later
    than their own batch: only those can have their point-in-time values (the others were computed before some
    of their history arrived)."""
    labels = [
        {"transaction_id": t["transaction_id"], "terminal_id": t["terminal_id"], "merchant_id": t["merchant_id"]}
        | {"reported_ms": t["reported_ms"]}
        for t in txs
        if t["label"] == "fraud" and t["reported_ms"] is not None
    ]
    arrival = {id(t): t["ts"] + rng.randrange(lateness_ms + 1) for t in txs}
    arrival |= {id(x): x["reported_ms"] + rng.randrange(lateness_ms + 1) for x in labels}
    lo, hi = min(arrival.values()), max(arrival.values())
    bounds = sorted(rng.randrange(lo, hi) for _ in range(batches - 1))

    def batch_of(event: dict) -> int:
        return arrival[id(event)] // trigger_ms if trigger_ms else bisect.bisect_right(bounds, arrival[id(event)])

    grouped: dict[int, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
    for t in txs:
        grouped[batch_of(t)][0].append(t)
    for x in labels:
        grouped[batch_of(x)][1].append(x)
    store: dict = {}

    def state(entity: str, key: str) -> dict:
        return store.setdefault((entity, key), online.NEW_STATE[entity]())

    rows = {}
    for key in sorted(grouped):
        batch, batch_labels = grouped[key]
        rng.shuffle(batch)
        rng.shuffle(batch_labels)
        out, _ = online.transactions_batch(state, batch, batch_labels, RETENTION)
        rows.update({t["transaction_id"]: row for t, row in zip(batch, out, strict=True)})
    complete, seen = set(), -1  # seen: the latest batch of the events before the current millisecond
    events = sorted([(t["ts"], t) for t in txs] + [(x["reported_ms"], x) for x in labels], key=lambda e: e[0])
    for _, group in itertools.groupby(events, key=lambda e: e[0]):
        same_ms = [e for _, e in group]
        complete |= {e["transaction_id"] for e in same_ms if "ts" in e and batch_of(e) >= seen}
        seen = max(seen, *(batch_of(e) for e in same_ms))
    return rows, complete


def mismatches(offline_rows: dict, online_rows: dict, names: list[str]) -> list[tuple]:
    assert offline_rows.keys() == online_rows.keys()
    return [
        (key, name, offline_rows[key][name], online_rows[key][name])
        for key in sorted(offline_rows)
        for name in names
        if not same(offline_rows[key][name], online_rows[key][name])
    ]


def test_short_sequence_matches_online(spark, short_features):
    off = {r["transaction_id"]: r.asDict() for r in short_features.collect()}
    on, _ = online_in_batches(SHORT, random.Random(0), batches=1)
    assert mismatches(off, on, TRANSACTION_FEATURE_NAMES) == []


@pytest.fixture(scope="module")
def history(spark) -> tuple[list[dict], dict[str, dict]]:
    """Random transactions and their offline features by transaction id."""
    txs = random_transactions(seed=20260302)
    df = offline.transaction_features(frame(spark, txs))
    assert df.columns == [*offline.KEYS, *TRANSACTION_FEATURE_NAMES]
    return txs, {r["transaction_id"]: r.asDict() for r in df.collect()}


@pytest.mark.parametrize(
    "feed",
    [{}, {"trigger_ms": 5 * MIN, "lateness_ms": 10 * MIN}],
    ids=["25-batches-in-order", "5-min-triggers-10-min-late"],
)
def test_transaction_features_match_online_in_micro_batches(history, feed: dict):
    txs, off = history
    assert 250 <= len(txs) <= 350
    on, complete = online_in_batches(txs, random.Random(1), **feed)
    if not feed:
        assert complete == set(on)
    assert len(complete) >= 0.8 * len(txs)
    bad = mismatches({k: off[k] for k in complete}, {k: on[k] for k in complete}, TRANSACTION_FEATURE_NAMES)
    assert bad == [], f"{len(bad)} mismatches (tx, feature, offline, online), first: {bad[:20]}"
    # the data exercised the features (not all null or zero)
    exercised = (
        "card_tx_count_1m",
        "card_tx_count_15m",
        "card_prev_speed_kmh",
        "terminal_fraud_count_1d",
        "card_amount_zscore_30d",
        "card_amount_iqr_score_30d",
    )
    for name in exercised:
        assert any(row[name] for row in off.values()), name


def random_ticks(seed: int, n: int = 200) -> list[dict]:
    """Two symbols' random walks (B flat for a while: zero returns, no z-score), interleaved in time."""
    rng = random.Random(seed)
    price = {"AAA": 100.0, "BBB": 20.0}
    ts, out = ms(2026, 3, 2, 9), []
    for i in range(n):
        symbol = rng.choice(["AAA", "BBB"])
        ts += rng.randint(1, 5_000)
        flat = symbol == "BBB" and 30 <= i < 170
        price[symbol] = price[symbol] if flat else round(price[symbol] * math.exp(rng.gauss(0, 0.01)), 4)
        out.append({"symbol": symbol, "ts": ts, "price": price[symbol], "volume": float(rng.randint(1, 100))})
    return out


def test_market_features_match_online_in_micro_batches(spark):
    ticks = random_ticks(seed=7)
    df = spark.createDataFrame(
        [(t["symbol"], at(t["ts"]), at(t["ts"]).date(), t["price"], t["volume"]) for t in ticks], TICK_SCHEMA
    )
    features = offline.market_features(df)
    assert features.columns == ["symbol", "event_time", "event_date", "price", *MARKET_FEATURE_NAMES]
    off = {
        (r["symbol"], r["_ts"]): r.asDict() for r in features.withColumn("_ts", F.unix_millis("event_time")).collect()
    }

    rng, store, on = random.Random(3), {}, {}

    def state(entity: str, key: str) -> dict:
        return store.setdefault((entity, key), online.NEW_STATE[entity]())

    cuts = [0, *sorted(rng.sample(range(1, len(ticks)), 9)), len(ticks)]
    for a, b in itertools.pairwise(cuts):
        batch = rng.sample(ticks[a:b], b - a)  # time-ordered batches, shuffled inside
        rows, _ = online.ticks_batch(state, batch)
        on.update({(t["symbol"], t["ts"]): row for t, row in zip(batch, rows, strict=True)})

    bad = mismatches(off, on, MARKET_FEATURE_NAMES)
    assert bad == [], f"{len(bad)} mismatches (tick, feature, offline, online), first: {bad[:20]}"
    for name in MARKET_FEATURE_NAMES:
        assert any(row[name] is not None for row in off.values()), name
