"""The code MLflow logs with every fraud model (models-from-code): it declares the pyfunc, ``FraudModel``, whose
kind and estimator come from the logged model's config and artifacts (``training/pyfunc.py``)."""

import mlflow

from training.pyfunc import FraudModel

mlflow.models.set_model(FraudModel())
