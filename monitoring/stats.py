"""Pure figures of a period's decisions (pandas in, pandas out): volumes and fraud per day, decision rates,
precision and recall per model version, the rules that fired most, latency percentiles.

A transaction counts as fraud once its fraud label arrived in silver (``label == "fraud"``); every other one
counts as genuine, as in the training sets and ``gold.model_comparison``. Recent days, whose labels are still
on their way, so understate recall and precision.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DECISIONS = ("approve", "review", "block")
# the decision outcomes a model version is judged at: what it flagged
OUTCOMES = {"block": ("block",), "review_or_block": ("review", "block")}
NO_MODEL = "(no model)"


def with_labels(decisions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``decisions`` with each transaction's silver ``label`` and ``amount`` (left join on transaction_id) and
    the booleans ``fraud`` (a fraud label arrived) and ``labelled`` (any label arrived)."""
    out = decisions.merge(labels[["transaction_id", "label", "amount"]], on="transaction_id", how="left")
    out["fraud"] = out["label"].eq("fraud").fillna(False).astype(bool)
    out["labelled"] = out["label"].notna()
    return out


def _rate(num: pd.Series | float, den: pd.Series | float):
    if isinstance(den, pd.Series):
        return num / den.where(den > 0)
    return float(num) / den if den else float("nan")


def daily(frame: pd.DataFrame) -> pd.DataFrame:
    """Per event date: transactions, amount, fraud and labelled counts, fraud rate, and the count and rate of
    every decision."""
    g = frame.groupby("event_date", sort=True)
    out = pd.DataFrame(
        {
            "transactions": g.size(),
            "amount": g["amount"].sum(min_count=1),
            "fraud_count": g["fraud"].sum(),
            "labelled_count": g["labelled"].sum(),
        }
    )
    out["fraud_rate"] = _rate(out["fraud_count"], out["transactions"])
    for d in DECISIONS:
        out[f"{d}_count"] = g["decision"].agg(lambda s, d=d: int((s == d).sum()))
        out[f"{d}_rate"] = _rate(out[f"{d}_count"], out["transactions"])
    return out.reset_index()


def decision_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per decision: count, share of the period's transactions, and how many of them were labelled fraud."""
    n = len(frame)
    rows = []
    for d in DECISIONS:
        hit = frame["decision"] == d
        rows.append({"decision": d, "count": int(hit.sum()), "rate": _rate(hit.sum(), n),
                     "fraud_count": int((hit & frame["fraud"]).sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _roles(frame: pd.DataFrame) -> pd.DataFrame:
    """Every (transaction, supervised model version, role, decision): ``acting`` (the decision carried out) and
    ``shadow`` (the other version's decision, recorded only)."""
    acting = pd.DataFrame(
        {
            "model_name": frame["model_name"].fillna(NO_MODEL),
            "model_version": frame["model_version"].fillna(""),
            "role": "acting",
            "decision": frame["decision"],
            "fraud": frame["fraud"],
            "labelled": frame["labelled"],
        }
    )
    s = frame[frame["shadow_model_version"].notna()]
    shadow = pd.DataFrame(
        {
            "model_name": s["model_name"].fillna(NO_MODEL),
            "model_version": s["shadow_model_version"],
            "role": "shadow",
            "decision": s["shadow_decision"],
            "fraud": s["fraud"],
            "labelled": s["labelled"],
        }
    )
    return pd.concat([acting, shadow], ignore_index=True)


def performance(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model version, role and outcome (``block``; ``review_or_block``): transactions, labelled and fraud
    counts, flagged, true positives, precision (TP / flagged) and recall (TP / fraud). Decisions made without a
    model (none registered yet, or it failed) are the ``(no model)`` rows."""
    cols = ["model_name", "model_version", "role", "outcome", "transactions", "labelled_count", "fraud_count",
            "flagged", "true_positives", "precision", "recall"]  # fmt: skip
    rows = []
    for (name, version, role), g in _roles(frame).groupby(["model_name", "model_version", "role"], sort=True):
        frauds = int(g["fraud"].sum())
        for outcome, flags in OUTCOMES.items():
            flagged = g["decision"].isin(flags)
            tp = int((flagged & g["fraud"]).sum())
            rows.append([name, version, role, outcome, len(g), int(g["labelled"].sum()), frauds, int(flagged.sum()),
                         tp, _rate(tp, int(flagged.sum())), _rate(tp, frauds)])  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def top_rules(frame: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` rules that fired on most transactions: times fired, share of the period's transactions, the
    decisions they came with, and how many (and which share) were labelled fraud."""
    cols = ["rule", "fired", "share", "review", "block", "fraud_count", "fraud_share"]
    fired = frame[["triggered_rules", "decision", "fraud"]].explode("triggered_rules").dropna(subset="triggered_rules")
    if fired.empty:
        return pd.DataFrame(columns=cols)
    g = fired.groupby("triggered_rules")
    out = pd.DataFrame(
        {
            "fired": g.size(),
            "review": g["decision"].agg(lambda s: int((s == "review").sum())),
            "block": g["decision"].agg(lambda s: int((s == "block").sum())),
            "fraud_count": g["fraud"].sum().astype(int),
        }
    )
    out["share"] = out["fired"] / len(frame)
    out["fraud_share"] = out["fraud_count"] / out["fired"]
    out = out.rename_axis("rule").reset_index().sort_values(["fired", "rule"], ascending=[False, True])
    return out[cols].head(n).reset_index(drop=True)


def latency(frame: pd.DataFrame, percentiles: list[float]) -> pd.DataFrame:
    """Percentiles (and count, mean, max) of the scoring time per transaction (``scoring_ms``), the event log to
    decision time (``latency_ms``) and the event time to decision time (``decided_at - event_time``; for
    history generated or replayed in bulk this is the replay's age, not a latency)."""
    series = {
        "scoring_ms": frame["scoring_ms"],
        "log_to_decision_ms": frame["latency_ms"],
        "event_to_decision_ms": (frame["decided_at"] - frame["event_time"]).dt.total_seconds() * 1000,
    }
    rows = []
    for name, s in series.items():
        x = pd.to_numeric(s, errors="coerce").dropna().to_numpy(dtype="float64")
        row = {"measure": name, "count": int(x.size), "mean": float(x.mean()) if x.size else float("nan")}
        for p in percentiles:
            row[f"p{p:g}"] = float(np.percentile(x, p)) if x.size else float("nan")
        row["max"] = float(x.max()) if x.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def version_scores(frame: pd.DataFrame, anomaly_name: str) -> pd.DataFrame:
    """Every model score of the period as (model_name, model_version, score): the supervised versions' fraud
    probabilities (acting and shadow) and the anomaly model's raw scores (registered as ``anomaly_name``)."""
    parts = [
        frame[["model_name", "model_version", "ml_probability"]].set_axis(["model_name", "model_version", "score"],
                                                                         axis=1),
        frame[["model_name", "shadow_model_version", "shadow_probability"]].set_axis(
            ["model_name", "model_version", "score"], axis=1
        ),
        frame[["anomaly_model_version", "anomaly_raw"]]
        .set_axis(["model_version", "score"], axis=1)
        .assign(model_name=anomaly_name),
    ]  # fmt: skip
    out = pd.concat(parts, ignore_index=True).dropna(subset=["model_name", "model_version", "score"])
    return out[["model_name", "model_version", "score"]].astype({"score": "float64"}).reset_index(drop=True)
