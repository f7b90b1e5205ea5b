"""Features of one request (the API's path): reference lookups, online states from Redis, the online engine.

The same ``features.online`` functions as the stream compute the values, from the states the stream last
wrote, so a request and the stream agree for the same event and state. If the online store cannot be read,
the answer is *degraded*: history features are null (never zeros that look real), the request-only features
are still computed, and ``status``/``reason`` say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from features import online
from features.context import context_values
from features.store import OnlineStore, OnlineStoreUnavailable
from lakehouse import delta
from lakehouse.config import Settings
from lakehouse.feature_definitions import CONTEXT, TRANSACTION_FEATURE_NAMES
from silver.reference import REFERENCES

# the reference columns a request is enriched with (as silver.transforms.enrich does for the stream)
LOOKUPS = {
    "mcc": ("merchant_category_code", ("mcc_risk_tier",)),
    "countries": ("country", ("country_risk_tier",)),
    "terminals": ("terminal_id", ("terminal_lat", "terminal_lon")),
    "merchants": ("merchant_id", ("merchant_lat", "merchant_lon")),
}


@dataclass
class FeatureResult:
    values: dict
    status: str  # ok | degraded
    reason: str | None = None
    online_ms: float = 0.0
    states: dict = field(default_factory=dict)  # (entity, key) -> whether the online store knew it
    transaction: dict = field(default_factory=dict)  # the request enriched with the reference columns


class ReferenceLookup:
    """The reference tables as dicts, read from their Delta tables (``refresh`` re-reads a newer version)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.versions: dict[str, int] = {}
        self.tables: dict[str, dict] = {}
        self.refresh()

    def refresh(self) -> None:
        for name, (key, cols) in LOOKUPS.items():
            dt = delta.open_table(self.settings, REFERENCES[name].spec.uri(self.settings))
            if self.versions.get(name) == dt.version():
                continue
            rows = dt.to_pyarrow_table(columns=[key, *cols]).to_pylist()
            self.tables[name] = {r[key]: r for r in rows}
            self.versions[name] = dt.version()

    def enrich(self, tx: dict) -> dict:
        out = dict(tx)
        for name, (key, cols) in LOOKUPS.items():
            row = self.tables[name].get(tx.get(key)) or {}
            out.update({c: row.get(c) for c in cols})
        return out


class RequestFeatures:
    def __init__(self, settings: Settings, reference: ReferenceLookup | None = None):
        self.store = OnlineStore(settings, timeout_s=settings.features.request_timeout_ms / 1000)
        self.reference = reference or ReferenceLookup(settings)

    def compute(self, tx: dict) -> FeatureResult:
        """Features of ``tx`` (a transaction as its contract has it; ``event_time`` in UTC ms)."""
        ts = int(tx["event_time"])
        enriched = self.reference.enrich(tx)
        keys = [("card", tx["card_id"])]
        keys += [(p, tx[f"{p}_id"]) for p in online.PLACES if tx.get(f"{p}_id") is not None]
        t0 = time.perf_counter()
        try:
            states = self.store.load(keys)
        except OnlineStoreUnavailable as exc:
            values = {name: None for name in TRANSACTION_FEATURE_NAMES}
            values.update(context_values(enriched, ts))
            reason = f"{exc}; only {len(CONTEXT)} request features computed"
            return FeatureResult(values, "degraded", reason, transaction=enriched)
        online_ms = (time.perf_counter() - t0) * 1000
        card = states[("card", tx["card_id"])] or online.new_card()
        places = {}
        for p in online.PLACES:
            key = tx.get(f"{p}_id")
            places[p] = None if key is None else states[(p, key)] or online.new_place()
        values = online.transaction_features(card, places, enriched, ts)
        known = {f"{e}:{k}": s is not None for (e, k), s in states.items()}
        return FeatureResult(values, "ok", None, online_ms, known, enriched)
