"""The feature stage in Spark's state store: stateful operators on the executors, no micro-batch on the driver.

Transactions go through three ``transformWithStateInPandas`` operators in one query, card → terminal →
merchant; fraud-label events (a transaction whose label became fraud, at its reported time) travel with them
and update the terminal and merchant states. Each operator groups its entities into ``features.state_buckets``
hash buckets (one call per bucket, not per entity, since a call's cost is fixed) and keeps every entity's
state, the online engine's JSON (``features.online``), under its id in a ``MapState``. For each bucket it
applies the batch's events with the engine's step (``card_step`` / ``place_step``: the same code the API and
the parity tests run), adds the step's features to the row's ``feats`` JSON, and writes the states it touched
to the online store for the API. Market ticks go through one operator keyed by symbol.

The state store commits with the micro-batch, so a replayed batch starts from the states before it and
computes the same vectors; the online store's copy is rewritten with the same states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming.stateful_processor import StatefulProcessor, StatefulProcessorHandle, TimerValues

from features import online
from lakehouse.catalog import feature_fields
from lakehouse.config import Settings
from lakehouse.feature_definitions import Feature
from lakehouse.tables import spark_type

TX, LABEL = 0, 1  # an event's kind
# Chained operators need an event-time column and a watermark, and refuse to emit a row older than the watermark:
# a fraud label (at its transaction's time) or a late transaction would be. So the column is the time silver
# committed the row (``_commit_timestamp``), which only grows; with time mode None no input row is ever dropped.
WATERMARK = "wm"
# what the operators carry: the transaction's inputs, its decision inputs, event time (ms) and the features
EVENT_COLUMNS = (
    "bucket int, kind int, ts long, reported_ms long, log_ms long, event_date string, transaction_id string, "
    "card_id string, customer_id string, merchant_id string, terminal_id string, merchant_category_code string, "
    "amount double, country string, device_id string, ip_hash string, channel string, "
    "card_present boolean, lat double, lon double, terminal_lat double, terminal_lon double, merchant_lat double, "
    "merchant_lon double, mcc_risk_tier string, country_risk_tier string, feats string, wm timestamp"
)
TICK_COLUMNS = "symbol string, ts long, price double, event_date string, feats string"


def feature_schema(features: list[Feature]) -> str:
    """The ``feats`` JSON's schema (DDL) for ``from_json``: the feature tables' column types."""
    return ", ".join(f"{name} {spark_type(t)}" for name, t in feature_fields(features))


MILLIS = ("ts", "reported_ms", "log_ms")  # longs that pandas turns into floats when the column has a null


def _records(frame: pd.DataFrame) -> list[dict]:
    """A pandas frame as rows with None (not NaN) for nulls and integer times, as the online engine expects."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for column in (c for c in MILLIS if c in frame.columns and frame[c].dtype.kind == "f"):
        for r in rows:
            if r[column] is not None:
                r[column] = int(r[column])
    return rows


def _dumps(state: dict) -> str:
    return json.dumps({k: v for k, v in state.items() if k[0] != "_"}, separators=(",", ":"))


class _EntityProcessor(StatefulProcessor):
    """One bucket of one entity type's states per call: apply the batch's events, compute, write back."""

    entity = ""

    def __init__(self, settings: Settings, name: str):
        self.settings, self.name = settings, name
        self.retention_ms = online.raw_retention_ms(settings.streaming.allowed_lateness_s)

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.states = handle.getMapState(self.entity, "id string", "state string")
        self.store = None  # opened on the first batch (the processor is built on the driver, used on executors)

    def getter(self, cache: dict[str, dict]) -> online.StateGetter:
        def get(entity: str, key: str) -> dict:
            if key not in cache:
                value = self.states.getValue((key,))
                cache[key] = json.loads(value[0]) if value else online.NEW_STATE[entity]()
            return cache[key]

        return get

    def step(self, get: online.StateGetter, txs: list[dict], labels: list[dict]) -> tuple[list[dict], set[str]]:
        raise NotImplementedError

    def emit(self, events: list[dict]) -> list[dict]:
        """The events the next operator gets (all, by default)."""
        return events

    def handleInputRows(self, key, rows: Iterator[pd.DataFrame], timerValues: TimerValues) -> Iterator[pd.DataFrame]:
        frame = pd.concat(list(rows), ignore_index=True)
        events = _records(frame)
        txs = [e for e in events if e["kind"] == TX]
        labels = [e for e in events if e["kind"] == LABEL]
        cache: dict[str, dict] = {}
        get = self.getter(cache)
        values, touched = online.in_chunks(lambda t, la: self.step(get, t, la), txs, labels)
        for tx, row in zip(txs, values, strict=True):
            tx["feats"] = json.dumps({**json.loads(tx["feats"]), **row})
        for k in touched:
            self.states.updateValue((k,), (_dumps(cache[k]),))
        self.save({(self.entity, k): cache[k] for k in touched}, max(e["ts"] for e in events))
        out = self.emit(events)
        if out:
            yield pd.DataFrame(out, columns=frame.columns)

    def save(self, states: dict, ts: int) -> None:
        if not states:
            return
        if self.store is None:
            from features.store import OnlineStore

            self.store = OnlineStore(self.settings)
        self.store.save(states, f"{self.name}@{ts}")

    def close(self) -> None:
        if self.store is not None:
            self.store.client.close()


