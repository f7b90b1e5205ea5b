"""The online feature engine and the context features on small sequences worked out by hand (no Spark)."""

from __future__ import annotations

import copy
import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from features import online
from features.context import context_values, location
from lakehouse.feature_definitions import (
    CARD_WINDOWS,
    MARKET_FEATURE_NAMES,
    TRANSACTION_FEATURE_NAMES,
    TRANSACTION_INPUTS,
)

SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RETENTION = online.raw_retention_ms(600)  # 1 h exact history + 10 min lateness + 5 min = 75 min
PARIS, NEW_YORK = (48.8566, 2.3522), (40.7128, -74.0060)


def ms(*args: int) -> int:
    """UTC milliseconds of a calendar time."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


H = ms(2026, 3, 2, 12)  # a Monday, 12:00 UTC
T = H + 30 * MIN  # 12:30, the time of most transactions under test


def tx(tid: str, ts: int, card: str = "C1", amount: float = 10.0, **fields: object) -> dict:
    """An enriched transaction (``TRANSACTION_INPUTS`` plus ``ts``): by default a card-present purchase in Paris."""
    row = dict.fromkeys(TRANSACTION_INPUTS)
    row.update(
        transaction_id=tid,
        event_time=EPOCH + timedelta(milliseconds=ts),
        card_id=card,
        merchant_id="M1",
        amount=amount,
        country="FR",
        channel="POS",
        card_present=True,
        lat=PARIS[0],
        lon=PARIS[1],
        mcc_risk_tier="low",
        country_risk_tier="standard",
    )
    row.update(fields, ts=ts)
    return row


def fraud(tid: str, reported_ms: int, terminal: str | None = None, merchant: str | None = "M1") -> dict:
    return {"transaction_id": tid, "terminal_id": terminal, "merchant_id": merchant, "reported_ms": reported_ms}


class Store(dict):
    """The states of one run, ``(entity, key) -> state``; called, it is the engine's ``StateGetter``."""

    def __call__(self, entity: str, key: str) -> dict:
        if (entity, key) not in self:
            self[(entity, key)] = online.NEW_STATE[entity]()
        return self[(entity, key)]


def run(*batches: tuple[list[dict], list[dict]], store: Store | None = None, retention: int = RETENTION) -> dict:
    """Apply micro-batches ``(txs, fraud_labels)`` in order; the feature rows by transaction id."""
    store = Store() if store is None else store
    rows = {}
    for txs, labels in batches:
        out, _ = online.transactions_batch(store, txs, labels, retention)
        rows.update({t["transaction_id"]: row for t, row in zip(txs, out, strict=True)})
    return rows


def features(txs: list[dict], labels: list[dict] | None = None) -> dict:
    """The feature rows of one micro-batch applied to empty states."""
    return run((txs, labels or []))


def assert_rows_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, a in actual.items():
        e = expected[name]
        if isinstance(e, float) and isinstance(a, float):
            assert math.isclose(a, e, rel_tol=1e-12, abs_tol=1e-12), (name, a, e)
        else:
            assert a == e and type(a) is type(e), (name, a, e)


# ---- card features -----------------------------------------------------------------------------------------


def test_first_transaction_of_a_card():
    row = features([tx("t1", T, device_id="D1", terminal_id=None, merchant_id="M1")])["t1"]
    assert sorted(row) == sorted(TRANSACTION_FEATURE_NAMES)
    for w in CARD_WINDOWS:
        assert row[f"card_tx_count_{w.name}"] == 0
        assert row[f"card_amount_sum_{w.name}"] == 0.0
        assert row[f"card_amount_mean_{w.name}"] is None
    assert row["card_distinct_merchants_1h"] == 0 and row["card_distinct_countries_24h"] == 0
    for name in (
        "card_seconds_since_last",
        "card_amount_zscore_30d",
        "card_amount_iqr_score_30d",
        "card_prev_distance_km",
        "card_prev_speed_kmh",
    ):
        assert row[name] is None, name
    assert row["card_new_device"] is True and row["card_new_country"] is True
    assert all(v is None for k, v in row.items() if k.startswith("terminal_"))  # no terminal: all null
    for w in ("1d", "7d", "30d"):  # a merchant without history: zero counts, no rate
        assert row[f"merchant_tx_count_{w}"] == 0 and row[f"merchant_fraud_count_{w}"] == 0
        assert row[f"merchant_fraud_rate_{w}"] is None

    assert features([tx("t1", T, device_id=None)])["t1"]["card_new_device"] is None


