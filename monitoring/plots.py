"""The report's PNG plots (matplotlib, Agg): daily volumes, fraud and decision rates; PSI per feature with the
threshold lines; a model version's score distribution, training period against the report period."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from training.report import distribution_plot, save


def daily_plot(daily: pd.DataFrame, path: Path) -> Path:
    """Transactions per day (bars) with the fraud rate; below, the review and block rates."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    days = [str(d)[:10] for d in daily["event_date"]]
    top.bar(days, daily["transactions"], color="#9ab", label="transactions")
    top.set(ylabel="transactions", title="Daily volume and fraud rate")
    rate = top.twinx()
    rate.plot(days, daily["fraud_rate"] * 100, "o-", color="#c33", label="fraud rate")
    rate.set(ylabel="fraud rate (%)")
    for d, color in (("review", "#e90"), ("block", "#c33")):
        bottom.plot(days, daily[f"{d}_rate"] * 100, "o-", color=color, label=f"{d} rate")
    bottom.set(ylabel="share of transactions (%)", title="Decision rates")
    bottom.legend(loc="upper left")
    if len(days) > 7:
        fig.autofmt_xdate()
    return save(fig, path)


def psi_plot(drift: pd.DataFrame, warn: float, alert: float, path: Path, title: str = "Feature drift (PSI)") -> Path:
    """One bar per feature (highest PSI on top), coloured by status, with the warn and alert thresholds; the axis
    stops at 4 x the alert threshold, longer bars are cut there and labelled with their value."""
    d = drift.iloc[::-1]
    values = np.nan_to_num(d["psi"].to_numpy(dtype="float64"))
    top = 4 * alert
    colors = {"alert": "#c33", "warn": "#e90", "ok": "#6a6"}
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(d) + 1.5))
    ax.barh(d["feature"], np.minimum(values, top), color=[colors.get(s, "#bbb") for s in d["status"]])
    for y, v in enumerate(values):
        if v > top:
            ax.text(top, y, f"{v:.2f} ", ha="right", va="center", fontsize=7, color="white")
    ax.axvline(warn, ls="--", color="#e90", lw=1, label=f"warn {warn:g}")
    ax.axvline(alert, ls="--", color="#c33", lw=1, label=f"alert {alert:g}")
    ax.set(xlabel="PSI (period vs training period)", title=title, xlim=(0, top), ylim=(-0.6, len(d) - 0.4))
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right")
    return save(fig, path)


def score_plot(reference: np.ndarray, period: np.ndarray, thresholds: dict[str, float], title: str, path: Path) -> Path:
    """The score densities of the training period and of the report period (training.report's plot)."""
    frame = pd.DataFrame(
        {
            "score": np.concatenate([reference, period]).astype("float64"),
            "label": np.r_[np.zeros(len(reference), int), np.ones(len(period), int)],
        }
    )
    return distribution_plot(frame, thresholds, title, path, names=("training period", "report period"))
