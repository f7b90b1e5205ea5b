"""serving/scorer.py: rules, statistics and models into one decision row per transaction, with champion/challenger
routing. Pure: the models are fakes with the ``LoadedModel`` surface, no MLflow, Redis or Spark."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakehouse.config import Settings
from serving import statistical
from serving.rules import RuleBook
from serving.scorer import Models, Scorer, route
from training.dataset import FEATURES
from training.registry import CHALLENGER, CHAMPION

# --------------------------------------------------------------------------------------------------------------
# fakes and helpers

THRESHOLDS = {"review": 0.6, "block": 0.9}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeModel:
    """The ``LoadedModel`` surface the scorer uses: a constant (or per-row) probability and fixed SHAP reasons."""

    def __init__(
        self,
        version: str,
        prob: float | Sequence[float] = 0.1,
        *,
        name: str = "fraud_xgb",
        thresholds: dict | None = None,
        why: Sequence[str] = ("amount_log",),
        fail: str | None = None,  # "score" or "reasons": that call raises
    ):
        self.name, self.version, self.prob, self.why, self.fail = name, version, prob, list(why), fail
        self.thresholds = dict(THRESHOLDS if thresholds is None else thresholds)
        self.inputs: list[pd.DataFrame] = []
        self.ks: list[int] = []

    features = FEATURES

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """As ``LoadedModel.score_matrix``: the model input (``features`` columns, in order) scored by ``score``."""
        return self.score(pd.DataFrame(x, columns=self.features)).to_numpy()

    def score(self, x: pd.DataFrame) -> pd.Series:
        self.inputs.append(x)
        if self.fail == "score":
            raise RuntimeError(f"v{self.version} is broken")
        probs = [self.prob] * len(x) if isinstance(self.prob, float | int) else list(self.prob)
        return pd.Series(probs, index=x.index, name="score", dtype="float64")

    def reasons(self, x: pd.DataFrame, k: int = 3) -> list[list[str]]:
        self.ks.append(k)
        if self.fail == "reasons":
            raise RuntimeError("no SHAP today")
        return [self.why[:k] for _ in range(len(x))]


class FakeLoader:
    """A ``ModelLoader``: ``current`` is the model, or raises LookupError like an unset alias."""

    def __init__(self, model: FakeModel | None):
        self.model = model

    @property
    def current(self) -> FakeModel:
        if self.model is None:
            raise LookupError("models:/fraud_xgb@champion is not set")
        return self.model


def models(champion=None, challenger=None, anomaly=None) -> Models:
    return Models(*(None if m is None else FakeLoader(m) for m in (champion, challenger, anomaly)))


def tuned(settings: Settings, **decision) -> Settings:
    return settings.model_copy(update={"decision": settings.decision.model_copy(update=decision)})


def vector(**values) -> dict:
    """A feature vector that moves no tier: a month of history, nothing in the short windows, an ordinary amount."""
    vec: dict = dict.fromkeys(FEATURES, 0.0)
    vec.update(card_tx_count_30d=30.0, card_amount_zscore_30d=0.0, amount_log=3.2)
    vec.update(values)
    return vec


def tx(i: int, **fields) -> dict:
    return {
        "transaction_id": f"tx-{i:05d}",
        "card_id": f"card-{i:05d}",
        "event_time": T0 + timedelta(seconds=i),
        "amount": 25.0,
        "country": "FR",
        "merchant_category_code": "5411",
        "ip_hash": "ip-0",
        **fields,
    }


def batch(n: int, **fields) -> tuple[list[dict], list[dict]]:
    return [tx(i, **fields) for i in range(n)], [vector() for _ in range(n)]


@pytest.fixture(scope="module")
def rules_path(settings: Settings) -> Path:
    return settings.path(settings.decision.rules_file)


@pytest.fixture(scope="module")
def rules(rules_path: Path) -> RuleBook:
    return RuleBook(rules_path, reload_seconds=3600)


@pytest.fixture
def make(settings: Settings, rules: RuleBook):
    """``make(champion=..., challenger=..., anomaly=..., **decision settings)`` -> a Scorer on the shipped rules."""

    def build(champion=None, challenger=None, anomaly=None, **decision) -> Scorer:
        s = tuned(settings, **decision) if decision else settings
        return Scorer(s, models=models(champion, challenger, anomaly), rules=rules)

    return build


ML_FIELDS = ("ml_score", "ml_probability", "model_name", "model_version")
SHADOW_FIELDS = ("shadow_model_version", "shadow_probability", "shadow_decision")


# --------------------------------------------------------------------------------------------------------------
# 1. no models: rules and statistics decide


def test_no_models_rules_and_statistics_decide(settings: Settings):
    scorer = Scorer(settings, models=Models())  # the rules come from decision.rules_file
    txs = [tx(0), tx(1), tx(2, country="KP"), tx(3)]
    vecs = [vector(), vector(card_tx_count_5m=6.0), vector(), vector(card_amount_zscore_30d=20.0)]
    quiet, velocity, kp, outlier = scorer.decide(txs, vecs)

    for row in (quiet, velocity, kp, outlier):
        for f in (*ML_FIELDS, *SHADOW_FIELDS, "anomaly_score", "anomaly_raw", "anomaly_model_version"):
            assert row[f] is None, (row["transaction_id"], f)
        assert row["route"] == CHAMPION
        assert row["rules_version"] == scorer.rules.current.version != ""
    assert scorer.model_errors == 0

    assert quiet["decision"] == "approve"
    assert quiet["triggered_rules"] == [] and quiet["reasons"] == []
    assert quiet["score"] == 0.0

    assert velocity["decision"] in ("review", "block")
    assert "R001" in velocity["triggered_rules"] and "VELOCITY_5M" in velocity["reasons"]
    assert velocity["rules_score"] == 70.0
    stat, worst, _ = statistical.tier(vecs[1], settings.decision)
    assert worst == "velocity_5m" and velocity["statistical_score"] == pytest.approx(stat)
    assert "STAT_VELOCITY_5M" in velocity["reasons"]

    assert kp["decision"] == "block"
    assert kp["triggered_rules"] == ["R004"] and kp["reasons"] == ["BLOCKED_COUNTRY"]

    # no rule fires: a 20-sigma amount blocks on the statistical tier alone (100 x weight 0.8 = 80)
    assert outlier["triggered_rules"] == []
    assert outlier["driver"] == "statistical" and outlier["decision"] == "block"
    assert outlier["reasons"] == ["STAT_AMOUNT_ZSCORE_30D"]


# --------------------------------------------------------------------------------------------------------------
# 2. a champion


def test_champion_probability_sets_the_ml_tier(make, settings: Settings):
    champ = FakeModel("7", [0.95, 0.1], why=("card_tx_count_5m", "amount_log", "is_night", "mcc_risk_score"))
    scorer = make(champion=champ)
    high, low = scorer.decide([tx(0), tx(1)], [vector(), vector()])

    assert high["decision"] == "block" and high["driver"] == "ml"
    assert 80 <= high["ml_score"] <= 100
    assert high["ml_score"] == pytest.approx(90.0)  # halfway between block (0.9 -> 80) and 1.0 -> 100
    assert high["score"] == pytest.approx(90.0)
    assert high["ml_probability"] == pytest.approx(0.95)
    assert (high["model_name"], high["model_version"]) == ("fraud_xgb", "7")
    k = settings.decision.reasons
    assert high["reasons"] == [f"ML_{f.upper()}" for f in champ.why[:k]]
    assert "ML_CARD_TX_COUNT_5M" in high["reasons"]
    assert champ.ks == [k]

    assert low["decision"] == "approve"
    assert low["ml_probability"] == pytest.approx(0.1)
    assert low["ml_score"] == pytest.approx(settings.decision.review_threshold * 0.1 / 0.6)
    assert low["model_version"] == "7"

    # the model saw the model input: every feature in catalogue order, as float64
    (x,) = champ.inputs
    assert list(x.columns) == FEATURES and len(x) == 2
    assert (x.dtypes == "float64").all()
    assert scorer.model_errors == 0


def test_reasons_setting_is_passed_to_the_model(make):
    champ = FakeModel("7", 0.95, why=("amount_log", "is_night", "mcc_risk_score"))
    (row,) = make(champion=champ, reasons=1).decide([tx(0)], [vector()])
    assert champ.ks == [1]
    assert row["reasons"] == ["ML_AMOUNT_LOG"]


def test_champion_without_usable_thresholds_records_the_probability_only(make):
    for thresholds in ({}, {"review": 0.9, "block": 0.6}):
        (row,) = make(champion=FakeModel("7", 0.99, thresholds=thresholds)).decide([tx(0)], [vector()])
        assert row["ml_probability"] == pytest.approx(0.99)
        assert row["ml_score"] is None
        assert row["decision"] == "approve" and row["model_version"] == "7"


def test_anomaly_model_tier(make):
    anomaly = FakeModel("3", [0.2, 0.8], name="fraud_iforest", thresholds={"review": 0.5, "block": 0.7}, why=())
    low, high = make(anomaly=anomaly).decide([tx(0), tx(1)], [vector(), vector()])
    assert (low["anomaly_raw"], high["anomaly_raw"]) == pytest.approx((0.2, 0.8))
    assert low["anomaly_score"] == pytest.approx(50 * 0.2 / 0.5)
    assert high["anomaly_score"] == pytest.approx(80 + 20 * 0.1 / 0.3)
    assert low["decision"] == "approve"
    assert high["driver"] == "anomaly" and high["decision"] == "review"  # 86.7 x weight 0.8 = 69.3
    for row in (low, high):
        assert row["anomaly_model_version"] == "3"
        assert row["ml_probability"] is None and row["model_version"] is None
        assert not any(r.startswith("ML_") for r in row["reasons"])


# --------------------------------------------------------------------------------------------------------------
# 3-5. champion / challenger routing


def test_shadow_routing_scores_both_and_the_champion_acts(make):
    champ = FakeModel("7", 0.1, why=("amount_log",))
    chall = FakeModel("8", 0.95, why=("card_tx_count_5m",))
    scorer = make(champion=champ, challenger=chall)  # decision.routing defaults to shadow
    assert scorer.cfg.routing == "shadow"
    rows = scorer.decide(*batch(50))

    assert len(rows) == 50
    for row in rows:
        assert row["route"] == CHAMPION
        assert row["model_version"] == "7" and row["ml_probability"] == pytest.approx(0.1)
        assert row["decision"] == "approve"
        assert row["shadow_model_version"] == "8"
        assert row["shadow_probability"] == pytest.approx(0.95)
        assert row["shadow_decision"] == "block"
        # an approval carries no model reasons (they are explained for flagged decisions), the shadow's never
        assert not any(r.startswith("ML_") for r in row["reasons"])
    assert len(champ.inputs) == len(chall.inputs) == 1


def test_split_routing_lets_the_challenger_act_for_a_stable_share_of_cards(make):
    champ = FakeModel("7", 0.1, why=("amount_log",))
    chall = FakeModel("8", 0.95, why=("card_tx_count_5m",))
    scorer = make(champion=champ, challenger=chall, routing="split", split_percent=30)
    n = 10_000
    txs, vecs = batch(n)
    first = scorer.decide(txs, vecs)

    routed = [r["route"] for r in first]
    share = routed.count(CHALLENGER) / n
    assert 0.28 <= share <= 0.32, share
    assert routed == [route(t["card_id"], 30) for t in txs]

    # the same cards, in another order and another batch: the same routes
    order = list(range(n))
    random.Random(1).shuffle(order)
    again = scorer.decide([txs[i] for i in order], [vecs[i] for i in order])
    assert [r["route"] for r in again] == [routed[i] for i in order]
    assert [r["transaction_id"] for r in again] == [txs[i]["transaction_id"] for i in order]

    for row in first:
        if row["route"] == CHALLENGER:
            assert (row["model_version"], row["decision"]) == ("8", "block")
            assert row["ml_probability"] == pytest.approx(0.95)
            assert "ML_CARD_TX_COUNT_5M" in row["reasons"] and "ML_AMOUNT_LOG" not in row["reasons"]
            assert (row["shadow_model_version"], row["shadow_decision"]) == ("7", "approve")
            assert row["shadow_probability"] == pytest.approx(0.1)
        else:
            assert (row["model_version"], row["decision"]) == ("7", "approve")
            assert row["ml_probability"] == pytest.approx(0.1)
            assert not any(r.startswith("ML_") for r in row["reasons"])  # approved: no model reasons
            assert (row["shadow_model_version"], row["shadow_decision"]) == ("8", "block")
            assert row["shadow_probability"] == pytest.approx(0.95)


def test_route_is_a_stable_nested_hash_split():
    cards = [f"card-{i:05d}" for i in range(10_000)]
    assert all(route(c, 0) == CHAMPION for c in cards)
    assert all(route(c, 100) == CHALLENGER for c in cards)
    assert [route(c, 30) for c in cards] == [route(c, 30) for c in cards]
    # raising the share only moves cards from the champion to the challenger
    at30 = {c for c in cards if route(c, 30) == CHALLENGER}
    at50 = {c for c in cards if route(c, 50) == CHALLENGER}
    assert at30 < at50
    assert 0.48 <= len(at50) / len(cards) <= 0.52


@pytest.mark.parametrize(("percent", "acting"), [(0, CHAMPION), (100, CHALLENGER)])
def test_split_percent_bounds(make, percent: float, acting: str):
    scorer = make(champion=FakeModel("7", 0.1), challenger=FakeModel("8", 0.95), routing="split", split_percent=percent)
    rows = scorer.decide(*batch(500))
    assert {r["route"] for r in rows} == {acting}
    assert {r["model_version"] for r in rows} == {"7" if acting == CHAMPION else "8"}
    assert {r["shadow_model_version"] for r in rows} == {"8" if acting == CHAMPION else "7"}


@pytest.mark.parametrize(
    ("routing", "challenger_version"),
    [("off", "8"), ("shadow", "7"), ("split", "7")],
    ids=["routing-off", "shadow-same-version", "split-same-version"],
)
def test_no_shadow_when_routing_is_off_or_the_challenger_is_the_champion(make, routing: str, challenger_version: str):
    champ, chall = FakeModel("7", 0.1), FakeModel(challenger_version, 0.95)
    scorer = make(champion=champ, challenger=chall, routing=routing, split_percent=100)
    rows = scorer.decide(*batch(100))
    for row in rows:
        assert row["route"] == CHAMPION
        assert row["model_version"] == "7" and row["ml_probability"] == pytest.approx(0.1)
        assert row["decision"] == "approve"
        for f in SHADOW_FIELDS:
            assert row[f] is None, f
    assert chall.inputs == []  # not scored at all


# --------------------------------------------------------------------------------------------------------------
# 6-7. broken and missing models


def test_a_failing_champion_leaves_its_tier_unscored(make):
    scorer = make(champion=FakeModel("7", 0.95, fail="score"))
    txs = [tx(0), tx(1, country="KP")]
    rows = scorer.decide(txs, [vector(), vector()])
    assert len(rows) == 2
    for row in rows:
        assert row["ml_score"] is None and row["ml_probability"] is None
        assert not any(r.startswith("ML_") for r in row["reasons"])
    assert [r["decision"] for r in rows] == ["approve", "block"]  # the rules still decide
    assert scorer.model_errors == 1
    scorer.decide(txs, [vector(), vector()])
    assert scorer.model_errors == 2


def test_failing_reasons_do_not_break_decide(make):
    # whether the probability is kept without its reasons is the scorer's choice (today the tier is dropped):
    # only what must hold either way is checked
    scorer = make(champion=FakeModel("7", 0.95, fail="reasons"))
    rows = scorer.decide([tx(0), tx(1, country="KP")], [vector(), vector()])
    assert [r["transaction_id"] for r in rows] == ["tx-00000", "tx-00001"]
    assert rows[1]["decision"] == "block"
    assert not any(r.startswith("ML_") for row in rows for r in row["reasons"])
    assert scorer.model_errors == 1


def test_a_failing_challenger_in_shadow_does_not_touch_the_champion(make):
    scorer = make(champion=FakeModel("7", 0.95), challenger=FakeModel("8", 0.1, fail="score"))
    (row,) = scorer.decide([tx(0)], [vector()])
    assert (row["decision"], row["model_version"]) == ("block", "7")
    assert row["ml_probability"] == pytest.approx(0.95)
    assert row["shadow_model_version"] == "8" and row["shadow_probability"] is None
    assert row["shadow_decision"] == "approve"  # the challenger's side without its model tier
    assert scorer.model_errors == 1


def test_a_failing_anomaly_model_leaves_its_tier_unscored(make):
    anomaly = FakeModel("3", 0.8, name="fraud_iforest", thresholds={"review": 0.5, "block": 0.7}, fail="score")
    scorer = make(champion=FakeModel("7", 0.95), anomaly=anomaly)
    (row,) = scorer.decide([tx(0)], [vector()])
    assert row["anomaly_score"] is None and row["anomaly_raw"] is None
    assert row["decision"] == "block" and row["ml_probability"] == pytest.approx(0.95)
    assert scorer.model_errors == 1


def test_unset_aliases_are_missing_models(settings: Settings, rules: RuleBook):
    unset = Models(FakeLoader(None), FakeLoader(None), FakeLoader(None))
    scorer = Scorer(settings, models=unset, rules=rules)
    rows = scorer.decide([tx(0), tx(1, country="KP")], [vector(), vector(card_tx_count_5m=6.0)])
    assert [r["decision"] for r in rows] == ["approve", "block"]
    for row in rows:
        for f in (*ML_FIELDS, *SHADOW_FIELDS, "anomaly_score", "anomaly_raw", "anomaly_model_version"):
            assert row[f] is None, f
    assert scorer.model_errors == 0

    # a champion with no challenger alias yet: no shadow, the champion acts
    only = Scorer(settings, models=Models(FakeLoader(FakeModel("7", 0.95)), FakeLoader(None)), rules=rules)
    (row,) = only.decide([tx(0)], [vector()])
    assert (row["decision"], row["model_version"], row["shadow_model_version"]) == ("block", "7", None)


# --------------------------------------------------------------------------------------------------------------
# 8. the row itself


def test_features_column_order_and_timing(make):
    champ = FakeModel("7", [0.1, 0.2, 0.3, 0.4, 0.5])
    scorer = make(champion=champ)
    ids = [7, 3, 11, 0, 5]
    txs = [tx(i) for i in ids]
    vecs = [
        vector(card_tx_count_1m=float(i), card_amount_zscore_30d=None, card_new_device=i % 2 == 0, feature_version="v1")
        for i in ids
    ]
    vecs[2]["card_prev_speed_kmh"] = None
    rows = scorer.decide(txs, vecs)

    assert [r["transaction_id"] for r in rows] == [t["transaction_id"] for t in txs]
    assert [r["card_id"] for r in rows] == [t["card_id"] for t in txs]
    assert [r["event_time"] for r in rows] == [t["event_time"] for t in txs]
    assert [r["ml_probability"] for r in rows] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    for row, vec in zip(rows, vecs, strict=True):
        features = json.loads(row["features"])
        assert list(features) == FEATURES  # exactly the catalogue, in its order (not feature_version)
        assert features == {f: vec[f] for f in FEATURES}
        assert isinstance(row["scoring_ms"], float) and row["scoring_ms"] >= 0
    assert json.loads(rows[2]["features"])["card_prev_speed_kmh"] is None


def test_empty_input_and_mismatched_lengths(make):
    champ = FakeModel("7", 0.5)
    scorer = make(champion=champ)
    assert scorer.decide([], []) == []
    assert champ.inputs == []
    with pytest.raises(ValueError):
        scorer.decide([tx(0), tx(1)], [vector()])


# --------------------------------------------------------------------------------------------------------------
# 9. rules hot reload


def test_rule_edits_are_seen_by_the_next_decide(settings: Settings, rules_path: Path, tmp_path: Path):
    path = tmp_path / "rules.yaml"
    shutil.copy(rules_path, path)
    book = RuleBook(path, reload_seconds=0)
    scorer = Scorer(settings, models=Models(), rules=book)
    # four in 5 minutes for a card averaging two: below R001 (>= 6), R002 (1h >= 15) and the statistical review
    vec = vector(card_tx_count_30d=17_280.0, card_tx_count_5m=4.0, card_tx_count_1m=0.4, card_tx_count_1h=12.0)
    (before,) = scorer.decide([tx(0)], [vec])
    assert before["decision"] == "approve" and before["triggered_rules"] == []

    text = path.read_text()
    assert "value: 6\n" in text
    path.write_text(text.replace("value: 6\n", "value: 3   # lowered\n", 1))
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a new mtime even on a coarse clock
    os.utime(path, ns=(stamp, stamp))
    (after,) = scorer.decide([tx(0)], [vec])
    assert after["decision"] == "review"
    assert after["triggered_rules"] == ["R001"] and "VELOCITY_5M" in after["reasons"]
    assert after["rules_version"] != before["rules_version"]

    # a broken edit keeps the last good rules
    path.write_text("rules: [")
    os.utime(path, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    (kept,) = scorer.decide([tx(0)], [vec])
    assert kept["decision"] == "review" and kept["rules_version"] == after["rules_version"]
    assert book.errors == 1


def test_split_acts_with_the_model_that_could_score(make):
    """Split routing with a champion that fails: its cards are decided by the challenger, not left unscored;
    a failing challenger leaves every card to the champion."""
    rows = make(champion=FakeModel("7", fail="score"), challenger=FakeModel("8", 0.95), routing="split",
                split_percent=30).decide(*batch(200))  # fmt: skip
    assert {r["route"] for r in rows} == {CHALLENGER} and {r["model_version"] for r in rows} == {"8"}
    assert all(r["decision"] == "block" and "ML_AMOUNT_LOG" in r["reasons"] for r in rows)
    rows = make(champion=FakeModel("7", 0.95), challenger=FakeModel("8", fail="score"), routing="split",
                split_percent=30).decide(*batch(200))  # fmt: skip
    assert {r["route"] for r in rows} == {CHAMPION} and {r["model_version"] for r in rows} == {"7"}
