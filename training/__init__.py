"""Training: XGBoost and Isolation Forest trained, evaluated and registered in MLflow (Part 4)."""

import os

# OpenMP threads sleep instead of spinning between parallel regions: on a 2-core machine shared with the stream,
# spinning XGBoost/scikit-learn threads slow everything down many times over
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
