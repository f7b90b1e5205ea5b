"""The monitoring report on the scored lake (``decided``): ``python -m monitoring report`` as a real process on the
hour of traffic the registered models decided, checked against recomputations from gold.decisions and
silver.transactions; its drift alerts are on risk-alerts once each, even when the report runs again; and the
training day itself, reported on, shows no feature drift (the stream's vectors are the training set's)."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import date

import numpy as np
import pytest
from support import FEATURE_LAKE_START, run_json

from lakehouse import delta, eventlog
from monitoring import alerts, report
from training import registry

SECTIONS = ("volumes", "decisions", "performance", "feature-drift", "score-drift", "rules", "latency", "alerts")


def rows(settings, layer: str, name: str, start: date, end: date) -> list[dict]:
    filters = [("event_date", ">=", start), ("event_date", "<=", end)]
    return delta.read_arrow(settings, settings.table_uri(layer, name), filters=filters).to_pylist()


def ratio(num: int, den: int) -> float | None:
    return num / den if den else None  # the summary's JSON has null for NaN


def same(value, expected) -> bool:
    if expected is None or value is None:
        return value is None and expected is None
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


def drift_events(settings) -> list[dict]:
    log = eventlog.from_settings(settings)
    topic = settings.eventlog.topics.risk_alerts.name
    try:
        events = [json.loads(r.value) for p, end in log.end_offsets(topic).items() for r in log.read(topic, p, 0, end)]
    finally:
        log.close()
    return [e for e in events if e["kind"] == "drift"]


@pytest.fixture(scope="module")
def reported(decided, tmp_path_factory):
    """The report of the decided hour's event dates, by the CLI: (settings, env, summary, start, end, out)."""
    settings, env, _, start = decided
    dates = {r["event_date"] for r in delta.read_arrow(settings, settings.table_uri("gold", "decisions"),
                                                       columns=["event_date"]).to_pylist()}  # fmt: skip
    first, end = start.date(), max(dates)
    out = tmp_path_factory.mktemp("monitoring") / "report"
    printed = run_json(env, "-m", "monitoring", "report", "--from", str(first), "--to", str(end), "--out", str(out))
    assert printed["gaps"] == {}  # the CLI exits 1 otherwise: every section was computed
    summary = json.loads((out / "summary.json").read_text())
    return settings, env, summary, first, end, out


def test_the_report_has_every_section_and_plot(reported):
    settings, _, summary, _, _, out = reported
    page = (out / "report.html").read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert "Not available" not in page
    name = settings.models.supervised_name
    champion = registry.alias_version(registry.client(settings), name, registry.CHAMPION)
    assert summary["drift_reference"].startswith(f"{name} v{champion}: ")
    versions = {(r["model_name"], r["model_version"]) for r in summary["score_drift"]}
    assert (settings.models.unsupervised_name, "1") in versions and any(n == name for n, _ in versions)
    expected = {"daily.png", "feature_psi.png"} | {f"scores_{n}_v{v}.png" for n, v in versions}
    assert {p.split("/")[-1] for p in summary["plots"]} == expected
    assert all((out / p).stat().st_size > 5000 for p in expected)
    assert page.count("data:image/png;base64,") == len(expected)
    assert all(r["status"] != "no data" and r["reference_rows"] > 1000 for r in summary["score_drift"])


def test_the_figures_are_the_tables(reported):
    settings, _, summary, start, end, _ = reported
    decisions = rows(settings, "gold", "decisions", start, end)
    labels = {r["transaction_id"]: r["label"] for r in rows(settings, "silver", "transactions", start, end)}
    fraud = {t for t, label in labels.items() if label == "fraud"}
    assert summary["transactions"] == len(decisions) > 100
    counts = Counter(d["decision"] for d in decisions)
    assert {r["decision"]: r["count"] for r in summary["decision_rates"]} == {
        d: counts.get(d, 0) for d in ("approve", "review", "block")
    }
    assert sum(r["transactions"] for r in summary["daily"]) == len(decisions)
    assert sum(r["fraud_count"] for r in summary["daily"]) == sum(d["transaction_id"] in fraud for d in decisions)
    perf = {(r["model_name"], r["model_version"], r["role"], r["outcome"]): r for r in summary["performance"]}
    for key in {(d["model_name"], d["model_version"]) for d in decisions if d["model_version"]}:
        mine = [d for d in decisions if (d["model_name"], d["model_version"]) == key]
        frauds = {d["transaction_id"] for d in mine} & fraud
        for outcome, flags in (("block", {"block"}), ("review_or_block", {"review", "block"})):
            flagged = {d["transaction_id"] for d in mine if d["decision"] in flags}
            got = perf[(*key, "acting", outcome)]
            assert got["transactions"] == len(mine) and got["flagged"] == len(flagged)
            assert same(got["precision"], ratio(len(flagged & frauds), len(flagged))), (key, outcome)
            assert same(got["recall"], ratio(len(flagged & frauds), len(frauds))), (key, outcome)
    fired = Counter(r for d in decisions for r in d["triggered_rules"] or [])
    top = summary["top_rules"]
    assert [r["fired"] for r in top] == sorted(fired.values(), reverse=True)[: len(top)]
    assert all(fired[r["rule"]] == r["fired"] for r in top)
    latency = {r["measure"]: r for r in summary["latency"]}
    assert latency["scoring_ms"]["p50"] == pytest.approx(np.percentile([d["scoring_ms"] for d in decisions], 50))
    assert latency["log_to_decision_ms"]["p99"] == pytest.approx(
        np.percentile([d["latency_ms"] for d in decisions], 99)
    )


def test_drift_alerts_are_raised_once_with_their_metrics(reported):
    settings, env, summary, start, end, out = reported
    # the decided hour's traffic (seed 9) is a population of its own: no card or merchant of the training day, so
    # their 24h..30d windows start from nothing, and ~4x the training day's hourly volume: both kinds drifted
    assert summary["alerts"], summary["feature_drift"][:3]
    alerting = {r["feature"] for r in summary["feature_drift"] if r["status"] == "alert"}
    assert {"card_tx_count_24h", "merchant_tx_count_30d", "card_tx_count_15m"} <= alerting, summary["feature_drift"]
    alerting |= {f"{r['model_name']}/{r['model_version']}" for r in summary["score_drift"] if r["status"] == "alert"}
    assert {e.get("feature") or f"{e['model_name']}/{e['model_version']}" for e in summary["alerts"]} == alerting
    ids = [e["id"] for e in drift_events(settings)]
    assert sorted(ids) == sorted(summary["alerts_sent"]) == sorted(e["id"] for e in summary["alerts"])
    again = run_json(env, "-m", "monitoring", "report", "--from", str(start), "--to", str(end), "--out", str(out))
    assert again["alerts_sent"] == []
    assert [e["id"] for e in drift_events(settings)] == ids
    text = alerts.metrics_path(settings).read_text()
    assert sum(alerts.previous_alerts(text).values()) == len(ids)
    for r in summary["feature_drift"]:
        assert f'fraud_feature_psi{{feature="{r["feature"]}"}}' in text


def test_the_training_day_shows_no_feature_drift(decided, tmp_path):
    settings, _, _, _ = decided
    day = FEATURE_LAKE_START.date()
    summary = report.build(settings, day, day, tmp_path, raise_alerts=False)
    assert "feature-drift" not in summary["gaps"]
    psi = {r["feature"]: r["psi"] for r in summary["feature_drift"]}
    assert len(psi) > 40 and max(psi.values()) < 0.01, sorted(psi.items(), key=lambda kv: -kv[1])[:3]
