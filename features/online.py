"""The online engine: bounded state per entity and the features of one event computed from it.

Used by the stream (apply a micro-batch's events to the state, then compute each event's features) and by the
API (compute a request's features from the state in Redis, without changing it): the same code, so the same
values. The state is plain JSON-able data:

- card: ``raw`` events of the last ``retention`` (time, id, amount, merchant, country, device, lat, lon),
  hourly ``tiles`` of older events (count, sum, sum of squares, countries, amounts), the last time each device
  and country was used by older events, and the ``anchor`` (the newest older event, for time-since-last). The
  tiles keep their amounts for the IQR score's quartiles (a 30-day median is not a sum of tiles); a tile of a
  version-1 state has no amounts list: its events count everywhere but in the IQR score (version-2 states live
  under other keys, see ``features.store``, so the stream never mixes them);
- terminal / merchant: ``raw`` (time, id, kind 0 = transaction, 1 = fraud label by reported time) and hourly
  ``tiles`` (transactions, fraud labels);
- symbol: the newest ``MAX_TICKS`` ticks (time, price).

Every event is in exactly one of raw or tiles, so windows are exact as long as events arrive no later than
``retention - 1 h`` behind the newest one (silver's watermark guarantees it; see ``raw_retention_ms``).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence

from features.context import context_values, haversine_km, location, speed_kmh
from lakehouse.feature_definitions import (
    CARD_WINDOWS,
    EXACT_HISTORY,
    LOOKBACK,
    PLACE_WINDOWS,
    TICK_WINDOWS,
    TILE_MS,
    W24H,
)

MAX_TICKS = max(TICK_WINDOWS) + 8
PLACES = ("terminal", "merchant")


def raw_retention_ms(allowed_lateness_s: int) -> int:
    """How long raw events stay in the state: the exact window, the current hour and the allowed lateness."""
    return EXACT_HISTORY.ms + allowed_lateness_s * 1000 + 300_000


def new_card() -> dict:
    return {"raw": [], "tiles": {}, "devices": {}, "countries": {}, "anchor": None, "max": None, "pruned": None}


def new_place() -> dict:
    return {"raw": [], "tiles": {}, "max": None, "pruned": None}


def new_symbol() -> dict:
    return {"ticks": []}


# ---- applying events ---------------------------------------------------------------------------------------


def _add(state: dict, event: list, key: slice) -> bool:
    """Add ``event`` to ``state["raw"]`` unless it is already in the state (a replayed batch): an event with
    the same key is in ``raw``, or it is older than the last pruning's cut-off (so it is, or would have been,
    in the tiles; silver's watermark keeps first arrivals newer than that)."""
    if (state["pruned"] is not None and event[0] < state["pruned"]) or any(e[key] == event[key] for e in state["raw"]):
        return False
    state["raw"].append(event)
    state["max"] = event[0] if state["max"] is None else max(state["max"], event[0])
    return True


def card_event(tx: dict, ts_ms: int) -> list:
    lat, lon = location(tx)
    return [ts_ms, tx["transaction_id"], tx["amount"], tx["merchant_id"], tx["country"], tx.get("device_id"), lat, lon]


def apply_card(state: dict, tx: dict, ts_ms: int) -> bool:
    return _add(state, card_event(tx, ts_ms), slice(1, 2))


def apply_place(state: dict, ts_ms: int, event_id: str, kind: int) -> bool:
    """A transaction (kind 0, at its event time) or a fraud label (kind 1, at its reported time)."""
    return _add(state, [ts_ms, event_id, kind], slice(1, 3))


