"""The feature stage's stateful processors (``features.stateful``) under PySpark's ``TwsTester``: micro-batches
through the card → terminal → merchant operators, split into hash buckets as Spark groups them, give the
online engine's values and states, and the online store gets every state an operator touched."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from pyspark.sql.streaming.tws_tester import TwsTester
from test_features_online import DAY, MIN, Store, T, assert_rows_close, random_batch

from features import online, stateful

COLUMNS = [c.split(" ")[0] for c in stateful.EVENT_COLUMNS.split(", ")]


def events(txs: list[dict], labels: list[dict]) -> pd.DataFrame:
    rows = [{**t, "kind": stateful.TX, "feats": "{}"} for t in txs]
    rows += [{**la, "kind": stateful.LABEL, "ts": la["reported_ms"], "feats": "{}"} for la in labels]
    frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    frame["wm"] = pd.to_datetime(frame["ts"], unit="ms")
    return frame


class Operators:
    """The three processors, each with its own in-memory state store, and what they copied to the online store."""

    def __init__(self, settings, monkeypatch, buckets: int = 3):
        self.saved: dict = {}
        monkeypatch.setattr(stateful._EntityProcessor, "save", lambda _, states, ts: self.saved.update(states))
        self.buckets = buckets
        self.steps = [
            (TwsTester(stateful.CardProcessor(settings, "t")), "card_id"),
            (TwsTester(stateful.PlaceProcessor(settings, "t", "terminal", last=False)), "terminal_id"),
            (TwsTester(stateful.PlaceProcessor(settings, "t", "merchant", last=True)), "merchant_id"),
        ]

    def batch(self, frame: pd.DataFrame) -> pd.DataFrame:
        for tester, column in self.steps:
            bucket = frame[column].map(lambda k: hash(k or "") % self.buckets)
            outs = [tester.testInPandas(b, part) for b, part in frame.groupby(bucket)]
            frame = pd.concat([o for o in outs if len(o)], ignore_index=True)
        return frame


@pytest.mark.parametrize("buckets", [1, 3])
def test_operators_give_the_engines_values_and_states(settings, monkeypatch, buckets):
    retention = online.raw_retention_ms(settings.streaming.allowed_lateness_s)
    rng = random.Random(5)
    batches = [random_batch(rng, T - DAY, 50 * MIN, prefix="y"), random_batch(rng, T, 50 * MIN)]
    store, operators = Store(), Operators(settings, monkeypatch, buckets)
    for txs, labels in batches:
        expected, _ = online.transactions_batch(store, txs, labels, retention)
        out = operators.batch(events(txs, labels))
        assert sorted(out["transaction_id"]) == sorted(t["transaction_id"] for t in txs)  # labels stop at the end
        got = {r.transaction_id: json.loads(r.feats) for r in out.itertuples()}
        for tx, row in zip(txs, expected, strict=True):
            assert_rows_close(got[tx["transaction_id"]], row)
    assert set(operators.saved) == set(store)
    for key, state in store.items():  # raw events are a set: their order follows the rows' order in the batch
        saved, engine = (json.loads(stateful._dumps(s)) for s in (operators.saved[key], state))
        saved["raw"].sort()
        engine["raw"].sort()
        assert saved == engine, key


def test_a_replayed_batch_gives_the_same_vectors(settings, monkeypatch):
    """A batch applied again to states that already hold it (the online store's copy after a crash) adds
    nothing: the same vectors."""
    txs, labels = random_batch(random.Random(3), T, 50 * MIN)
    operators = Operators(settings, monkeypatch)
    first = operators.batch(events(txs, labels))
    again = operators.batch(events(txs, labels))
    key = "transaction_id"
    assert first.sort_values(key)["feats"].tolist() == again.sort_values(key)["feats"].tolist()
