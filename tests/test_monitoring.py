"""The monitoring report without services: PSI, the period's figures, drift alerts and metrics, the HTML page, and
the whole report on small Delta tables written here (the registry replaced by a stand-in model)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.catalog import DECISIONS_TABLE, TRANSACTIONS
from lakehouse.config import Settings
from lakehouse.tables import conform
from monitoring import alerts, html, psi, report, sources, stats
from serving.pinned import send_once
from training.dataset import FEATURES

EPS = 1e-4


# --- PSI ---------------------------------------------------------------------------------------------------------


def test_psi_by_hand():
    # reference median 1.5: bins (<1.5) and (>=1.5) hold 1/2 each; the period puts 3/4 below and 1/4 above
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi.psi([0, 1, 2, 3], [0, 0, 0, 5], bins=2, epsilon=EPS) == pytest.approx(expected)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_psi_deciles_of_the_reference():
    ref = np.arange(100, dtype=float)
    assert psi.bin_edges(ref, 10) == pytest.approx(np.quantile(ref, np.linspace(0.1, 0.9, 9)))
    assert psi.shares(ref, psi.bin_edges(ref, 10)) == pytest.approx([0.1] * 10 + [0.0])


def test_identical_distributions_have_psi_about_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=20_000)
    assert psi.psi(a, a) == pytest.approx(0.0, abs=1e-12)
    assert psi.psi(a, rng.normal(size=20_000)) < 0.01


def test_a_shifted_distribution_is_over_the_alert_threshold():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    assert psi.psi(a, b + 1.0) > 0.25
    assert 0.05 < psi.psi(a, b + 0.3) < 0.25
    assert psi.status(psi.psi(a, b + 1.0), 0.1, 0.25) == psi.ALERT


def test_nan_is_a_bin_of_its_own():
    ref, cur = [1.0, 2.0, np.nan, np.nan], [1.0, 2.0, 2.0, 2.0]
    edges = psi.bin_edges(ref, 2)
    assert edges == pytest.approx([1.5])
    assert psi.shares(ref, edges) == pytest.approx([0.25, 0.25, 0.5])
    # bins: [0.25 vs 0.25], [0.25 vs 0.75], NaN [0.5 vs 0 -> epsilon]
    expected = (0.75 - 0.25) * math.log(0.75 / 0.25) + (EPS - 0.5) * math.log(EPS / 0.5)
    assert psi.psi(ref, cur, bins=2, epsilon=EPS) == pytest.approx(expected)
    # only the share of unknowns moved: still drift
    assert psi.psi([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, np.nan, np.nan], bins=2) > 0.25


def test_constant_feature():
    edges = psi.bin_edges(np.full(50, 5.0), 10)
    assert psi.shares([4.0, 5.0, 6.0], edges) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert psi.psi(np.full(50, 5.0), np.full(20, 5.0)) == pytest.approx(0.0)
    assert psi.psi(np.full(50, 5.0), np.full(20, 6.0)) > 0.25  # above the constant: its own bin
    assert psi.psi(np.full(50, 5.0), np.full(20, 4.0)) > 0.25  # below it too
    assert psi.psi(np.full(50, np.nan), np.full(20, np.nan)) == pytest.approx(0.0)  # never known, still unknown


def test_no_data_and_status_boundaries():
    assert math.isnan(psi.psi([1.0, 2.0], []))
    assert psi.status(float("nan"), 0.1, 0.25) == psi.NO_DATA
    assert [psi.status(v, 0.1, 0.25) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "ok", "ok", "warn", "warn", "alert", "alert"
    ]  # fmt: skip


def test_feature_drift_flags_the_features_that_moved():
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"stable": rng.normal(size=5000), "moved": rng.normal(size=5000), "flag": 0.0})
    cur = pd.DataFrame({"stable": rng.normal(size=5000), "moved": rng.normal(2, 1, 5000), "flag": 1.0})
    out = psi.feature_drift(ref, cur, ["stable", "moved", "flag", "absent"], warn=0.1, alert=0.25)
    status = dict(zip(out["feature"], out["status"], strict=True))
    assert status == {"stable": "ok", "moved": "alert", "flag": "alert", "absent": "ok"}
    assert list(out["feature"][:2]) == sorted(["moved", "flag"], key=lambda f: -out.set_index("feature").psi[f])
    assert out.set_index("feature").loc["absent", "reference_nan_share"] == 1.0


# --- figures of a period -----------------------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)


def decisions_frame() -> pd.DataFrame:
    """Eight decisions over two days: v1 acting with v2 in shadow, then one without a model."""
    rows = [
        # id, day, decision, version, shadow version, shadow decision, prob, rules
        ("t1", 0, "block", "1", "2", "block", 0.9, ["R001", "R003"]),
        ("t2", 0, "review", "1", "2", "approve", 0.5, ["R001"]),
        ("t3", 0, "approve", "1", "2", "review", 0.1, []),
        ("t4", 0, "approve", "1", "2", "approve", 0.05, []),
        ("t5", 1, "block", "1", "2", "block", 0.95, ["R003"]),
        ("t6", 1, "approve", "1", "2", "approve", 0.02, []),
        ("t7", 1, "review", "1", "2", "review", 0.6, ["R001"]),
        ("t8", 1, "approve", None, None, None, None, []),
    ]
    out = []
    for i, (tid, day, decision, version, sv, sd, p, rules) in enumerate(rows):
        t = T0 + timedelta(days=day, minutes=i)
        out.append({
            "transaction_id": tid, "card_id": f"c{i % 3}", "event_time": t, "event_date": t.date(),
            "decision": decision, "score": 0.0, "model_name": "xgb" if version else None, "model_version": version,
            "shadow_model_version": sv, "shadow_decision": sd, "ml_probability": p,
            "shadow_probability": None if p is None else p / 2, "anomaly_model_version": "3" if version else None,
            "anomaly_raw": 0.4 if version else None, "triggered_rules": rules, "scoring_ms": float(i + 1),
            "latency_ms": 10.0 * (i + 1), "decided_at": t + timedelta(seconds=i + 1),
        })  # fmt: skip
    return pd.DataFrame(out)


def labels_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"],
            "label": ["fraud", "genuine", "fraud", None, None, None, "fraud", None],
            "amount": [100.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0],
        }
    )


@pytest.fixture
def frame() -> pd.DataFrame:
    return stats.with_labels(decisions_frame(), labels_frame())


def test_daily_volumes_fraud_and_decision_rates(frame):
    d = stats.daily(frame).set_index("event_date")
    day1, day2 = T0.date(), T0.date() + timedelta(days=1)
    assert d.loc[day1, ["transactions", "fraud_count", "labelled_count"]].tolist() == [4, 2, 3]
    assert d.loc[day2, ["transactions", "fraud_count", "labelled_count"]].tolist() == [4, 1, 1]
    assert d.loc[day1, "amount"] == 190.0 and d.loc[day1, "fraud_rate"] == 0.5
    assert d.loc[day2, ["approve_count", "review_count", "block_count"]].tolist() == [2, 1, 1]
    assert d.loc[day2, "block_rate"] == 0.25


def test_decision_rates(frame):
    r = stats.decision_rates(frame).set_index("decision")
    assert r["count"].to_dict() == {"approve": 4, "review": 2, "block": 2}
    assert r["rate"].to_dict() == {"approve": 0.5, "review": 0.25, "block": 0.25}
    assert r["fraud_count"].to_dict() == {"approve": 1, "review": 1, "block": 1}


def test_precision_and_recall_per_model_version_and_outcome(frame):
    p = stats.performance(frame).set_index(["model_version", "role", "outcome"])
    # v1 acting on t1..t7: frauds t1, t3, t7; blocks t1, t5; review-or-block t1, t2, t5, t7
    assert p.loc[("1", "acting", "block"), ["transactions", "fraud_count", "flagged", "true_positives"]].tolist() == [
        7, 3, 2, 1
    ]  # fmt: skip
    assert p.loc[("1", "acting", "block"), "precision"] == 0.5
    assert p.loc[("1", "acting", "block"), "recall"] == pytest.approx(1 / 3)
    assert p.loc[("1", "acting", "review_or_block"), "precision"] == 0.5  # t1, t7 of four
    assert p.loc[("1", "acting", "review_or_block"), "recall"] == pytest.approx(2 / 3)
    # v2 in shadow: blocks t1, t5; review-or-block t1, t3, t5, t7 -> all three frauds
    assert p.loc[("2", "shadow", "review_or_block"), "recall"] == 1.0
    assert p.loc[("2", "shadow", "review_or_block"), "precision"] == 0.75
    none = p.loc[("", "acting", "block")]
    assert none["transactions"] == 1 and math.isnan(none["precision"]) and math.isnan(none["recall"])
    assert set(stats.performance(frame)["model_name"]) == {"xgb", stats.NO_MODEL}


def test_top_rules(frame):
    r = stats.top_rules(frame, 5)
    assert r["rule"].tolist() == ["R001", "R003"]
    assert r.set_index("rule")["fired"].to_dict() == {"R001": 3, "R003": 2}
    assert r.set_index("rule")["fraud_share"].to_dict() == {"R001": pytest.approx(2 / 3), "R003": 0.5}
    assert stats.top_rules(frame, 1)["rule"].tolist() == ["R001"]
    assert stats.top_rules(frame.assign(triggered_rules=[[]] * len(frame)), 5).empty


def test_latency_percentiles(frame):
    lat = stats.latency(frame, [50.0, 99.0]).set_index("measure")
    assert lat.loc["scoring_ms", "p50"] == pytest.approx(4.5)
    assert lat.loc["scoring_ms", "max"] == 8.0
    assert lat.loc["log_to_decision_ms", "p99"] == pytest.approx(np.percentile(np.arange(10, 90, 10), 99))
    assert lat.loc["event_to_decision_ms", "mean"] == pytest.approx(4500.0)
    assert lat["count"].tolist() == [8, 8, 8]


def test_version_scores(frame):
    s = stats.version_scores(frame, "iforest")
    counts = s.groupby(["model_name", "model_version"]).size().to_dict()
    assert counts == {("xgb", "1"): 7, ("xgb", "2"): 7, ("iforest", "3"): 7}
    assert s[s.model_version == "2"]["score"].sum() == pytest.approx(frame["ml_probability"].sum() / 2)


# --- alerts and metrics ------------------------------------------------------------------------------------------

FEATURES_PSI = pd.DataFrame({"feature": ["a", "b", "c"], "psi": [0.4, 0.12, np.nan],
                             "status": ["alert", "warn", "no data"]})  # fmt: skip
SCORES_PSI = pd.DataFrame({"model_name": ["xgb", "xgb"], "model_version": ["1", "2"], "psi": [0.3, 0.01],
                           "status": ["alert", "ok"]})  # fmt: skip
D1, D2 = date(2026, 3, 1), date(2026, 3, 7)


def test_only_the_subjects_over_the_alert_threshold_raise_an_alert():
    events = alerts.drift_events(FEATURES_PSI, SCORES_PSI, D1, D2, 0.25)
    assert [e["id"] for e in events] == ["drift/2026-03-01..2026-03-07/feature/a",
                                         "drift/2026-03-01..2026-03-07/score/xgb/1"]  # fmt: skip
    assert all(e["kind"] == "drift" for e in events)
    assert events[0]["psi"] == 0.4 and events[1]["model_version"] == "1"
    assert alerts.drift_events(FEATURES_PSI, SCORES_PSI, D1, D2, 0.25) == events  # deterministic


class FakeRedis:
    """``SET NX`` through a pipeline, as ``send_once`` uses it."""

    def __init__(self):
        self.keys: dict[str, int] = {}
        self.ops: list[str] = []

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        return self

    def set(self, key: str, value: int, nx: bool, ex: int) -> None:
        assert nx and ex > 0
        self.ops.append(key)

    def execute(self) -> list[bool]:
        out = []
        for key in self.ops:
            out.append(key not in self.keys)
            self.keys[key] = 1
        self.ops = []
        return out


class FakeLog:
    def __init__(self):
        self.produced: list[tuple[str, str, bytes]] = []

    def produce_batch(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        self.produced += [(topic, k, v) for k, v in records]


def test_an_alert_is_raised_once_per_period_and_subject():
    r, log = FakeRedis(), FakeLog()

    def send(events: list[dict]) -> list:
        return send_once(r, log, alerts.as_alerts(events, "fl", "risk-alerts", 1), ttl_s=60)

    events = alerts.drift_events(FEATURES_PSI, SCORES_PSI, D1, D2, 0.25)
    assert len(send(events)) == 2
    assert send(events) == []  # the same report again
    assert [(t, k) for t, k, _ in log.produced] == [("risk-alerts", "a"), ("risk-alerts", "xgb")]
    assert json.loads(log.produced[0][2]) == {**events[0], "at": 1}
    assert set(r.keys) == {f"fl:{e['id']}" for e in events}
    later = alerts.drift_events(FEATURES_PSI, SCORES_PSI, D2, D2 + timedelta(days=6), 0.25)
    assert len(send(later)) == 2  # another period alerts again


def test_metrics_text():
    text = alerts.metrics_text(FEATURES_PSI, SCORES_PSI, {"feature": 3.0}, D2)
    assert 'fraud_feature_psi{feature="a"} 0.4' in text
    assert 'fraud_feature_psi{feature="b"} 0.12' in text
    assert 'feature="c"' not in text  # no data, no sample
    assert 'fraud_score_psi{model_name="xgb",model_version="1"} 0.3' in text
    assert 'fraud_drift_alerts_total{subject="feature"} 3.0' in text
    assert 'fraud_drift_alerts_total{subject="score"} 0.0' in text
    assert alerts.previous_alerts(text) == {"feature": 3.0, "score": 0.0}


def test_the_alert_counter_adds_up_across_reports(tmp_path):
    settings = Settings(state_dir=str(tmp_path))
    events = alerts.drift_events(FEATURES_PSI, SCORES_PSI, D1, D2, 0.25)
    path = alerts.write_metrics(settings, FEATURES_PSI, SCORES_PSI, events, D2)
    assert path == tmp_path / "metrics" / "monitoring.prom"
    alerts.write_metrics(settings, FEATURES_PSI, SCORES_PSI, events[:1], D2)
    assert alerts.previous_alerts(path.read_text()) == {"feature": 2.0, "score": 1.0}


# --- HTML --------------------------------------------------------------------------------------------------------


def test_html_sections_plots_and_escaping(tmp_path):
    png = report.plots.psi_plot(FEATURES_PSI, 0.1, 0.25, tmp_path / "p.png")
    sections = [
        html.Section("feature-drift", "Drift <b>", "a & b", [("caption", FEATURES_PSI.assign(feature="<script>x"))],
                     [png]),
        html.Section("rules", "Rules", gap="registry <down>"),
    ]  # fmt: skip
    page = html.render("Report <1>", {"period": "a<b"}, sections)
    (tmp_path / "r.html").write_text(page)
    assert (tmp_path / "r.html").stat().st_size > 1000
    assert '<section id="feature-drift">' in page and '<section id="rules">' in page
    assert "<script>" not in page and "&lt;script&gt;x" in page
    assert "Drift &lt;b&gt;" in page and "a &amp; b" in page and "a&lt;b" in page and "registry &lt;down&gt;" in page
    assert page.count('src="data:image/png;base64,') == 1 and 'alt="p.png"' in page
    assert "0.4000" in page


# --- the whole report on small tables ----------------------------------------------------------------------------


@dataclass
class StandIn:
    """A registered version's stand-in: scores are the first feature, squashed into (0, 1)."""

    name: str
    version: str
    thresholds: dict

    def score(self, rows: pd.DataFrame) -> pd.Series:
        return pd.Series(1 / (1 + np.exp(-rows[FEATURES[0]].fillna(0).to_numpy())))


