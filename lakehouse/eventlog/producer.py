"""Send ``(kind, event)`` streams to the event log: keyed, batched, paced by event time, with progress.

Delivery is at least once: through an event-log outage the producer holds its current batch (and reads no
further events) and retries it until the log is back, so nothing is lost, but a batch that was partly applied
before the connection broke is sent again whole. Bronze keeps both copies and silver drops the repeats by
``transaction_id`` (labels and ticks by their keys), so a repeat is harmless and a loss would not be.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from lakehouse.config import Settings
from lakehouse.contracts import KEY_FIELDS, TIME_FIELDS, encode
from lakehouse.eventlog import EventLog, EventLogError

TOPIC_OF_KIND = {"transaction": "transactions", "label": "labels", "market_tick": "market_ticks"}


def topic_for(settings: Settings, kind: str) -> str:
    return getattr(settings.eventlog.topics, TOPIC_OF_KIND[kind]).name


class UndeliveredError(EventLogError):
    """The event log stayed unreachable longer than the producer was allowed to wait: ``undelivered`` events
    (the batch it was holding) were not sent; ``sent`` were before."""

    def __init__(self, message: str, undelivered: int, sent: int):
        super().__init__(message)
        self.undelivered = undelivered
        self.sent = sent


@dataclass
class SendStats:
    sent: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    lag_s: float = 0.0
    retries: int = 0  # failed deliveries of a batch (each one retried after a backoff)
    outage_s: float = 0.0  # wall time spent waiting for an unreachable event log

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.sent.items()))
        rate = self.total / elapsed
        text = f"sent {self.total} ({kinds}) in {elapsed:.0f} s, {rate:.0f} events/s, lag {self.lag_s:.1f} s"
        if self.retries:
            text += f", {_count(self.retries, 'retry', 'retries')} over {self.outage_s:.1f} s of event-log outage"
        return text


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


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
    give_up_after_s: float | None = None,
    retry_initial_s: float = 0.5,
    retry_max_s: float = 10.0,
    out: TextIO = sys.stderr,
    sleep: Callable[[float], None] = time.sleep,
) -> SendStats:
    """Produce events in order. ``speedup`` > 0 paces by event time (1 = real time); 0 = as fast as possible.

    Stops after ``duration_s`` of wall time or ``max_events`` events, whichever comes first.

    At least once: when a batch fails with :class:`EventLogError` while the log does not answer, the batch is
    held and retried after ``retry_initial_s``, doubling up to ``retry_max_s``, with a progress line on ``out``;
    no further event is read meanwhile (memory stays bounded by one batch). A partly applied batch is sent again
    whole (repeats, never losses). After ``give_up_after_s`` of outage (None: ``traffic.outage_give_up_s`` of the
    settings, where null means forever; ``math.inf``: forever) it raises :class:`UndeliveredError`. An error
    while the log answers (e.g. a missing topic) is raised once a retry fails the same way. ``sleep`` waits
    between retries (a test's fake clock).
    """
    stats = SendStats()
    topics = {kind: topic_for(settings, kind) for kind in TOPIC_OF_KIND}
    pending: dict[str, list[tuple[str, bytes]]] = {}
    first_event_ms: int | None = None
    next_progress = stats.started + progress_every_s
    n_pending = 0
    if give_up_after_s is None:
        give_up_after_s = settings.traffic.outage_give_up_s
    give_up_s = math.inf if give_up_after_s is None else give_up_after_s

    def deliver() -> None:
        """Produce every pending batch; a kind is dropped from ``pending`` as soon as the log has it."""
        nonlocal n_pending
        for kind in list(pending):
            batch = pending[kind]
            if batch:
                log.produce_batch(topics[kind], batch)
                stats.sent[kind] += len(batch)
                n_pending -= len(batch)
            del pending[kind]

    def flush() -> None:
        outage_start: float | None = None
        delay = retry_initial_s
        refused = 0  # failures while the log answered: not an outage
        while True:
            attempt_start = time.monotonic()
            try:
                deliver()
            except EventLogError as exc:
                now = time.monotonic()
                if outage_start is None:
                    outage_start = attempt_start
                stats.retries += 1
                if log.ping():
                    refused += 1
                    if refused >= 2:
                        raise
                    continue  # the log answers again (or refuses): one immediate retry tells which
                refused = 0
                waited = now - outage_start
                if waited >= give_up_s:
                    stats.outage_s += waited
                    raise UndeliveredError(
                        f"event log unreachable for {waited:.1f} s (give-up after {give_up_s:g} s): "
                        f"{n_pending} events not delivered, {stats.total} sent before; last error: {exc}",
                        undelivered=n_pending,
                        sent=stats.total,
                    ) from exc
                wait = min(delay, retry_max_s, max(0.0, give_up_s - waited))
                print(
                    f"event log unreachable ({exc}): holding {_count(n_pending, 'event')}, retry in {wait:.1f} s "
                    f"(outage {waited:.1f} s so far)",
                    file=out,
                    flush=True,
                )
                try:
                    sleep(wait)
                except KeyboardInterrupt:
                    print(f"interrupted: {n_pending} held events not delivered", file=out, flush=True)
                    raise
                delay = min(delay * 2, retry_max_s)
                continue
            if outage_start is not None:
                outage = time.monotonic() - outage_start
                stats.outage_s += outage
                print(f"event log reachable again after {outage:.1f} s: held events delivered", file=out, flush=True)
            return

    for kind, event in events:
        t_ms = event[TIME_FIELDS[kind]]
        now = time.monotonic()
        if first_event_ms is None:
            first_event_ms = t_ms
        if speedup > 0:
            due = stats.started + (t_ms - first_event_ms) / 1000.0 / speedup
            if due > now:
                flush()
                now = time.monotonic()
                if due > now:
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
