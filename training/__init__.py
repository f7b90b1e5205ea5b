"""Training: XGBoost and Isolation Forest trained, evaluated and registered in MLflow (Part 4)."""