def complete(table: pa.Table, spec) -> pa.Table:
    """``table`` with every column of ``spec`` (the missing ones null), as the jobs write it."""
    for f in spec.schema:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return conform(table, spec)


def write_lake(settings: Settings, n: int = 400) -> tuple[pd.DataFrame, pd.DataFrame]:
    """gold.decisions and silver.transactions over two days: the first feature shifted by 3 against the
    reference (drift), the others as in training."""
    rng = np.random.default_rng(4)
    offsets = zip(rng.integers(0, 2, n).tolist(), rng.integers(0, 3600, n).tolist(), strict=True)
    days = [T0 + timedelta(days=d, seconds=s) for d, s in offsets]
    vectors = [{f: float(rng.normal(3.0 if f == FEATURES[0] else 0.0)) for f in FEATURES} for _ in range(n)]
    decision = rng.choice(["approve", "review", "block"], n, p=[0.8, 0.15, 0.05])
    label = rng.choice(["fraud", "genuine", None], n, p=[0.1, 0.1, 0.8])
    prob = [float(1 / (1 + np.exp(-v[FEATURES[0]]))) for v in vectors]
    ids = [f"t{i}" for i in range(n)]
    dec = pa.table({
        "transaction_id": ids, "card_id": [f"c{i % 7}" for i in range(n)], "decision": decision.tolist(),
        "score": rng.uniform(0, 100, n), "ml_probability": prob, "model_name": ["xgb"] * n, "model_version": ["1"] * n,
        "triggered_rules": [["R001"] if d == "review" else ["R009<x>"] if d == "block" else [] for d in decision],
        "features": [json.dumps(v) for v in vectors], "scoring_ms": rng.uniform(0.5, 3, n),
        "decided_at": pa.array([t + timedelta(seconds=2) for t in days], pa.timestamp("us", tz="UTC")),
        "latency_ms": rng.uniform(100, 900, n), "event_date": pa.array([t.date() for t in days], pa.date32()),
    })  # fmt: skip
    dec = conform(dec, DECISIONS_TABLE, event_time=pa.array(days, pa.timestamp("us", tz="UTC")))
    write_deltalake(DECISIONS_TABLE.uri(settings), complete(dec, DECISIONS_TABLE), partition_by=["event_date"])
    tx = pa.table({"transaction_id": ids, "label": label.tolist(), "amount": rng.uniform(1, 500, n),
                   "event_date": pa.array([t.date() for t in days], pa.date32())})  # fmt: skip
    write_deltalake(TRANSACTIONS.uri(settings), complete(tx, TRANSACTIONS), partition_by=["event_date"])
    return dec.to_pandas(), tx.to_pandas()