def test_exact_window_edges_and_same_millisecond():
    rows = features(
        [
            tx("m1_in", T - 60_000, amount=1.0, merchant_id="M1", terminal_id="T1"),
            tx("m1_out", T - 60_001, amount=2.0, merchant_id="M2", terminal_id="T1"),
            tx("m15_in", T - 15 * MIN, amount=64.0, merchant_id="M1"),
            tx("m15_out", T - 15 * MIN - 1, amount=128.0, merchant_id="M1"),
            tx("h1_in", T - HOUR, amount=4.0, merchant_id="M3", terminal_id="T1"),
            tx("h1_out", T - HOUR - 1, amount=8.0, merchant_id="M4", terminal_id="T1"),
            tx("same_ms", T, amount=16.0, merchant_id="M5", terminal_id="T1"),
            tx("t", T, amount=32.0, merchant_id="M5", terminal_id="T1"),
        ]
    )
    for tid in ("t", "same_ms"):  # neither sees the other (same millisecond)
        row = rows[tid]
        assert (row["card_tx_count_1m"], row["card_amount_sum_1m"]) == (1, 1.0)  # m1_in only
        assert (row["card_tx_count_5m"], row["card_amount_sum_5m"]) == (2, 3.0)  # + m1_out: 1 + 2
        assert (row["card_tx_count_15m"], row["card_amount_sum_15m"]) == (3, 67.0)  # + m15_in: 1 + 2 + 64
        assert row["card_amount_mean_15m"] == pytest.approx(67.0 / 3)
        assert (row["card_tx_count_1h"], row["card_amount_sum_1h"]) == (5, 199.0)  # + m15_out, h1_in: 67 + 128 + 4
        assert row["card_amount_mean_1h"] == pytest.approx(199.0 / 5)
        assert row["card_distinct_merchants_1h"] == 3  # M1, M2, M3 (M4 is 1 h 1 ms back, M5 is now)
        assert (row["card_tx_count_24h"], row["card_amount_sum_24h"]) == (6, 207.0)  # 11:29:59.999 is in hour 11
        assert row["card_seconds_since_last"] == 60.0  # m1_in
        assert row["card_new_country"] is False
        assert row["terminal_tx_count_1d"] == 4 and row["merchant_tx_count_1d"] == 0  # M5 has no earlier tx


@pytest.mark.parametrize("minute", [20, 40])
def test_tiled_window_edges(minute: int):
    """24h = the 24 whole hours before t's hour (from 12:00 the day before) plus t's hour so far."""
    t = H + minute * MIN
    history = [
        tx("d24_in", H - DAY, amount=1.0, country="DE"),  # 12:00 the day before: first ms of the 24h window
        tx("d24_out", H - DAY - 1, amount=2.0, country="US"),
        tx("d7_in", H - 7 * DAY, amount=4.0),
        tx("d7_out", H - 7 * DAY - 1, amount=8.0),
        tx("d30_in", H - 30 * DAY, amount=16.0),
        tx("d30_out", H - 30 * DAY - 1, amount=32.0),
        tx("edge", t - DAY - 30 * MIN, amount=64.0, country="JP"),  # 11:50 (out) or 12:10 (in) the day before
    ]
    row = features([*history, tx("t", t, country="GB")])["t"]
    if minute == 20:
        assert (row["card_tx_count_24h"], row["card_amount_sum_24h"]) == (1, 1.0)  # d24_in
        assert row["card_distinct_countries_24h"] == 1  # DE
    else:
        assert (row["card_tx_count_24h"], row["card_amount_sum_24h"]) == (2, 65.0)  # d24_in + edge: 1 + 64
        assert row["card_distinct_countries_24h"] == 2  # DE, JP
    assert (row["card_tx_count_7d"], row["card_amount_sum_7d"]) == (4, 71.0)  # 1 + 2 + 4 + 64
    assert row["card_amount_mean_7d"] == 17.75  # 71 / 4
    assert (row["card_tx_count_30d"], row["card_amount_sum_30d"]) == (6, 95.0)  # 71 + 8 + 16
    assert row["card_new_country"] is True  # GB never used before


def test_zscore_by_hand():
    earlier = [tx("a", T - 3 * DAY, amount=10.0), tx("b", T - 2 * DAY, amount=20.0), tx("c", T - DAY, amount=30.0)]
    row = features([*earlier, tx("t", T, amount=50.0)])["t"]
    # mean 20; sample variance ((10-20)^2 + 0 + (30-20)^2) / 2 = 100, std 10; (50 - 20) / 10 = 3
    assert row["card_amount_zscore_30d"] == pytest.approx(3.0, rel=1e-12)
    assert features([earlier[0], tx("t", T, amount=50.0)])["t"]["card_amount_zscore_30d"] is None  # one earlier
    same = [tx("a", T - DAY, amount=20.0), tx("b", T - HOUR, amount=20.0), tx("t", T, amount=50.0)]
    assert features(same)["t"]["card_amount_zscore_30d"] is None  # std 0