class CardProcessor(_EntityProcessor):
    entity = "card"

    def step(self, get, txs, labels):
        return online.card_step(get, txs, self.retention_ms)


class PlaceProcessor(_EntityProcessor):
    """A terminal or merchant operator; the last one (``last``) passes transactions on, not labels."""

    def __init__(self, settings: Settings, name: str, place: str, last: bool):
        super().__init__(settings, name)
        self.entity, self.last = place, last

    def step(self, get, txs, labels):
        return online.place_step(self.entity, get, txs, labels, self.retention_ms)

    def emit(self, events: list[dict]) -> list[dict]:
        return [e for e in events if e["kind"] == TX] if self.last else events


class SymbolProcessor(_EntityProcessor):
    entity = "symbol"

    def handleInputRows(self, key, rows: Iterator[pd.DataFrame], timerValues: TimerValues) -> Iterator[pd.DataFrame]:
        frame = pd.concat(list(rows), ignore_index=True)
        ticks = _records(frame)
        cache: dict[str, dict] = {}
        values, touched = online.ticks_batch(self.getter(cache), ticks)
        for tick, row in zip(ticks, values, strict=True):
            tick["feats"] = json.dumps(row)
        for _, k in touched:
            self.states.updateValue((k,), (_dumps(cache[k]),))
        self.save({("symbol", k): cache[k] for _, k in touched}, max(t["ts"] for t in ticks))
        yield pd.DataFrame(ticks, columns=frame.columns)


def _bucket(column: str, buckets: int) -> Column:
    return F.pmod(F.xxhash64(F.coalesce(F.col(column), F.lit(""))), F.lit(buckets)).cast("int")


def _through(df: DataFrame, processor: StatefulProcessor, column: str, buckets: int, schema: str) -> DataFrame:
    return (
        df.withColumn("bucket", _bucket(column, buckets))
        .groupBy("bucket")
        .transformWithStateInPandas(processor, schema, "Append", "None", eventTimeColumnName=WATERMARK)
    )


def transaction_features(events: DataFrame, settings: Settings, name: str) -> DataFrame:
    """``events`` (``EVENT_COLUMNS`` but ``bucket``, any order) → one row per transaction with its features in
    the ``feats`` JSON, through the card, terminal and merchant operators."""
    buckets = settings.features.state_buckets
    df = events.withColumn("bucket", F.lit(0)).select(*[c.split(" ")[0] for c in EVENT_COLUMNS.split(", ")])
    df = df.withWatermark(WATERMARK, f"{settings.streaming.allowed_lateness_s} seconds")
    df = _through(df, CardProcessor(settings, name), "card_id", buckets, EVENT_COLUMNS)
    df = _through(df, PlaceProcessor(settings, name, "terminal", last=False), "terminal_id", buckets, EVENT_COLUMNS)
    return _through(df, PlaceProcessor(settings, name, "merchant", last=True), "merchant_id", buckets, EVENT_COLUMNS)


def market_features(ticks: DataFrame, settings: Settings, name: str) -> DataFrame:
    """``ticks`` (symbol, ts, price, event_date) → the same rows with their features in ``feats``."""
    df = ticks.withColumn("feats", F.lit("{}")).select(*[c.split(" ")[0] for c in TICK_COLUMNS.split(", ")])
    return df.groupBy("symbol").transformWithStateInPandas(
        SymbolProcessor(settings, name), TICK_COLUMNS, "Append", "None"
    )


def parse(df: DataFrame, features: list[Feature]) -> DataFrame:
    """Expand the ``feats`` JSON into one typed column per feature (and drop it)."""
    parsed = df.withColumn("_f", F.from_json("feats", feature_schema(features)))
    return parsed.select(*[c for c in df.columns if c != "feats"], *[F.col(f"_f.{f.name}") for f in features])