def _fold_card(state: dict, e: list) -> None:
    ts, tx_id, amount, _merchant, country, device, lat, lon = e
    tile = state["tiles"].setdefault(str(ts // TILE_MS), [0, 0.0, 0.0, [], []])
    tile[0] += 1
    tile[1] += amount
    tile[2] += amount * amount
    if country not in tile[3]:
        tile[3].append(country)
    if len(tile) > 4:  # a version-1 tile has no amounts: adding some would make a partial list look whole
        tile[4].append(amount)
    if device is not None:
        state["devices"][device] = max(state["devices"].get(device, ts), ts)
    state["countries"][country] = max(state["countries"].get(country, ts), ts)
    if state["anchor"] is None or (ts, tx_id) > tuple(state["anchor"][:2]):
        state["anchor"] = [ts, tx_id, lat, lon]


def _fold_place(state: dict, e: list) -> None:
    state["tiles"].setdefault(str(e[0] // TILE_MS), [0, 0])[e[2]] += 1


def _prune(state: dict, retention_ms: int, fold: Callable[[dict, list], None], last_seen: tuple[str, ...]) -> None:
    """Fold raw events older than ``retention_ms`` behind the newest into tiles; forget what no window needs."""
    cutoff = _cutoff(state, retention_ms)
    state.pop("_memo", None)
    keep = []
    for e in state["raw"]:
        if e[0] >= cutoff:
            keep.append(e)
        else:
            fold(state, e)
    state["raw"] = keep
    _forget(state, last_seen)


def prune_card(state: dict, retention_ms: int) -> None:
    _prune(state, retention_ms, _fold_card, ("devices", "countries"))


def prune_place(state: dict, retention_ms: int) -> None:
    _prune(state, retention_ms, _fold_place, ())


def _cutoff(state: dict, retention_ms: int) -> int:
    state["pruned"] = max(state["pruned"] or 0, state["max"] - retention_ms)
    return state["pruned"]


def _forget(state: dict, last_seen: tuple[str, ...]) -> None:
    """Drop tiles and last-use times that no event at or after the cut-off can see any more."""
    oldest_tile = state["pruned"] // TILE_MS - LOOKBACK.tiles - 1
    state["tiles"] = {k: v for k, v in state["tiles"].items() if int(k) >= oldest_tile}
    for name in last_seen:
        state[name] = {k: v for k, v in state[name].items() if v >= state["pruned"] - LOOKBACK.ms - TILE_MS}


def apply_tick(state: dict, ts_ms: int, price: float) -> bool:
    ticks = state["ticks"]
    if any(t[0] == ts_ms for t in ticks):
        return False
    ticks.append([ts_ms, price])
    ticks.sort(key=lambda t: t[0])
    del ticks[:-MAX_TICKS]
    return True


# ---- computing features -----------------------------------------------------------------------------------


def _tile_sums(
    state: dict, hour: int, spans: tuple[int, ...], width: int, countries: int = 0, amounts: int = 0
) -> tuple:
    """Per span N, the element-wise sums of the first ``width`` fields of the tiles in [hour - N, hour), the
    union of the countries of the last ``countries`` hours and the sorted amounts of the last ``amounts`` hours.
    Memoised per state and hour until the tiles change (``_prune``), so a micro-batch sums (and sorts) an
    entity's tiles once, not once per event."""
    memo = state.setdefault("_memo", {})
    if hour not in memo:
        acc = {n: [0] * width for n in spans}
        seen: set = set()
        values: list[float] = []
        for k, tile in state["tiles"].items():
            age = hour - int(k)
            if age < 1:
                continue
            for n, a in acc.items():
                if age <= n:
                    for i in range(width):
                        a[i] += tile[i]
            if age <= countries:
                seen.update(tile[3])
            if age <= amounts and len(tile) > 4:
                values.extend(tile[4])
        values.sort()
        memo[hour] = (acc, seen, values)
    return memo[hour]


CARD_SPANS = tuple(w.tiles for w in CARD_WINDOWS if w.tiled)
PLACE_SPANS = tuple(w.tiles for w in PLACE_WINDOWS)


def card_features(state: dict, tx: dict, ts_ms: int) -> dict:
    """The card features of ``tx`` at ``ts_ms`` from the card's state (events before ``ts_ms`` only)."""
    hour = ts_ms // TILE_MS
    before = [e for e in state["raw"] if e[0] < ts_ms]
    out: dict = {}
    sums: dict = {}
    tiled, countries, month = _tile_sums(state, hour, CARD_SPANS, 3, countries=W24H.tiles, amounts=LOOKBACK.tiles)
    for w in CARD_WINDOWS:
        if w.tiled:
            lo = hour - w.tiles
            events = [e[2] for e in before if e[0] // TILE_MS >= lo]
            n0, s0, ss0 = tiled[w.tiles]
            n = len(events) + n0
            s = sum(events) + s0
            ss = sum(a * a for a in events) + ss0
        else:
            events = [e for e in before if e[0] >= ts_ms - w.ms]
            n, s = len(events), sum(e[2] for e in events)
            ss = None
        sums[w.name] = (n, s, ss)
        out[f"card_tx_count_{w.name}"] = n
        out[f"card_amount_sum_{w.name}"] = float(s)
        out[f"card_amount_mean_{w.name}"] = s / n if n else None

    out["card_distinct_merchants_1h"] = len({e[3] for e in before if e[0] >= ts_ms - 3_600_000})
    lo = hour - W24H.tiles
    out["card_distinct_countries_24h"] = len(countries | {e[4] for e in before if e[0] // TILE_MS >= lo})

    n, s, ss = sums["30d"]
    out["card_amount_zscore_30d"] = zscore(tx["amount"], n, s, ss)
    lo = hour - LOOKBACK.tiles
    recent = sorted(e[2] for e in before if e[0] // TILE_MS >= lo)
    out["card_amount_iqr_score_30d"] = iqr_score(tx["amount"], SortedUnion(month, recent) if recent else month)

    prev = max(before, key=lambda e: (e[0], e[1]), default=None)
    anchor = state["anchor"]
    if prev is not None:
        prev = (prev[0], prev[6], prev[7])
    elif anchor is not None and anchor[0] < ts_ms:
        prev = (anchor[0], anchor[2], anchor[3])
    lat, lon = location(tx)
    out["card_seconds_since_last"] = None if prev is None else (ts_ms - prev[0]) / 1000
    if prev is None or None in (prev[1], prev[2], lat, lon):
        out["card_prev_distance_km"] = out["card_prev_speed_kmh"] = None
    else:
        d = haversine_km(prev[1], prev[2], lat, lon)
        out["card_prev_distance_km"] = d
        out["card_prev_speed_kmh"] = speed_kmh(d, (ts_ms - prev[0]) / 1000)

    since = ts_ms - LOOKBACK.ms
    device = tx.get("device_id")
    out["card_new_device"] = (
        None
        if device is None
        else not (
            any(e[5] == device and e[0] >= since for e in before) or since <= state["devices"].get(device, -1) < ts_ms
        )
    )
    country = tx["country"]
    out["card_new_country"] = not (
        any(e[4] == country and e[0] >= since for e in before) or since <= state["countries"].get(country, -1) < ts_ms
    )
    return out


def zscore(amount: float, n: int, s: float, ss: float) -> float | None:
    """``amount`` against the sample mean and std of ``n`` values with sum ``s`` and sum of squares ``ss``."""
    if n < 2:
        return None
    var = (ss - s * s / n) / (n - 1)
    if var <= 0:
        return None
    return (amount - s / n) / math.sqrt(var)


class SortedUnion(Sequence):
    """The sorted union of a sorted list and a short sorted list, read by index without merging them: the 30
    days of tile amounts (memoised, sorted once per hour) with the few raw amounts of the last hour."""

    def __init__(self, long: list[float], short: list[float]) -> None:
        self.long, self.short = long, short
        # each short value's index in the union: after the long values equal to it (strictly increasing)
        self.at = [i + bisect.bisect_right(long, x) for i, x in enumerate(short)]

    def __len__(self) -> int:
        return len(self.long) + len(self.short)

    def __getitem__(self, k: int) -> float:  # an int index only
        if not 0 <= k < len(self):
            raise IndexError(k)
        j = bisect.bisect_left(self.at, k)  # short values ahead of index k
        return self.short[j] if j < len(self.at) and self.at[j] == k else self.long[k - j]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` by linear interpolation (numpy's default): position
    ``q (n - 1)``, ``v[lo] + (v[hi] - v[lo]) * frac``. ``features.offline`` computes the same expression."""
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    a, b = values[lo], values[min(lo + 1, len(values) - 1)]
    return a + (b - a) * (pos - lo)


def iqr_score(amount: float, values: Sequence[float]) -> float | None:
    """``(amount - median) / (Q3 - Q1)`` of sorted ``values``; None under 4 values or with an IQR of 0."""
    if len(values) < 4:
        return None
    iqr = quantile(values, 0.75) - quantile(values, 0.25)
    if iqr == 0:
        return None
    return (amount - quantile(values, 0.5)) / iqr


def place_features(entity: str, state: dict | None, ts_ms: int) -> dict:
    """Transactions and fraud labels known at ``ts_ms`` at a terminal or merchant (all null without one)."""
    out: dict = {}
    counts: dict = {}
    if state is not None:
        hour = ts_ms // TILE_MS
        tiled, _, _ = _tile_sums(state, hour, PLACE_SPANS, 2)
        counts = {n: list(v) for n, v in tiled.items()}
        for e in state["raw"]:
            if e[0] < ts_ms:
                age = hour - e[0] // TILE_MS
                for n, c in counts.items():
                    if age <= n:
                        c[e[2]] += 1
    for w in PLACE_WINDOWS:
        n, f = counts.get(w.tiles, (None, None))
        out[f"{entity}_tx_count_{w.name}"] = n
        out[f"{entity}_fraud_count_{w.name}"] = f
        out[f"{entity}_fraud_rate_{w.name}"] = f / n if n else None
    return out


def transaction_features(card: dict, places: dict[str, dict | None], tx: dict, ts_ms: int) -> dict:
    """Every transaction feature of ``tx`` (enriched, with ``TRANSACTION_INPUTS``) from the entities' states;
    ``places`` maps terminal/merchant to their state (None when the transaction has none)."""
    return {
        **card_features(card, tx, ts_ms),
        **place_features("terminal", places.get("terminal"), ts_ms),
        **place_features("merchant", places.get("merchant"), ts_ms),
        **context_values(tx, ts_ms),
    }


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def tick_features(state: dict, ts_ms: int, price: float) -> dict:
    """Market features of a tick from the symbol's earlier ticks."""
    prices = [p for t, p in state["ticks"] if t < ts_ms] + [price]
    returns = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    out: dict = {"tick_log_return": returns[-1] if returns else None}
    for n in TICK_WINDOWS:
        out[f"tick_volatility_{n}"] = _std(returns[-n:]) if len(returns) >= n else None
    for n in TICK_WINDOWS:
        z = None
        if len(returns) > n:
            prev = returns[-n - 1 : -1]
            sd = _std(prev)
            z = (returns[-1] - sum(prev) / n) / sd if sd > 0 else None
        out[f"tick_return_zscore_{n}"] = z
    for n in TICK_WINDOWS:
        out[f"tick_momentum_{n}"] = math.log(price / prices[-1 - n]) if len(prices) > n else None
    return out


# ---- a micro-batch -----------------------------------------------------------------------------------------

NEW_STATE = {"card": new_card, "terminal": new_place, "merchant": new_place, "symbol": new_symbol}
StateGetter = Callable[[str, str], dict]  # (entity, key) -> that entity's state (a new one if unknown)


CHUNK = 5000  # transactions applied (and states pruned) at a time: bounds the raw events a feature scans


def chunks(txs: list[dict], fraud_labels: list[dict]) -> list[tuple[list[int], list[dict]]]:
    """A micro-batch in event-time chunks of about ``CHUNK`` transactions (indexes into ``txs``), each with the
    labels whose report time falls in it, so that states are pruned as time advances through a large batch."""
    order = sorted(range(len(txs)), key=lambda i: txs[i]["ts"])
    bounds, lo = [], 0
    while lo < len(order):
        hi = min(lo + CHUNK, len(order))
        while hi < len(order) and txs[order[hi]]["ts"] == txs[order[hi - 1]]["ts"]:
            hi += 1  # never split a millisecond: same-time events must land in one chunk
        bounds.append((lo, hi))
        lo = hi
    if len(bounds) <= 1:
        return [(order, fraud_labels)]
    starts = [txs[order[lo]]["ts"] for lo, _ in bounds]
    labels_of: list[list[dict]] = [[] for _ in bounds]
    for label in fraud_labels:
        labels_of[max(0, bisect.bisect_right(starts, label["reported_ms"]) - 1)].append(label)
    return [(order[lo:hi], labels) for (lo, hi), labels in zip(bounds, labels_of, strict=True)]


def card_step(state: StateGetter, txs: list[dict], retention_ms: int) -> tuple[list[dict], set[str]]:
    """Apply transactions to their cards, then compute each one's card and context features (in ``txs``
    order); prune the cards touched. Returns the rows and the card ids touched."""
    for tx in txs:
        apply_card(state("card", tx["card_id"]), tx, tx["ts"])
    rows = [{**card_features(state("card", tx["card_id"]), tx, tx["ts"]), **context_values(tx, tx["ts"])} for tx in txs]
    touched = {tx["card_id"] for tx in txs}
    for key in touched:
        prune_card(state("card", key), retention_ms)
    return rows, touched


def place_step(
    place: str, state: StateGetter, txs: list[dict], fraud_labels: list[dict], retention_ms: int
) -> tuple[list[dict], set[str]]:
    """Apply transactions and fraud labels to their ``place`` (terminal or merchant), then compute each
    transaction's features of that place (in ``txs`` order); prune the places touched."""
    column = f"{place}_id"
    touched: set[str] = set()
    for tx in txs:
        if (key := tx.get(column)) is not None:
            apply_place(state(place, key), tx["ts"], tx["transaction_id"], 0)
            touched.add(key)
    for label in fraud_labels:
        if (key := label.get(column)) is not None:
            apply_place(state(place, key), label["reported_ms"], label["transaction_id"], 1)
            touched.add(key)
    rows = [
        place_features(place, state(place, tx[column]) if tx.get(column) is not None else None, tx["ts"]) for tx in txs
    ]
    for key in touched:
        prune_place(state(place, key), retention_ms)
    return rows, touched


def transactions_batch(
    state: StateGetter, txs: list[dict], fraud_labels: list[dict], retention_ms: int
) -> tuple[list[dict], set[tuple[str, str]]]:
    """Apply a micro-batch to every entity's states, then compute each transaction's features (the card,
    terminal and merchant steps the stream runs as three stateful operators, here in one process).

    ``txs`` carry ``TRANSACTION_INPUTS`` and ``ts`` (event time, ms); ``fraud_labels`` carry transaction_id,
    terminal_id, merchant_id and ``reported_ms``. Features only see earlier events, so applying a batch first
    gives every transaction its point-in-time value whatever the order inside the batch; a replayed batch
    changes nothing (events are keyed by id). Each entity's values depend on its own events only, so the steps
    may run on any partition of the batch by entity. Returns the feature rows (in ``txs`` order) and the
    (entity, key) touched.
    """
    rows, cards = in_chunks(lambda chunk, _: card_step(state, chunk, retention_ms), txs, fraud_labels)
    touched = {("card", k) for k in cards}
    for place in PLACES:
        values, keys = in_chunks(lambda c, la, p=place: place_step(p, state, c, la, retention_ms), txs, fraud_labels)
        touched |= {(place, k) for k in keys}
        for row, more in zip(rows, values, strict=True):
            row.update(more)
    return rows, touched


Step = Callable[[list[dict], list[dict]], tuple[list[dict], set]]


def in_chunks(step: Step, txs: list[dict], fraud_labels: list[dict]) -> tuple[list[dict], set]:
    """``step(transactions, labels)`` over the batch's event-time ``chunks``: its rows in ``txs`` order and the
    union of what it touched."""
    rows: list[dict] = [{} for _ in txs]
    touched: set = set()
    for index, labels in chunks(txs, fraud_labels):
        out, keys = step([txs[i] for i in index], labels)
        touched |= keys
        for i, row in zip(index, out, strict=True):
            rows[i] = row
    return rows, touched


def ticks_batch(state: StateGetter, ticks: list[dict]) -> tuple[list[dict], set[tuple[str, str]]]:
    """Market features of a micro-batch of ticks (symbol, ts, price), applied in time order."""
    rows = []
    for tick in sorted(ticks, key=lambda t: t["ts"]):
        s = state("symbol", tick["symbol"])
        apply_tick(s, tick["ts"], tick["price"])
        rows.append(tick_features(s, tick["ts"], tick["price"]))
    order = sorted(range(len(ticks)), key=lambda i: ticks[i]["ts"])
    out = [None] * len(ticks)
    for i, row in zip(order, rows, strict=True):
        out[i] = row
    return out, {("symbol", t["symbol"]) for t in ticks}
