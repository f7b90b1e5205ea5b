"""Population Stability Index: how far a period's distribution moved from a reference (the training period).

``PSI = sum over bins of (q - p) * ln(q / p)``, ``p`` the reference's share of a bin and ``q`` the period's.
The bins are the reference's quantiles (deciles by default) so that each holds about as many reference rows;
NaN (a feature unknown for lack of history) is a bin of its own; a constant reference gets the three bins
below, at and above its value; an empty bin's share is floored at ``epsilon`` so the logarithm stays finite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OK, WARN, ALERT, NO_DATA = "ok", "warn", "alert", "no data"


def bin_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """The inner cut points of the reference's ``bins`` quantile bins (ties merged); a value ``v`` falls in bin
    ``searchsorted(edges, v, side="right")``. A constant reference ``c`` gets ``[c, next float after c]``."""
    x = np.asarray(reference, dtype="float64")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return np.array([], dtype="float64")
    lo, hi = x.min(), x.max()
    if lo == hi:
        return np.array([lo, np.nextafter(lo, np.inf)])
    return np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin of ``edges`` (``len(edges) + 1`` value bins, then the NaN bin)."""
    v = np.asarray(values, dtype="float64")
    nan = np.isnan(v)
    counts = np.bincount(np.searchsorted(edges, v[~nan], side="right"), minlength=len(edges) + 1)
    counts = np.append(counts, nan.sum()).astype("float64")
    return counts / v.size if v.size else counts


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4) -> float:
    """The PSI of ``current`` against ``reference`` (NaN when either is empty)."""
    reference, current = np.asarray(reference, dtype="float64"), np.asarray(current, dtype="float64")
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = bin_edges(reference, bins)
    p = np.maximum(shares(reference, edges), epsilon)
    q = np.maximum(shares(current, edges), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def status(value: float, warn: float, alert: float) -> str:
    """``alert`` at or above ``alert``, ``warn`` at or above ``warn``, ``no data`` for NaN, else ``ok``."""
    if np.isnan(value):
        return NO_DATA
    return ALERT if value >= alert else WARN if value >= warn else OK


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    *,
    bins: int = 10,
    epsilon: float = 1e-4,
    warn: float = 0.1,
    alert: float = 0.25,
) -> pd.DataFrame:
    """One row per feature: PSI of ``current`` against ``reference``, its status, and both frames' NaN shares
    and means; sorted by PSI, highest first. A feature missing from a frame counts as all NaN there."""
    rows = []
    for f in features:
        ref = _column(reference, f)
        cur = _column(current, f)
        value = psi(ref, cur, bins, epsilon)
        rows.append(
            {
                "feature": f,
                "psi": value,
                "status": status(value, warn, alert),
                "reference_nan_share": _nan_share(ref),
                "period_nan_share": _nan_share(cur),
                "reference_mean": _mean(ref),
                "period_mean": _mean(cur),
            }
        )
    out = pd.DataFrame(rows, columns=["feature", "psi", "status", "reference_nan_share", "period_nan_share",
                                      "reference_mean", "period_mean"])  # fmt: skip
    return out.sort_values("psi", ascending=False, na_position="last", ignore_index=True)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name].astype("float64"), errors="coerce").to_numpy(dtype="float64")


def _nan_share(x: np.ndarray) -> float:
    return float(np.isnan(x).mean()) if x.size else float("nan")


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")
