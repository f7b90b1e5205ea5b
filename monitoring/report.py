"""``python -m monitoring report``: the model and data monitoring report of a period of gold.decisions.

Reads the period's decisions and silver labels, computes the figures (``monitoring.stats``), the feature drift
against the champion's training period and each model version's score drift against its own training period
(``monitoring.psi``), draws the plots, raises the drift alerts and writes the metrics (``monitoring.alerts``),
then writes ``report.html`` (self-contained), the PNGs and ``summary.json`` to the output directory.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse.config import Settings
from monitoring import alerts, plots, psi, sources, stats
from monitoring.html import Section, render
from training import registry
from training.report import progress

FEATURE_DRIFT_COLUMNS = ["feature", "psi", "status", "reference_nan_share", "period_nan_share", "reference_mean",
                         "period_mean"]  # fmt: skip
SCORE_DRIFT_COLUMNS = ["model_name", "model_version", "reference", "reference_rows", "period_rows", "psi", "status"]


def default_out(settings: Settings, start: date, end: date) -> Path:
    return settings.path(settings.models.reports_dir) / "monitoring" / f"{start}_{end}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def feature_drift(
    settings: Settings, champion: sources.ModelVersion, refs: sources.References, start: date, end: date
) -> pd.DataFrame:
    """PSI of every feature of the champion: the period's scored vectors against its training period's."""
    m = settings.monitoring
    progress(f"feature drift: reference {champion.label}, {champion.reference}")
    reference = refs.rows(champion)
    current = sources.period_features(settings, start, end, champion.features)
    progress(f"feature drift: {len(reference)} reference vectors, {len(current)} of the period")
    return psi.feature_drift(reference, current, champion.features, bins=m.psi_bins, epsilon=m.psi_epsilon,
                             warn=m.psi_warn, alert=m.psi_alert)  # fmt: skip


def score_drift(
    settings: Settings, mc, refs: sources.References, scores: pd.DataFrame, out: Path
) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Per model version scoring in the period: PSI of its scores against its scores on a sample of its own
    training period (scored now with the registered version); the distribution plots; the versions it failed
    for and why."""
    m = settings.monitoring
    rows, images, gaps = [], [], []
    for (name, version), g in scores.groupby(["model_name", "model_version"], sort=True):
        period = g["score"].to_numpy(dtype="float64")
        try:
            mv = sources.model_version(settings, mc, name, version)
            progress(f"score drift: scoring {mv.label}'s training period {mv.train_start}..{mv.train_end}")
            reference = mv.model.score(refs.rows(mv)).to_numpy(dtype="float64")
        except Exception as exc:
            gaps.append(f"{name} v{version}: {exc}")
            rows.append([name, version, "-", 0, len(period), np.nan, psi.NO_DATA])
            continue
        value = psi.psi(reference, period, m.psi_bins, m.psi_epsilon)
        rows.append([name, version, mv.reference, len(reference), len(period), value,
                     psi.status(value, m.psi_warn, m.psi_alert)])  # fmt: skip
        path = out / f"scores_{_safe(name)}_v{_safe(str(version))}.png"
        title = f"{name} v{version}: scores (PSI {value:.3f})"
        images.append(plots.score_plot(reference, period, mv.model.thresholds, title, path))
    return pd.DataFrame(rows, columns=SCORE_DRIFT_COLUMNS), images, gaps


def drift(
    settings: Settings, frame: pd.DataFrame, start: date, end: date, out: Path
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path], str, dict[str, str]]:
    """Feature drift against the champion's training period and score drift per model version: the two tables,
    the score plots, the reference's description, and why a part could not be computed (by section id)."""
    gaps: dict[str, str] = {}
    features = pd.DataFrame(columns=FEATURE_DRIFT_COLUMNS)
    mc, refs, reference = registry.client(settings), sources.References(settings), "-"
    try:
        champion = sources.champion(settings, mc)
        features = feature_drift(settings, champion, refs, start, end)
        reference = f"{champion.label}: {champion.reference}"
    except Exception as exc:  # no champion yet, the registry down, the training vectors gone: say so
        gaps["feature-drift"] = str(exc)
    progress("score drift: the period's model versions")
    scores = stats.version_scores(frame, settings.models.unsupervised_name)
    score_table, images, failed = score_drift(settings, mc, refs, scores, out)
    if failed:
        gaps["score-drift"] = "; ".join(failed)
    return features, score_table, images, reference, gaps


def _alert_table(events: list[dict], sent: list[dict], raised: bool) -> pd.DataFrame:
    sent_ids = {e["id"] for e in sent}
    rows = [
        {
            "subject": e["subject"],
            "name": e.get("feature") or f"{e['model_name']} v{e['model_version']}",
            "psi": e["psi"],
            "threshold": e["threshold"],
            "raised": "now" if e["id"] in sent_ids else "already raised" if raised else "not raised (--no-alerts)",
        }
        for e in events
    ]
    return pd.DataFrame(rows, columns=["subject", "name", "psi", "threshold", "raised"])


