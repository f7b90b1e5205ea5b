"""Plots and the Markdown report of an evaluation: ROC, precision-recall, score distributions by class,
feature importance (gain) and a SHAP summary, plus the metric tables and the quality targets."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from training import models
from training.models import Fitted


def progress(message: str) -> None:
    """A progress line of a training job (stderr: stdout is the job's JSON result)."""
    print(message, file=sys.stderr, flush=True)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_plot(scored: dict[str, pd.DataFrame], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, f in scored.items():
        fpr, tpr, _ = roc_curve(f["label"], f["score"])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC", xscale="log", xlim=(1e-4, 1)
    )
    ax.legend(loc="lower right")
    return save(fig, path)


def pr_plot(scored: dict[str, pd.DataFrame], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, f in scored.items():
        precision, recall, _ = precision_recall_curve(f["label"], f["score"])
        ax.plot(recall, precision, label=name)
    base = next(iter(scored.values()))["label"].mean()
    ax.axhline(base, ls=":", color="grey", label=f"fraud share {base:.3%}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return save(fig, path)


def distribution_plot(
    frame: pd.DataFrame,
    thresholds: dict[str, float],
    title: str,
    path: Path,
    names: tuple[str, str] = ("genuine", "fraud"),
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(frame["score"].min(), frame["score"].max(), 60)
    drawn = False  # a class without rows (no injected ticks in a short test period) is left out of the plot
    for label, name in enumerate(names):
        scores = frame.loc[frame["label"] == label, "score"]
        if len(scores) and bins[-1] > bins[0]:
            ax.hist(scores, bins=bins, alpha=0.6, density=True, label=name)
            drawn = True
    ax.set(xlabel="score", ylabel="density (log)" if drawn else "density", yscale="log" if drawn else "linear",
           title=title)  # fmt: skip
    for name, t in thresholds.items():
        ax.axvline(t, ls="--", color="black", lw=0.8)
        ax.text(t, 0.92, f" {name}", fontsize=8, transform=ax.get_xaxis_transform())  # y in axes fraction
    if drawn:
        ax.legend()
    return save(fig, path)


def importance_plot(fitted: Fitted, path: Path, top: int = 20) -> Path:
    gain = models.importance(fitted).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(gain) + 1))
    ax.barh(gain.index, gain.values)
    ax.set(xlabel="total gain", title="XGBoost feature importance")
    return save(fig, path)


def shap_plot(fitted: Fitted, x: pd.DataFrame, path: Path, sample: int = 2000, seed: int = 0) -> Path:
    """SHAP summary (beeswarm) from XGBoost's exact tree SHAP values on a sample of rows."""
    import shap
    import xgboost as xgb

    rows = x.sample(n=min(sample, len(x)), random_state=seed)
    contribs = fitted.estimator.get_booster().predict(xgb.DMatrix(rows), pred_contribs=True)[:, :-1]
    plt.figure()
    shap.summary_plot(contribs, rows, show=False, max_display=20)
    return save(plt.gcf(), path)


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


QUALITY_HEADER = ["scenario", "frauds", "tx detection", "tx target", "cards", "card detection", "card target"]


def quality(metrics: dict, detectable: list[str], target: float, point: str = "at_fpr") -> list[list]:
    """Per detectable scenario: transaction- and card-level detection at ``point`` against the target."""
    scenarios = metrics["operating_points"][point]["scenarios"]

    def verdict(rate: float | None) -> str:
        return "no frauds in test" if rate is None else ("meets" if rate >= target else "BELOW")

    rows = []
    for s in detectable:
        v = scenarios.get(s, {})
        tx, card = v.get("detection_rate"), v.get("card_detection_rate")
        rows.append([s, v.get("frauds", 0), "-" if tx is None else tx, verdict(tx), v.get("cards", 0),
                     "-" if card is None else card, verdict(card)])  # fmt: skip
    return rows


def markdown(
    title: str,
    context: dict,
    results: dict[str, dict],
    images: list[str],
    detectable: list[str],
    target: float,
    max_fpr: float,
) -> str:
    """The report: the run's context, each model's headline metrics, operating points, scenarios, money."""
    out = [f"# {title}", "", _table(["", ""], [[k, v] for k, v in context.items()]), ""]
    for name, m in results.items():
        head = [k for k in m if isinstance(m[k], int | float)]
        out += [f"## {name}", "", _table(["metric", "value"], [[k, m[k]] for k in head]), ""]
        points = m["operating_points"]
        out += ["### Operating points", ""]
        out.append(
            _table(
                [
                    "point",
                    "threshold",
                    "flagged",
                    "precision",
                    "recall",
                    "F1",
                    "FPR",
                    "fraud caught",
                    "fraud missed",
                    "review cost",
                ],
                [
                    [
                        p,
                        v["threshold"],
                        v["flagged"],
                        v["precision"],
                        v["recall"],
                        v["f1"],
                        v["false_positive_rate"],
                        v["money"]["fraud_amount_caught"],
                        v["money"]["fraud_amount_missed"],
                        v["money"]["review_cost"],
                    ]
                    for p, v in points.items()
                ],
            )
        )
        out += ["", f"### Detection per scenario (threshold at FPR <= {max_fpr:g})", ""]
        at = points["at_fpr"]["scenarios"]
        out.append(
            _table(
                ["scenario", "frauds", "detected", "rate", "cards", "card rate"],
                [
                    [s, v["frauds"], v["detected"], v["detection_rate"], v["cards"], v["card_detection_rate"]]
                    for s, v in at.items()
                ],
            )
        )
        out += ["", f"Target: detection >= {target:.0%} at FPR <= {max_fpr:g} for the detectable scenarios "
                "(a card is detected when any of its fraud transactions of the scenario is flagged):", ""]  # fmt: skip
        out.append(_table(QUALITY_HEADER, quality(m, detectable, target)))
        out.append("")
    out += [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(out) + "\n"