def test_the_report_on_small_tables(tmp_path, monkeypatch):
    settings = Settings(state_dir=str(tmp_path / "state"), lakehouse={"root": str(tmp_path / "lake")})
    dec, tx = write_lake(settings)
    rng = np.random.default_rng(5)
    reference = pd.DataFrame(rng.normal(size=(3000, len(FEATURES))), columns=FEATURES)
    model = StandIn("xgb", "1", {"review": 0.6, "block": 0.9})
    version = sources.ModelVersion(model, date(2026, 2, 20), date(2026, 2, 26), "/nowhere", 3)
    sent = []
    monkeypatch.setattr(report.registry, "client", lambda s: object())
    monkeypatch.setattr(sources, "champion", lambda s, mc: version)
    monkeypatch.setattr(sources, "model_version", lambda s, mc, name, v: version)
    monkeypatch.setattr(sources.References, "rows", lambda self, mv: reference)
    monkeypatch.setattr(alerts, "publish_to_log", lambda s, events: sent.extend(events) or events)

    start, end = T0.date(), T0.date() + timedelta(days=1)
    assert sources.default_period(settings, 7) == (end - timedelta(days=6), end)
    summary = report.build(settings, start, end, tmp_path / "out")

    page = (tmp_path / "out" / "report.html").read_text()
    for sid in ("volumes", "decisions", "performance", "feature-drift", "score-drift", "rules", "latency", "alerts"):
        assert f'<section id="{sid}">' in page
    assert "Not available" not in page and summary["gaps"] == {}
    assert page.count("data:image/png;base64,") == 3  # daily, feature PSI, the version's scores
    assert all((tmp_path / "out" / p).exists() for p in ("daily.png", "feature_psi.png", "scores_xgb_v1.png"))
    assert "R009&lt;x&gt;" in page and "R009<x>" not in page
    assert summary["transactions"] == len(dec)
    # the figures are the tables' own
    rates = {r["decision"]: r["count"] for r in summary["decision_rates"]}
    assert rates == dec["decision"].value_counts().to_dict()
    frauds = set(tx.loc[tx["label"] == "fraud", "transaction_id"])
    blocked = set(dec.loc[dec["decision"] == "block", "transaction_id"])
    perf = {(r["model_version"], r["role"], r["outcome"]): r for r in summary["performance"]}
    assert perf[("1", "acting", "block")]["precision"] == pytest.approx(len(blocked & frauds) / len(blocked))
    assert perf[("1", "acting", "block")]["recall"] == pytest.approx(len(blocked & frauds) / len(frauds))
    # drift: only the shifted feature, and the score that depends on it
    drift = {r["feature"]: r["status"] for r in summary["feature_drift"]}
    assert drift[FEATURES[0]] == "alert"
    assert [f for f, s in drift.items() if s == "alert"] == [FEATURES[0]]
    assert summary["score_drift"][0]["status"] == "alert"
    assert [e["id"] for e in sent] == summary["alerts_sent"] == [
        f"drift/{start}..{end}/feature/{FEATURES[0]}", f"drift/{start}..{end}/score/xgb/1"
    ]  # fmt: skip
    text = (tmp_path / "state" / "metrics" / "monitoring.prom").read_text()
    assert f'fraud_feature_psi{{feature="{FEATURES[0]}"}}' in text
    assert 'fraud_drift_alerts_total{subject="score"} 1.0' in text