@pytest.mark.parametrize("seed", range(6))
def test_iqr_score_helper_matches_numpy(seed: int):
    rng = random.Random(seed)
    for n in range(4, 40):
        values = sorted(rng.choice([float(rng.randint(1, 9)), round(rng.uniform(-50, 900), 2)]) for _ in range(n))
        amount = round(rng.uniform(-50, 2000), 2)
        q1, median, q3 = np.percentile(values, [25, 50, 75])  # linear interpolation, pos = q (n - 1)
        for q, expected in ((0.25, q1), (0.5, median), (0.75, q3)):
            assert online.quantile(values, q) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        score = online.iqr_score(amount, values)
        if q3 == q1:
            assert score is None
        else:
            assert score == pytest.approx((amount - median) / (q3 - q1), rel=1e-12, abs=1e-12)
        # the same values split into a long sorted list and a short one, read without merging
        short = sorted(rng.sample(values, rng.randint(0, min(5, n))))
        long = list(values)
        for x in short:
            long.remove(x)
        union = online.SortedUnion(long, short)
        assert [union[k] for k in range(len(union))] == values
        assert online.iqr_score(amount, union) == score
    assert online.iqr_score(5.0, [1.0, 2.0, 3.0]) is None  # under 4 values
    assert online.iqr_score(5.0, [1.0, 2.0, 2.0, 2.0, 9.0]) is None  # Q1 = Q3 = 2: IQR 0
    assert online.iqr_score(5.0, [1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.5 / 1.5)  # (5 - 2.5) / (3.25 - 1.75)


def test_iqr_score_by_hand():
    """The same earlier amounts as the z-score: 30 days tiled (from floor_hour(t) - 30 d), strictly earlier."""
    earlier = [
        tx("out", H - 30 * DAY - 1, amount=5000.0),  # 1 ms before the 30d window
        tx("in", H - 30 * DAY, amount=0.0),  # its first millisecond
        tx("a", T - 3 * DAY, amount=10.0),
        tx("b", T - 2 * DAY, amount=40.0),
        tx("c", T - 20 * MIN, amount=30.0),
        tx("d", T - 10 * MIN, amount=20.0),
        tx("same_ms", T, amount=1000.0),
    ]
    rows = features([*earlier, tx("t", T, amount=55.0)])
    # t: 0, 10, 20, 30, 40 -> Q1 10 (pos 1), median 20 (pos 2), Q3 30 (pos 3): (55 - 20) / 20
    assert rows["t"]["card_amount_iqr_score_30d"] == pytest.approx(1.75, rel=1e-12)
    assert rows["same_ms"]["card_amount_iqr_score_30d"] == pytest.approx(49.0, rel=1e-12)  # (1000 - 20) / 20
    # d: 0, 10, 30, 40 -> Q1 7.5 (pos 0.75), median 20 (pos 1.5), Q3 32.5 (pos 2.25): (20 - 20) / 25
    assert rows["d"]["card_amount_iqr_score_30d"] == 0.0
    assert rows["c"]["card_amount_iqr_score_30d"] is None  # 0, 10, 40: under 4
    flat = [tx(f"f{i}", T - (i + 1) * HOUR, amount=a) for i, a in enumerate([20.0, 20.0, 20.0, 20.0, 90.0])]
    assert features([*flat, tx("t", T, amount=500.0)])["t"]["card_amount_iqr_score_30d"] is None  # IQR 0


def test_iqr_score_from_tiles_and_raw_events():
    """Amounts folded into hourly tiles (sorted once per hour) and raw ones of the last hour, interleaved."""
    store = Store()
    rows = run(
        ([tx("a", T - 3 * DAY, amount=10.0), tx("b", T - 2 * DAY, amount=40.0)], []),
        ([tx("c", T - 20 * MIN, amount=30.0), tx("d", T - 10 * MIN, amount=20.0)], []),
        ([tx("t", T, amount=55.0), tx("u", T + MIN, amount=-5.0)], []),
        store=store,
    )
    card = store[("card", "C1")]
    assert sorted(e[1] for e in card["raw"]) == ["c", "d", "t", "u"]  # a and b are in tiles
    assert sorted(tile[4][0] for tile in card["tiles"].values()) == [10.0, 40.0]
    # t: 10, 20, 30, 40 -> Q1 17.5, median 25, Q3 32.5: (55 - 25) / 15
    assert rows["t"]["card_amount_iqr_score_30d"] == pytest.approx(2.0, rel=1e-12)
    # u: 10, 20, 30, 40, 55 -> Q1 20, median 30, Q3 40: (-5 - 30) / 20
    assert rows["u"]["card_amount_iqr_score_30d"] == pytest.approx(-1.75, rel=1e-12)


def test_a_version_1_tile_without_amounts_is_left_out_of_the_iqr_score():
    """A tile of a version-1 state (count, sum, sum of squares, countries) counts in every other feature; the IQR
    score takes the amounts it has, and folding into such a tile does not start a partial amounts list."""
    card = online.new_card()
    card["tiles"][str(H // HOUR - 5)] = [2, 30.0, 500.0, ["FR"]]  # 10 and 20, 5 hours before H
    for t in (tx("a", T - 2 * DAY, amount=1.0), tx("b", T - DAY, amount=2.0), tx("c", T - 2 * HOUR, amount=3.0)):
        online.apply_card(card, t, t["ts"])
    online.prune_card(card, RETENTION)  # a and b fold into new tiles, c stays raw
    assert card["tiles"][str(H // HOUR - 5)] == [2, 30.0, 500.0, ["FR"]]
    late = tx("late", H - 5 * HOUR + MIN, amount=4.0)  # into the version-1 tile
    card["pruned"] = None  # let it in (as a replay would not)
    online.apply_card(card, late, late["ts"])
    online.prune_card(card, RETENTION)
    assert card["tiles"][str(H // HOUR - 5)] == [3, 34.0, 516.0, ["FR"]]
    row = online.card_features(card, tx("t", T, amount=9.0), T)
    assert (row["card_tx_count_30d"], row["card_amount_sum_30d"]) == (6, 40.0)  # 10 + 20 + 4 + 1 + 2 + 3
    # the amounts known: 1, 2, 3 (a, b from tiles, c raw): under 4
    assert row["card_amount_iqr_score_30d"] is None


def test_distance_and_speed():
    paris = tx("p", T)
    ny_30s = tx("ny", T + 30 * SEC, lat=NEW_YORK[0], lon=NEW_YORK[1])
    row = features([paris, ny_30s])["ny"]
    assert row["card_prev_distance_km"] == pytest.approx(5837.0, abs=1.0)  # Paris -> New York ~5837 km
    # 30 s is floored to 60 s: d / (60 / 3600) h = 60 d km/h
    assert row["card_prev_speed_kmh"] == pytest.approx(row["card_prev_distance_km"] * 60, rel=1e-12)
    assert row["card_seconds_since_last"] == 30.0

    ny_2h = tx("ny", T + 2 * HOUR, lat=NEW_YORK[0], lon=NEW_YORK[1])
    row = features([paris, ny_2h])["ny"]
    assert row["card_prev_speed_kmh"] == pytest.approx(row["card_prev_distance_km"] / 2, rel=1e-12)  # d / 2 h

    # no own coordinates: the terminal's, else the merchant's; none at all: no distance
    at_terminal = tx("x", T + HOUR, lat=None, lon=None, terminal_lat=NEW_YORK[0], terminal_lon=NEW_YORK[1])
    assert features([paris, at_terminal])["x"]["card_prev_distance_km"] == pytest.approx(5837.0, abs=1.0)
    at_merchant = tx("x", T + HOUR, lat=None, lon=None, merchant_lat=PARIS[0], merchant_lon=PARIS[1])
    assert features([paris, at_merchant])["x"]["card_prev_distance_km"] == 0.0
    nowhere = tx("x", T + HOUR, lat=None, lon=None)
    row = features([paris, nowhere])["x"]
    assert row["card_prev_distance_km"] is None and row["card_prev_speed_kmh"] is None
    assert row["card_seconds_since_last"] == 3600.0


# ---- batches: order, replay, pruning --------------------------------------------------------------------------


def random_batch(
    rng: random.Random, start: int, span_ms: int, n: int = 40, prefix: str = "t"
) -> tuple[list[dict], list[dict]]:
    """``n`` transactions of 3 cards at 2 terminals and 2 merchants within ``span_ms`` (some in the same ms),
    and fraud labels of a third of them reported within the span."""
    times = sorted(start + rng.randrange(span_ms) for _ in range(n))
    times[5] = times[4]  # two transactions in the same millisecond
    txs = [
        tx(
            f"{prefix}{i:02d}",
            ts,
            card=rng.choice(["C1", "C2", "C3"]),
            amount=round(rng.uniform(1, 500), 2),
            terminal_id=rng.choice(["T1", "T2", None]),
            merchant_id=rng.choice(["M1", "M2"]),
            country=rng.choice(["FR", "DE"]),
            device_id=rng.choice(["D1", "D2", None]),
            lat=PARIS[0] + rng.uniform(-1, 1),
        )
        for i, ts in enumerate(times)
    ]
    labels = [
        fraud(
            t["transaction_id"], t["ts"] + rng.randrange(start + span_ms - t["ts"]), t["terminal_id"], t["merchant_id"]
        )
        for t in txs[::3]
    ]
    return txs, labels


def test_order_inside_a_batch_does_not_matter():
    rng = random.Random(7)
    txs, labels = random_batch(rng, T, 50 * MIN)
    expected = features(txs, labels)
    for _ in range(5):
        shuffled_txs, shuffled_labels = rng.sample(txs, len(txs)), rng.sample(labels, len(labels))
        actual = features(shuffled_txs, shuffled_labels)
        for tid, row in expected.items():
            assert_rows_close(actual[tid], row)


def test_a_backlog_batch_taken_in_chunks_gives_the_values_of_one_batch(monkeypatch):
    """Three days in one micro-batch (a backlog): taken in event-time chunks of 7, with labels in the chunk of
    their report time and states pruned between chunks, the values are those of the unchunked batch."""
    rng = random.Random(11)
    txs, labels = random_batch(rng, T, 3 * 24 * 60 * MIN, n=240)
    shuffled = rng.sample(txs, len(txs))
    expected = features(shuffled, labels)
    monkeypatch.setattr(online, "CHUNK", 7)
    scanned, compute = [], online.card_features

    def spy(card, tx, ts):
        scanned.append(len(card["raw"]))
        return compute(card, tx, ts)

    monkeypatch.setattr(online, "card_features", spy)
    chunked = run((shuffled, labels))
    for tid, row in expected.items():
        assert_rows_close(chunked[tid], row)
    # states were pruned between chunks: a feature never scans three days of a card's raw events (~80)
    assert max(scanned) < 20, max(scanned)


def test_replayed_batch_changes_nothing():
    """The second application finds the batch's events already there (a micro-batch replayed after a crash)."""
    rng = random.Random(11)
    store = Store()
    run(random_batch(rng, T - DAY, 50 * MIN, prefix="y"), store=store)  # yesterday: history
    batch = random_batch(rng, T, 50 * MIN)
    first = run(batch, store=store)
    state = copy.deepcopy(dict(store))
    again = run(batch, store=store)
    for tid, row in first.items():  # the same up to rounding (yesterday has moved from raw events to tiles)
        assert_rows_close(again[tid], row)
    assert dict(store) == state


def test_replayed_batch_longer_than_the_retention_leaves_the_state_unchanged():
    """A batch spanning more than the raw retention (a backlog after a restart) prunes some of its own events;
    replaying it adds nothing to the state (the job writes the vectors before the states, so a replayed batch's
    vectors come from the state before it, see features.job)."""
    batch = ([tx("a", T, amount=10.0, terminal_id="T1"), tx("b", T + 2 * HOUR, amount=20.0, terminal_id="T1")], [])
    store = Store()
    first = run(batch, store=store)
    state = copy.deepcopy(dict(store))
    again = run(batch, store=store)
    assert first["a"]["card_seconds_since_last"] is None  # a is the card's first transaction
    assert (first["b"]["card_tx_count_24h"], first["b"]["card_amount_sum_24h"]) == (1, 10.0)  # a
    assert first["b"]["terminal_tx_count_1d"] == 1  # a
    assert dict(store) == state
    assert_rows_close(again["b"], first["b"])  # b is within the retention: the same values
    assert again["a"]["card_seconds_since_last"] is None  # a never sees itself (nor b) as its previous one


def card_history(rng: random.Random) -> list[dict]:
    """35 days of a card's transactions before T - 2 h, with a few placed on purpose (see the test)."""
    txs = [
        tx(
            f"r{i:03d}",
            T - 35 * DAY + rng.randrange(35 * DAY - 2 * HOUR),
            amount=float(rng.randint(1, 500)),  # whole amounts: sums are exact in any order
            country=rng.choice(["FR", "DE", "US"]),
            device_id=rng.choice(["D1", "D2", None]),
            merchant_id=rng.choice(["M1", "M2", "M3"]),
        )
        for i in range(150)
    ]
    return [
        *txs,
        tx("dev29", T - 29 * DAY, device_id="Dx"),
        tx("dev31", T - 31 * DAY, device_id="Dy", country="BR"),
        tx("jp", T - 20 * HOUR, country="JP"),
        tx("d24_in", H - DAY, amount=7.0),
        tx("d24_out", H - DAY - 1, amount=9.0),
        tx("last", T - 2 * HOUR, amount=3.0, lat=NEW_YORK[0], lon=NEW_YORK[1]),
        tx("late", T + 10 * MIN, amount=5.0),  # the newest: the queries below are 10 min late
    ]


def test_pruned_state_gives_the_same_features():
    history = sorted(card_history(random.Random(3)), key=lambda t: t["ts"])
    pruned, whole = online.new_card(), online.new_card()
    for day in range(36):  # daily micro-batches, pruned after each
        chunk = [t for t in history if (t["ts"] - history[0]["ts"]) // DAY == day]
        for t in chunk:
            online.apply_card(pruned, t, t["ts"])
            online.apply_card(whole, t, t["ts"])
        if chunk:
            online.prune_card(pruned, RETENTION)
    assert [e[1] for e in pruned["raw"]] == ["late"]  # everything before T + 10 min - 75 min went into tiles
    assert pruned["anchor"][:2] == [T - 2 * HOUR, "last"] and pruned["tiles"]
    assert len(whole["raw"]) == len(history)

    queries = [
        tx("q1", T, amount=100.0, device_id="Dx", country="JP"),
        tx("q2", T, amount=100.0, device_id="Dy", country="BR"),
        tx("q3", T, amount=250.0, device_id=None, country="FR"),
    ]
    rows = [online.card_features(pruned, q, T) for q in queries]
    assert rows == [online.card_features(whole, q, T) for q in queries]
    q1, q2, q3 = rows
    assert q1["card_seconds_since_last"] == 7200.0  # "last", from the anchor
    assert q1["card_prev_distance_km"] == pytest.approx(5837.0, abs=1.0)  # New York -> Paris
    assert q1["card_prev_speed_kmh"] == pytest.approx(q1["card_prev_distance_km"] / 2, rel=1e-12)
    assert (q1["card_new_device"], q1["card_new_country"]) == (False, False)  # Dx 29 days ago, JP 20 h ago
    assert (q2["card_new_device"], q2["card_new_country"]) == (True, True)  # Dy and BR 31 days ago only
    assert q3["card_new_device"] is None
    assert q1["card_tx_count_1h"] == 0
    month = sorted(t["amount"] for t in history if H - 30 * DAY <= t["ts"] < T)
    q1_, median, q3_ = np.percentile(month, [25, 50, 75])
    assert q3["card_amount_iqr_score_30d"] == pytest.approx((250.0 - median) / (q3_ - q1_), rel=1e-12)
    for w in ("24h", "7d", "30d"):
        lo = H - int(w[:-1]) * (HOUR if w.endswith("h") else DAY)  # floor_hour(T) - window
        assert q1[f"card_tx_count_{w}"] == sum(1 for t in history if lo <= t["ts"] < T), w
        assert q1[f"card_amount_sum_{w}"] == sum(t["amount"] for t in history if lo <= t["ts"] < T), w
    assert q1["card_distinct_countries_24h"] == len({t["country"] for t in history if H - DAY <= t["ts"] < T})


def test_pruning_with_a_long_allowed_lateness():
    """With 3 h of allowed lateness a transaction 2.5 h behind the newest event still sees its whole 30d."""
    retention = online.raw_retention_ms(3 * 3600)  # 1 h + 3 h + 5 min
    q_ts = H + HOUR  # 13:00
    history = [
        tx("a", q_ts - 30 * DAY, amount=1.0, device_id="Dz", country="BR"),  # first ms of q's 30d windows
        tx("b", q_ts - 29 * DAY, amount=2.0),
        tx("newest", q_ts + 150 * MIN, amount=4.0),  # 15:30: q arrives 2.5 h behind it
    ]
    pruned, whole = online.new_card(), online.new_card()
    for t in history:
        online.apply_card(pruned, t, t["ts"])
        online.apply_card(whole, t, t["ts"])
    online.prune_card(pruned, retention)
    q = tx("q", q_ts, amount=8.0, device_id="Dz", country="BR")
    row = online.card_features(pruned, q, q_ts)
    assert (row["card_tx_count_30d"], row["card_amount_sum_30d"]) == (2, 3.0)  # a and b: 1 + 2
    assert (row["card_new_device"], row["card_new_country"]) == (False, False)  # Dz, BR used at q - 30 d
    assert row == online.card_features(whole, q, q_ts)


def test_pruned_place_state_gives_the_same_features():
    rng = random.Random(5)
    events = sorted(
        [(T - 10 * DAY + rng.randrange(10 * DAY), f"t{i}", 0) for i in range(80)]
        + [(T - 10 * DAY + rng.randrange(10 * DAY), f"t{i}", 1) for i in range(0, 80, 4)]
    )
    pruned, whole = online.new_place(), online.new_place()
    for ts, tid, kind in events:
        online.apply_place(pruned, ts, tid, kind)
        online.apply_place(whole, ts, tid, kind)
        online.prune_place(pruned, RETENTION)
    assert len(pruned["raw"]) < len(whole["raw"]) and pruned["tiles"]
    t = events[-1][0] + 1
    row = online.place_features("terminal", pruned, t)
    assert row == online.place_features("terminal", whole, t)
    assert row["terminal_tx_count_7d"] == sum(1 for ts, _, k in events if k == 0 and t // HOUR * HOUR - 7 * DAY <= ts)


# ---- place features and labels ---------------------------------------------------------------------------------


def test_fraud_labels_count_from_their_reported_time():
    txs = [
        tx("old1", T - 40 * DAY, card="C9", terminal_id="T1", merchant_id="M1"),
        tx("old2", T - 45 * DAY, card="C9", terminal_id="T1", merchant_id="M1"),
        tx("a", T - 3 * HOUR, terminal_id="T1", merchant_id="M2"),
        tx("b", T - 2 * HOUR, terminal_id="T1", merchant_id="M1"),
        tx("c", T - HOUR, terminal_id="T1", merchant_id="M1"),
        tx("t", T, terminal_id="T1", merchant_id="M1"),
    ]
    labels = [
        fraud("old1", T - 30 * MIN, "T1", "M1"),  # known before t: counts although old1 is 40 days old
        fraud("old2", T - 3 * DAY, "T1", "M1"),  # known 3 days before t: in 7d and 30d, not in 1d
        fraud("b", T + MIN, "T1", "M1"),  # reported after t: not yet known
        fraud("c", T, "T1", "M1"),  # reported in t's millisecond: not earlier
    ]
    row = features(txs, labels)["t"]
    # terminal T1: a, b, c earlier in every window (old1/old2 are older than 30 days); fraud known: old1 (+ old2)
    assert [row[f"terminal_tx_count_{w}"] for w in ("1d", "7d", "30d")] == [3, 3, 3]
    assert [row[f"terminal_fraud_count_{w}"] for w in ("1d", "7d", "30d")] == [1, 2, 2]
    assert row["terminal_fraud_rate_1d"] == pytest.approx(1 / 3)  # 1 / 3
    assert row["terminal_fraud_rate_30d"] == pytest.approx(2 / 3)  # 2 / 3
    # merchant M1: b and c earlier (a was at M2)
    assert [row[f"merchant_tx_count_{w}"] for w in ("1d", "7d", "30d")] == [2, 2, 2]
    assert [row[f"merchant_fraud_count_{w}"] for w in ("1d", "7d", "30d")] == [1, 2, 2]
    assert row["merchant_fraud_rate_1d"] == 0.5  # 1 / 2
    assert row["merchant_fraud_rate_7d"] == 1.0  # 2 / 2


# ---- context -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "place", "night", "weekend"),
    [
        # Friday 23:55 UTC in Paris (lon 2.3522 -> +9 min 24.5 s): Saturday 00:04 local
        (ms(2026, 3, 6, 23, 55), PARIS, True, True),
        # Saturday 03:00 UTC in New York (lon -74.006 -> -4 h 56 min): Friday 22:04 local
        (ms(2026, 3, 7, 3, 0), NEW_YORK, False, False),
        # Monday 05:59 UTC in Paris: 06:08 local, no longer night
        (ms(2026, 3, 2, 5, 59), PARIS, False, False),
        # Sunday 23:00 UTC without any place: UTC itself, Sunday 23:00
        (ms(2026, 3, 8, 23, 0), (None, None), False, True),
        # Sunday 23:00 UTC in Tokyo (lon 139.69 -> +9 h 18.8 min): Monday 08:18 local
        (ms(2026, 3, 8, 23, 0), (35.6762, 139.6503), False, False),
        # Monday 00:30 UTC without a place: night
        (ms(2026, 3, 2, 0, 30), (None, None), True, False),
    ],
    ids=["paris-sat-local", "new-york-fri-local", "paris-morning", "utc-sunday", "tokyo-mon-local", "utc-night"],
)
def test_night_and_weekend_in_local_solar_time(when: int, place: tuple, night: bool, weekend: bool):
    values = context_values(tx("t", when, lat=place[0], lon=place[1]), when)
    assert (values["is_night"], values["is_weekend"]) == (night, weekend)


def test_context_channel_risk_and_amount():
    def ctx(**fields: object) -> dict:
        return context_values(tx("t", T, **fields), T)

    assert ctx(channel="POS", card_present=True)["card_present_channel_mismatch"] is False
    assert ctx(channel="ONLINE", card_present=True)["card_present_channel_mismatch"] is True
    assert ctx(channel="ATM", card_present=False)["card_present_channel_mismatch"] is True
    assert ctx(channel="ONLINE", card_present=False)["card_present_channel_mismatch"] is False
    assert ctx(channel=None)["card_present_channel_mismatch"] is None
    assert ctx(mcc_risk_tier="high", country_risk_tier="high")["mcc_risk_score"] == 0.8
    assert ctx(mcc_risk_tier="medium")["mcc_risk_score"] == 0.4
    unknown = ctx(mcc_risk_tier="galactic", country_risk_tier=None)
    assert (unknown["mcc_risk_score"], unknown["country_risk_score"]) == (0.5, 0.5)
    assert ctx(amount=-9.0)["amount_log"] == pytest.approx(math.log(10))  # ln(1 + |-9|)
    assert ctx(amount=0.0)["amount_log"] == 0.0


def test_location_falls_back_to_terminal_then_merchant():
    assert location(tx("t", T)) == PARIS
    assert location(tx("t", T, lat=None, terminal_lat=1.0, terminal_lon=2.0, merchant_lat=3.0, merchant_lon=4.0)) == (
        1.0,
        2.0,
    )
    assert location(tx("t", T, lon=None, terminal_lat=1.0, merchant_lat=3.0, merchant_lon=4.0)) == (3.0, 4.0)
    assert location(tx("t", T, lat=None)) == (None, None)


# ---- ticks -------------------------------------------------------------------------------------------------------

A = math.log(1.1)  # ln(110 / 100) = 0.0953101798...


def ticks(prices: list[float], symbol: str = "ACME", start: int = T) -> list[dict]:
    return [{"symbol": symbol, "ts": start + i * SEC, "price": p} for i, p in enumerate(prices)]


def test_tick_returns_volatility_momentum():
    prices = [100.0 if i % 2 == 0 else 110.0 for i in range(10)] + [121.0]  # 100, 110, ..., 110, 121
    rows, touched = online.ticks_batch(Store(), ticks(prices))
    assert touched == {("symbol", "ACME")}
    assert list(rows[0]) == MARKET_FEATURE_NAMES
    assert all(v is None for v in rows[0].values())  # first tick: nothing to compare with
    assert rows[1]["tick_log_return"] == pytest.approx(0.0953101798, rel=1e-9)  # ln(110 / 100)
    assert rows[2]["tick_log_return"] == pytest.approx(-0.0953101798, rel=1e-9)  # ln(100 / 110)
    assert rows[9]["tick_volatility_10"] is None  # 9 returns
    assert rows[9]["tick_momentum_10"] is None  # 10 prices
    # returns +A -A +A -A +A -A +A -A +A +A: mean 0.2 A, squares 6 (0.8 A)^2 + 4 (1.2 A)^2 = 9.6 A^2,
    # std = A sqrt(9.6 / 9) = 0.0984359304
    assert rows[10]["tick_volatility_10"] == pytest.approx(0.0984359304, rel=1e-9)
    assert rows[10]["tick_momentum_10"] == pytest.approx(0.1906203596, rel=1e-9)  # ln(121 / 100) = 2 A
    assert rows[10]["tick_volatility_50"] is None and rows[10]["tick_momentum_50"] is None


def test_tick_return_zscore():
    prices = [100.0 if i % 2 == 0 else 110.0 for i in range(51)] + [121.0]  # p0..p50 alternate, p50 = 100
    rows, _ = online.ticks_batch(Store(), ticks(prices))
    assert rows[50]["tick_return_zscore_50"] is None  # 50 returns: no 50 previous ones yet
    assert rows[50]["tick_volatility_50"] == pytest.approx(A * math.sqrt(50 / 49), rel=1e-9)  # 25 x +A, 25 x -A
    assert rows[50]["tick_momentum_50"] == pytest.approx(0.0, abs=1e-12)  # ln(100 / 100)
    # previous 50 returns: mean 0, std A sqrt(50/49); this one ln(121/100) = 2 A: z = 2 sqrt(49/50) = 1.97989899
    assert rows[51]["tick_return_zscore_50"] == pytest.approx(1.9798989873, rel=1e-9)


def test_ticks_batch_returns_rows_in_input_order():
    batch = ticks([100.0, 101.0, 99.0, 103.0, 102.0]) + ticks([10.0, 12.0, 9.0], symbol="XYZ")
    expected, _ = online.ticks_batch(Store(), batch)
    shuffled = random.Random(1).sample(range(len(batch)), len(batch))
    rows, touched = online.ticks_batch(Store(), [batch[i] for i in shuffled])
    assert rows == [expected[i] for i in shuffled]
    assert touched == {("symbol", "ACME"), ("symbol", "XYZ")}
    assert expected[3]["tick_log_return"] == pytest.approx(math.log(103 / 99))
    assert expected[6]["tick_log_return"] == pytest.approx(math.log(12 / 10))  # XYZ has its own history


def test_ticks_later_batches_continue_the_symbol():
    prices = [100.0, 101.0, 99.0, 103.0, 102.0, 104.0]
    store = Store()
    rows = online.ticks_batch(store, ticks(prices)[:3])[0] + online.ticks_batch(store, ticks(prices)[3:])[0]
    assert rows == online.ticks_batch(Store(), ticks(prices))[0]
    assert online.ticks_batch(store, ticks(prices)[3:4])[0][0]["tick_log_return"] == pytest.approx(math.log(103 / 99))
