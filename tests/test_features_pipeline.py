"""Feature parity and leakage on real services: the stream's vectors (a), the training set (b) and the API's
online computation from Redis (c) agree for the same events; a label reported after the cut-off changes nothing.

Two days of generated traffic go through ``python -m lakehouse.pipeline --available-now`` (bronze → silver →
features → gold, real processes), then ``python -m features build-training-set``.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from pyspark.sql import functions as F
from support import FEATURE_LAKE_DAYS, FEATURE_LAKE_START, run, same

from features import online
from features.offline import market_features
from features.request import RequestFeatures
from features.store import OnlineStore, OnlineStoreUnavailable
from lakehouse import delta
from lakehouse.feature_definitions import MARKET_FEATURE_NAMES, TRANSACTION_FEATURE_NAMES

START, DAYS = FEATURE_LAKE_START, FEATURE_LAKE_DAYS


def mismatches(left: dict, right: dict, names: list[str]) -> list[tuple]:
    return [(n, left[n], right[n]) for n in names if not same(left[n], right[n])]


@pytest.fixture
def lake(feature_lake):
    return feature_lake


def rows_by_id(settings, name: str) -> dict[str, dict]:
    return {
        r["transaction_id"]: r for r in delta.read_arrow(settings, settings.table_uri("features", name)).to_pylist()
    }


def build(env: dict, end: date, table: str, delay: str = "1d") -> str:
    return run(env, "-m", "features", "build-training-set", "--start", START.date().isoformat(),
               "--end", end.isoformat(), "--label-delay", delay, "--table", table, "--chunk-days", "1")  # fmt: skip


def test_stream_and_training_set_agree(lake):
    settings, env, _ = lake
    out = build(env, START.date() + timedelta(days=DAYS), "parity")
    assert "vectors" in out  # progress per chunk
    stream = rows_by_id(settings, "transactions")
    offline = rows_by_id(settings, "parity")
    silver = delta.read_arrow(settings, settings.table_uri("silver", "transactions"))
    assert len(stream) == len(offline) == silver.num_rows > 5000
    bad = {t: m for t, r in stream.items() if (m := mismatches(r, offline[t], TRANSACTION_FEATURE_NAMES))}
    assert not bad, f"{len(bad)} transactions differ, e.g. {next(iter(bad.items()))}"
    # the features are not trivially empty: windows, labels by reported time and travel all show up
    assert max(r["card_tx_count_24h"] for r in stream.values()) > 10
    assert any(r["terminal_fraud_count_1d"] or r["merchant_fraud_count_7d"] for r in stream.values())
    assert any(r["card_new_country"] and r["card_seconds_since_last"] for r in stream.values())
    assert any((r["card_prev_speed_kmh"] or 0) > 1000 for r in stream.values())
    labels = [r["label"] for r in offline.values()]
    assert 0 < sum(labels) < len(labels)


def test_market_stream_matches_offline(lake, spark):
    settings, _, _ = lake
    stream = delta.read_arrow(settings, settings.table_uri("features", "market_ticks")).to_pylist()
    ticks = delta.read(spark, settings.table_uri("silver", "market_ticks"))
    computed = market_features(ticks).withColumn("ms", F.unix_millis("event_time")).collect()
    offline = {(r["symbol"], r["ms"]): r.asDict() for r in computed}
    assert len(stream) == len(offline) > 100
    keys = [(r["symbol"], int(r["event_time"].timestamp() * 1000)) for r in stream]
    assert set(keys) == set(offline), sorted(set(keys) ^ set(offline))[:4]
    bad = [r for r, k in zip(stream, keys, strict=True) if mismatches(r, offline[k], MARKET_FEATURE_NAMES)]
    assert not bad, bad[:2]
    assert sum(r["tick_return_zscore_50"] is not None for r in stream) > len(stream) / 2


def test_online_store_layout_and_api_parity(lake):
    settings, env, log = lake
    store = OnlineStore(settings)
    stream = rows_by_id(settings, "transactions")
    silver = {
        r["transaction_id"]: r
        for r in delta.read_arrow(settings, settings.table_uri("silver", "transactions")).to_pylist()
    }
    newest = max(r["event_time"] for r in silver.values())
    card = max(silver.values(), key=lambda r: r["event_time"])["card_id"]
    name = store.key("card", card)
    assert store.client.ttl(name) > 30 * 86_400
    assert {b"raw", b"tiles", b"anchor", b"updated_at", b"batch"} <= set(store.client.hkeys(name))
    assert store.meta()["batch"].startswith("features.")

    # (c) the API's computation from Redis gives the stream's values for the recent transactions it still holds
    api = RequestFeatures(settings)
    recent = [r for r in silver.values() if r["event_time"] >= newest - timedelta(minutes=10)]
    assert recent
    for r in recent:
        request = {**r, "event_time": int(r["event_time"].timestamp() * 1000)}
        result = api.compute(request)
        assert result.status == "ok"
        assert not mismatches(result.values, stream[r["transaction_id"]], TRANSACTION_FEATURE_NAMES)

    # a new transaction: what the API computes before it arrives is what the stream computes when it does
    last = max((r for r in silver.values() if r["card_id"] == card), key=lambda r: r["event_time"])
    event = {k: last[k] for k in ("card_id", "customer_id", "merchant_id", "merchant_category_code", "terminal_id",
                                  "currency", "channel", "card_present", "country", "lat", "lon", "device_id",
                                  "ip_hash", "transaction_type")}  # fmt: skip
    event.update(transaction_id="api-parity-1", amount=last["amount"] * 7 + 1,
                 event_time=int((newest + timedelta(seconds=30)).timestamp() * 1000))  # fmt: skip
    before = api.compute(event)
    assert before.status == "ok" and before.values["card_seconds_since_last"] is not None
    log.produce_batch(settings.eventlog.topics.transactions.name, [(card.encode(), json.dumps(event).encode())])
    run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    after = rows_by_id(settings, "transactions")["api-parity-1"]
    assert not mismatches(before.values, after, TRANSACTION_FEATURE_NAMES)


def test_degraded_when_online_store_is_down(lake):
    settings, _, _ = lake
    down = settings.model_copy(
        update={"online_store": settings.online_store.model_copy(update={"url": "redis://127.0.0.1:1/0"})}
    )
    silver = delta.read_arrow(settings, settings.table_uri("silver", "transactions")).slice(0, 1).to_pylist()[0]
    result = RequestFeatures(down).compute({**silver, "event_time": int(silver["event_time"].timestamp() * 1000)})
    assert result.status == "degraded" and "online store" in result.reason
    assert result.values["card_tx_count_1h"] is None and result.values["terminal_fraud_rate_7d"] is None
    assert result.values["mcc_risk_score"] is not None and result.values["is_night"] is not None
    # the stream's operators cannot copy their states either: the batch fails and is retried
    with pytest.raises(OnlineStoreUnavailable):
        OnlineStore(down).save({("card", silver["card_id"]): online.new_card()}, "features.transactions@0")


def test_label_reported_after_cutoff_changes_nothing(lake):
    settings, env, log = lake
    end = START.date()  # day one; cut-off = day two 00:00 + 1 d
    build(env, end, "leak_before")
    before = rows_by_id(settings, "leak_before")
    genuine = [r for r in before.values() if not r["label_known"] and r["terminal_tx_count_1d"] is not None]
    victim = genuine[len(genuine) // 2]
    cutoff = victim["label_cutoff"]
    reported = int((cutoff + timedelta(hours=1)).timestamp() * 1000)
    late_label = {"transaction_id": victim["transaction_id"], "card_id": victim["card_id"], "label": "fraud",
                  "reported_at": reported, "source": "chargeback"}  # fmt: skip
    log.produce_batch(
        settings.eventlog.topics.labels.name, [(victim["card_id"].encode(), json.dumps(late_label).encode())]
    )
    run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    silver = {
        r["transaction_id"]: r
        for r in delta.read_arrow(settings, settings.table_uri("silver", "transactions")).to_pylist()
    }
    assert silver[victim["transaction_id"]]["label"] == "fraud"  # the label did arrive

    build(env, end, "leak_after")
    after = rows_by_id(settings, "leak_after")
    assert set(after) == set(before)
    for t, r in after.items():
        assert not mismatches(r, before[t], [*TRANSACTION_FEATURE_NAMES, "label", "label_known"]), t

    # the same label reported before the cut-off is seen: the check above could fail
    build(env, end, "leak_known", delay="3d")
    assert rows_by_id(settings, "leak_known")[victim["transaction_id"]]["label"] == 1