def test_sample_keeps_about_n_rows_reproducibly(tmp_path):
    import pyarrow.dataset as ds

    table = pa.table({"x": np.arange(10_000), "event_date": pa.array([date(2026, 3, 1)] * 10_000, pa.date32())})
    dataset = ds.dataset(table)
    where = ds.field("x") >= 0
    a = sources.sample(dataset, ["x"], where, 1000, seed=1)
    assert 800 < a.num_rows < 1200 and a.column_names == ["x"]
    assert a.equals(sources.sample(dataset, ["x"], where, 1000, seed=1))
    assert sources.sample(dataset, ["x"], where, 50_000, seed=1).num_rows == 10_000
    assert sources.sample(dataset, ["x"], ds.field("x") < 0, 10, seed=1).num_rows == 0


class FakeClient:
    """The two MLflow client calls ``training_table`` makes: a version's run, nested in its training run."""

    def __init__(self, parent_params: dict):
        self.runs = {
            "child": SimpleNamespace(data=SimpleNamespace(tags={"mlflow.parentRunId": "parent"}, params={})),
            "parent": SimpleNamespace(data=SimpleNamespace(tags={}, params=parent_params)),
        }

    def get_model_version(self, name: str, version: str):
        return SimpleNamespace(run_id="child")

    def get_run(self, run_id: str):
        return self.runs[run_id]


