"""Send ``(kind, event)`` streams to the event log: keyed, batched, paced by event time, with progress."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from lakehouse.config import Settings
from lakehouse.contracts import KEY_FIELDS, TIME_FIELDS, encode
from lakehouse.eventlog import EventLog

TOPIC_OF_KIND = {"transaction": "transactions", "label": "labels", "market_tick": "market_ticks"}


def topic_for(settings: Settings, kind: str) -> str:
    return getattr(settings.eventlog.topics, TOPIC_OF_KIND[kind]).name


@dataclass
class SendStats:
    sent: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    lag_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.sent.items()))
        rate = self.total / elapsed
        return f"sent {self.total} ({kinds}) in {elapsed:.0f} s, {rate:.0f} events/s, lag {self.lag_s:.1f} s"


def send(
    events: Iterable[tuple[str, dict]],
    log: EventLog,
    settings: Settings,
    *,
    speedup: float = 1.0,
    duration_s: float | None = None,
    max_events: int | None = None,
    batch_size: int = 500,
    progress_every_s: float = 5.0,
    out: TextIO = sys.stderr,
) -> SendStats:
    """Produce events in order. ``speedup`` > 0 paces by event time (1 = real time); 0 = as fast as possible.

    Stops after ``duration_s`` of wall time or ``max_events`` events, whichever comes first.
    """
    stats = SendStats()
    topics = {kind: topic_for(settings, kind) for kind in TOPIC_OF_KIND}
    pending: dict[str, list[tuple[str, bytes]]] = {}
    first_event_ms: int | None = None
    next_progress = stats.started + progress_every_s
    n_pending = 0

    def flush() -> None:
        nonlocal n_pending
        for kind, batch in pending.items():
            if batch:
                log.produce_batch(topics[kind], batch)
                stats.sent[kind] += len(batch)
        pending.clear()
        n_pending = 0

    for kind, event in events:
        t_ms = event[TIME_FIELDS[kind]]
        now = time.monotonic()
        if first_event_ms is None:
            first_event_ms = t_ms
        if speedup > 0:
            due = stats.started + (t_ms - first_event_ms) / 1000.0 / speedup
            if due > now:
                flush()
                time.sleep(due - now)
                now = time.monotonic()
            stats.lag_s = max(0.0, now - due)
        if duration_s is not None and now - stats.started >= duration_s:
            break
        pending.setdefault(kind, []).append((event[KEY_FIELDS[kind]], encode(event)))
        n_pending += 1
        if n_pending >= batch_size:
            flush()
        if now >= next_progress:
            flush()
            print(stats.line(), file=out, flush=True)
            next_progress = now + progress_every_s
        if max_events is not None and stats.total + n_pending >= max_events:
            break
    flush()
    print(stats.line(), file=out, flush=True)
    return stats