def build(settings: Settings, start: date, end: date, out: Path | None = None, *, raise_alerts: bool = True) -> dict:
    """Compute and write the report of event dates ``start``..``end``; returns its summary."""
    if start > end:
        raise ValueError(f"the period starts ({start}) after it ends ({end})")
    m = settings.monitoring
    out = out or default_out(settings, start, end)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"monitoring report {start}..{end} -> {out}")

    decisions, decisions_version = sources.read_decisions(settings, start, end)
    if decisions.empty:
        raise ValueError(f"gold.decisions has no decisions dated {start}..{end}")
    labels, silver_version = sources.read_labels(settings, start, end)
    progress(f"read {len(decisions)} decisions (gold.decisions v{decisions_version}) and {len(labels)} silver "
             f"transactions (v{silver_version})")  # fmt: skip
    frame = stats.with_labels(decisions, labels)
    daily = stats.daily(frame)
    rates = stats.decision_rates(frame)
    performance = stats.performance(frame)
    rules = stats.top_rules(frame, m.top_rules)
    latency = stats.latency(frame, m.latency_percentiles)

    feature_table, score_table, score_images, reference, gaps = drift(settings, frame, start, end, out)
    progress("plots")
    daily_png = plots.daily_plot(daily, out / "daily.png")
    psi_png = (
        [] if feature_table.empty else [plots.psi_plot(feature_table, m.psi_warn, m.psi_alert, out / "feature_psi.png")]
    )

    events = alerts.drift_events(feature_table, score_table, start, end, m.psi_alert)
    sent = alerts.publish_to_log(settings, events) if raise_alerts and events else []
    metrics = alerts.write_metrics(settings, feature_table, score_table, sent, end)
    progress(f"{len(events)} drift alerts ({len(sent)} new on {settings.eventlog.topics.risk_alerts.name}); "
             f"metrics {metrics}")  # fmt: skip
    alert_table = _alert_table(events, sent, raise_alerts)
    context = {
        "period (event dates)": f"{start}..{end}",
        "generated at": datetime.now(UTC).isoformat(timespec="seconds"),
        "decisions": f"{len(decisions)} from gold.decisions v{decisions_version}",
        "labels": f"silver.transactions v{silver_version}",
        "drift reference": reference,
        "PSI": f"{m.psi_bins} quantile bins of the reference, NaN its own bin, warn >= {m.psi_warn:g}, "
        f"alert >= {m.psi_alert:g}",
    }
    sections = _sections(settings, daily, rates, performance, feature_table, score_table, rules, latency,
                         alert_table, [daily_png], psi_png, score_images, gaps)  # fmt: skip
    html_path = out / "report.html"
    html_path.write_text(render(f"Fraud model and data monitoring {start}..{end}", context, sections))
    summary = {
        "period": {"start": str(start), "end": str(end)},
        "report": str(html_path),
        "metrics": str(metrics),
        "versions": {"gold.decisions": decisions_version, "silver.transactions": silver_version},
        "transactions": len(decisions),
        "drift_reference": reference,
        "daily": _records(daily),
        "decision_rates": _records(rates),
        "performance": _records(performance),
        "feature_drift": _records(feature_table),
        "score_drift": _records(score_table),
        "top_rules": _records(rules),
        "latency": _records(latency),
        "alerts": events,
        "alerts_sent": [e["id"] for e in sent],
        "plots": [str(p) for p in [daily_png, *psi_png, *score_images]],
        "gaps": gaps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    progress(f"report: {html_path}")
    return summary


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _sections(settings, daily, rates, performance, features, scores, rules, latency, alert_table, daily_png,
              psi_png, score_images, gaps) -> list[Section]:  # fmt: skip
    m = settings.monitoring
    return [
        Section("volumes", "Volumes and fraud", "Per event date: transactions decided, their amount, the fraud "
                "labels arrived so far (fraud rate = fraud / transactions) and the decisions.",
                [("", daily)], daily_png),
        Section("decisions", "Decision rates", "Share of the period's transactions per decision.", [("", rates)]),
        Section("performance", "Precision and recall per model version", "Acting: the decisions carried out; "
                "shadow: the other version's decisions, recorded only. A transaction is fraud once its fraud label "
                "arrived, so the newest days understate both figures until their labels are in.",
                [("", performance)]),
        Section("feature-drift", "Feature drift (PSI) vs the champion's training period", "PSI per feature on "
                f"{m.psi_bins} quantile bins of the training period (NaN a bin of its own): below {m.psi_warn:g} "
                f"stable, {m.psi_warn:g}-{m.psi_alert:g} watch, {m.psi_alert:g} and above alert.",
                [("", features)], psi_png, gaps.get("feature-drift", "")),
        Section("score-drift", "Score drift (PSI) per model version", "Each version's scores in the period "
                "against its scores on its own training period (sampled, scored now with the registered version).",
                [("", scores)], score_images, gaps.get("score-drift", "")),
        Section("rules", "Top rules fired", "Rules by the number of transactions they fired on; fraud share = "
                "share of those labelled fraud.", [("", rules)]),
        Section("latency", "Latency percentiles (ms)", "scoring_ms: model and rules time per transaction; "
                "log_to_decision_ms: event log to decision written; event_to_decision_ms: event time to decision "
                "(history replayed in bulk shows its age here, not a latency).", [("", latency)]),
        Section("alerts", "Drift alerts", f"Features and scores at PSI >= {m.psi_alert:g}: one drift event each on "
                f"{settings.eventlog.topics.risk_alerts.name} per report period.", [("", alert_table)]),
    ]  # fmt: skip
