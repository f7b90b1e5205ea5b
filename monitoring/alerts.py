"""Drift alerts and metrics: each feature or model score whose PSI reaches the alert threshold raises one
``drift`` event on ``risk-alerts`` per report period (a Redis ``SET NX`` key per period and subject claims it
first, so re-running a report raises nothing twice), and every PSI is a Prometheus gauge in a node-exporter
textfile (``<state>/metrics/monitoring.prom``, beside lakehouse/quality.py's ``quality.prom``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from lakehouse import eventlog
from lakehouse.config import Settings
from monitoring.psi import ALERT
from serving.pinned import send_once

ALERTS_METRIC = "fraud_drift_alerts"


def drift_events(features: pd.DataFrame, scores: pd.DataFrame, start: date, end: date, threshold: float) -> list[dict]:
    """The ``drift`` events of a report: one per feature (``features``: feature, psi, status) and per model
    version (``scores``: model_name, model_version, psi, status) at the alert status. ``id`` is deterministic:
    the same period and subject give the same id."""
    period = f"{start.isoformat()}..{end.isoformat()}"
    events = [
        {"id": f"drift/{period}/feature/{r.feature}", "kind": "drift", "subject": "feature", "feature": r.feature,
         "psi": float(r.psi), "threshold": threshold, "period": period}
        for r in features.itertuples() if r.status == ALERT
    ]  # fmt: skip
    events += [
        {"id": f"drift/{period}/score/{r.model_name}/{r.model_version}", "kind": "drift", "subject": "score",
         "model_name": r.model_name, "model_version": str(r.model_version), "psi": float(r.psi),
         "threshold": threshold, "period": period}
        for r in scores.itertuples() if r.status == ALERT
    ]  # fmt: skip
    return events


def as_alerts(events: list[dict], prefix: str, topic: str, at_ms: int) -> list[tuple[str, str, str, dict]]:
    """The events as ``serving.pinned.send_once`` alerts: claimed as ``<prefix>:<id>``, keyed by their subject."""
    return [(f"{prefix}:{e['id']}", topic, e.get("feature") or e["model_name"], {**e, "at": at_ms}) for e in events]


def publish_to_log(settings: Settings, events: list[dict]) -> list[dict]:
    """Send each event once on ``risk-alerts`` (claims in the online store's Redis); returns the events sent."""
    if not events:
        return []
    r = redis.Redis.from_url(settings.online_store.url)
    log = eventlog.from_settings(settings)
    prefix, topic = settings.online_store.key_prefix, settings.eventlog.topics.risk_alerts.name
    try:
        alerts = as_alerts(events, prefix, topic, int(datetime.now(UTC).timestamp() * 1000))
        sent = send_once(r, log, alerts, settings.monitoring.alert_ttl_days * 86_400)
        return [event for *_, event in sent]
    finally:
        log.close()
        r.close()


def metrics_path(settings: Settings) -> Path:
    return settings.state_path / "metrics" / "monitoring.prom"


def previous_alerts(text: str) -> dict[str, float]:
    """The alert counter's value per subject in a previous textfile (so the counter never goes down)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == ALERTS_METRIC:
            for s in family.samples:
                if s.name == f"{ALERTS_METRIC}_total":
                    out[s.labels["subject"]] = s.value
    return out


def registry(features: pd.DataFrame, scores: pd.DataFrame, alerts: dict[str, float], end: date) -> CollectorRegistry:
    """The gauges ``fraud_feature_psi{feature}``, ``fraud_score_psi{model_name,model_version}``, the report's
    period end, and the counter ``fraud_drift_alerts_total{subject}`` at ``alerts``."""
    reg = CollectorRegistry()
    fg = Gauge("fraud_feature_psi", "PSI of a feature, report period vs the champion's training period",
               ["feature"], registry=reg)  # fmt: skip
    sg = Gauge("fraud_score_psi", "PSI of a model version's scores, report period vs its training period",
               ["model_name", "model_version"], registry=reg)  # fmt: skip
    for r in features.dropna(subset=["psi"]).itertuples():
        fg.labels(r.feature).set(r.psi)
    for r in scores.dropna(subset=["psi"]).itertuples():
        sg.labels(r.model_name, str(r.model_version)).set(r.psi)
    c = Counter(ALERTS_METRIC, "drift alerts raised on risk-alerts", ["subject"], registry=reg)
    for subject in ("feature", "score"):
        c.labels(subject).inc(alerts.get(subject, 0.0))
    period = Gauge("fraud_drift_report_period_end_seconds", "end of the last report's period (unix time)",
                   registry=reg)  # fmt: skip
    period.set(datetime.combine(end, datetime.min.time(), UTC).timestamp())
    return reg


def metrics_text(features: pd.DataFrame, scores: pd.DataFrame, alerts: dict[str, float], end: date) -> str:
    return generate_latest(registry(features, scores, alerts, end)).decode()


def write_metrics(
    settings: Settings, features: pd.DataFrame, scores: pd.DataFrame, sent: list[dict], end: date
) -> Path:
    """Write the textfile: the PSI gauges, the alert counter raised by ``sent`` (atomically replaced)."""
    path = metrics_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    alerts = previous_alerts(path.read_text()) if path.exists() else {}
    for e in sent:
        alerts[e["subject"]] = alerts.get(e["subject"], 0.0) + 1
    write_to_textfile(str(path), registry(features, scores, alerts, end))
    return path
