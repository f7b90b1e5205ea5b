"""Time-based evaluation periods: train, then a gap as long as the label delay, then test (never a random split).

The gap keeps the test period's transactions out of the training labels' window: a model trained on labels
known at the end of training must not be scored on transactions whose features already saw those labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Periods:
    train_start: date
    train_end: date
    test_start: date
    test_end: date

    @property
    def gap_days(self) -> int:
        return (self.test_start - self.train_end).days - 1


def periods(start: date, end: date, train_days: int, gap_days: int, test_days: int) -> Periods:
    """``train_days`` from ``start``, ``gap_days`` unused, then ``test_days``; all of it within ``end``."""
    if min(train_days, test_days) < 1 or gap_days < 0:
        raise ValueError("train_days and test_days must be >= 1 and gap_days >= 0")
    train_end = start + timedelta(days=train_days - 1)
    test_start = train_end + timedelta(days=gap_days + 1)
    test_end = test_start + timedelta(days=test_days - 1)
    if test_end > end:
        raise ValueError(
            f"{train_days} train + {gap_days} gap + {test_days} test days do not fit in {start}..{end} "
            f"({(end - start).days + 1} days)"
        )
    return Periods(start, train_end, test_start, test_end)
