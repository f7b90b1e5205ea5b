"""Shared core of the fraud & risk lakehouse: settings, event contracts, event log, storage, Spark, stack."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