def test_the_training_table_and_version_of_a_registered_version():
    mc = FakeClient({"train_table": "s3://lake/features/training_set@v12"})
    assert sources.training_table(mc, "xgb", "3", "default") == ("s3://lake/features/training_set", 12)
    assert sources.training_table(FakeClient({}), "xgb", "3", "default") == ("default", None)


def test_without_a_registered_model_the_report_says_why(tmp_path, monkeypatch):
    settings = Settings(state_dir=str(tmp_path / "state"), lakehouse={"root": str(tmp_path / "lake")})
    write_lake(settings, n=50)

    def unset(*args):
        raise LookupError("models:/xgb@champion is not set")

    monkeypatch.setattr(report.registry, "client", lambda s: object())
    monkeypatch.setattr(sources, "champion", unset)
    monkeypatch.setattr(sources, "model_version", unset)
    monkeypatch.setattr(alerts, "publish_to_log", lambda s, events: pytest.fail("no drift, no alert"))
    summary = report.build(settings, T0.date(), T0.date() + timedelta(days=1), tmp_path / "out")
    assert set(summary["gaps"]) == {"feature-drift", "score-drift"}
    assert summary["feature_drift"] == [] and summary["alerts"] == []
    assert [r["status"] for r in summary["score_drift"]] == ["no data"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("Not available: ") == 2 and "models:/xgb@champion is not set" in page
    assert summary["transactions"] == 50 and page.count("data:image/png;base64,") == 1
    assert "fraud_feature_psi{" not in (tmp_path / "state" / "metrics" / "monitoring.prom").read_text()


def test_the_reference_is_the_training_period_of_the_recorded_table_version(tmp_path):
    from lakehouse.catalog import TRAINING_SET

    settings = Settings(lakehouse={"root": str(tmp_path / "lake")})
    uri = TRAINING_SET.uri(settings)

    def write(day: date, value: float, mode: str) -> None:
        t = pa.table({f: [value] * 30 for f in FEATURES} | {"event_date": pa.array([day] * 30, pa.date32())})
        write_deltalake(uri, complete(t, TRAINING_SET), partition_by=["event_date"], mode=mode)

    write(date(2026, 3, 1), 1.0, "overwrite")  # v0: the day the model trained on
    write(date(2026, 3, 2), 2.0, "append")  # v1: another day
    write(date(2026, 3, 1), 3.0, "overwrite")  # v2: the training day rebuilt since
    refs = sources.References(settings)

    def reference(version: int | None) -> pd.DataFrame:
        mv = sources.ModelVersion(StandIn("xgb", "1", {}), date(2026, 3, 1), date(2026, 3, 1), uri, version)
        return refs.rows(mv)

    assert reference(1)[FEATURES[0]].tolist() == [1.0] * 30  # time travel to what training read
    assert set(reference(None)[FEATURES[0]]) == {3.0}  # not recorded: the newest version
    assert set(reference(42)[FEATURES[0]]) == {3.0}  # gone: the newest version too
    assert list(reference(1).columns) == FEATURES
