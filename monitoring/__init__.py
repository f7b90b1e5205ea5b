"""Model and data monitoring (Part 7): the period report of volumes, decisions, model quality, drift and latency,
with drift alerts and metrics (``python -m monitoring report``, ``make report``)."""

import os

# see training/__init__.py: OpenMP threads sleep instead of spinning on a shared 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
