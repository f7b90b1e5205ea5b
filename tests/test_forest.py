"""The compiled Isolation Forest gives scikit-learn's scores bit for bit, and the fast model input equals
``matrix``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakehouse.config import IsolationForestSettings
from training import forest
from training.dataset import FEATURES, array, matrix
from training.forest import CompiledForest
from training.models import fit_isolation_forest

COLUMNS = [f"f{i}" for i in range(12)]


def frame(n: int, seed: int, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame((rng.normal(size=(n, len(COLUMNS))) * scale).round(3), columns=COLUMNS)
    x.iloc[::7, 3] = np.nan  # unknowns: the imputer's median
    x.iloc[:, 5] = 1.0  # a constant column
    return x


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_scores_equal_scikit_learn_bit_for_bit(max_features):
    fitted = fit_isolation_forest(frame(3000, 1), IsolationForestSettings(max_features=max_features), 7)
    compiled = CompiledForest.of(fitted.estimator)
    x = frame(2000, 2, scale=3.0)  # out of the training range too
    x.iloc[::11] = np.nan  # rows of unknowns only
    np.testing.assert_array_equal(compiled.score(x.to_numpy()), -fitted.estimator.score_samples(x))
    np.testing.assert_array_equal(compiled.score(x.to_numpy()[:1]), -fitted.estimator.score_samples(x.iloc[:1]))


def test_chunks_give_the_same_scores(monkeypatch):
    fitted = fit_isolation_forest(frame(1000, 3), IsolationForestSettings(n_estimators=20), 7)
    x = frame(300, 4).to_numpy()
    whole = CompiledForest.of(fitted.estimator).score(x)
    monkeypatch.setattr(forest, "CHUNK", 7)
    np.testing.assert_array_equal(CompiledForest.of(fitted.estimator).score(x), whole)


def test_bad_input_is_refused_as_scikit_learn_refuses_it():
    fitted = fit_isolation_forest(frame(500, 5), IsolationForestSettings(n_estimators=10), 7)
    compiled = CompiledForest.of(fitted.estimator)
    with pytest.raises(ValueError, match="12 features"):
        compiled.score(np.zeros((1, 11)))
    x = frame(3, 6)
    x.iloc[1, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        compiled.score(x.to_numpy())
    with pytest.raises(ValueError, match="infinity"):
        fitted.estimator.score_samples(x)


def test_only_a_forest_compiles():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    with pytest.raises(TypeError, match="IsolationForest"):
        CompiledForest.of(Pipeline([("a", StandardScaler()), ("b", StandardScaler())]))


def test_array_equals_matrix():
    rows = [{f: (i * 0.5 if j % 3 else None) for j, f in enumerate(FEATURES)} for i in range(3)]
    rows[0][FEATURES[1]] = True
    rows[1][FEATURES[1]] = False
    np.testing.assert_array_equal(array(rows), matrix(rows).to_numpy())
    assert array([], FEATURES).shape == (0, len(FEATURES))
    with pytest.raises(KeyError, match=FEATURES[2]):
        array([{f: 1.0 for f in FEATURES if f != FEATURES[2]}])
