"""Shared core of the fraud & risk lakehouse (it imports no stage and no tool): settings, event contracts, the
event log, the catalog and the streaming topology, Delta and Spark, storage, quality, metrics."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
