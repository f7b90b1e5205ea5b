"""serving/api.py fuzzed from its own OpenAPI schema (schemathesis): whatever a client sends to any operation,
valid per the schema or not, the answer is never a 5xx. The app runs on the fakes of ``test_api`` (a real
``Scorer`` and online feature engine, canned lake rows), with the admin token so every request reaches its
handler, and a bounded number of examples per operation."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, ServerError
from test_api import FakeFeatures, FakeLake, FakeLog, models, tuned

import serving.api
from lakehouse.config import Settings, get_settings
from serving.api import Services, create_app
from serving.rules import RuleBook
from serving.scorer import Scorer

FUZZ = examples(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class _Up:
    """Readiness's Redis client and MLflow answer: both up."""

    status_code = 200

    def ping(self) -> bool:
        return True


def build(settings: Settings, root) -> tuple[object, Services]:
    rules = RuleBook(settings.path(settings.decision.rules_file), reload_seconds=3600)
    services = Services(Scorer(settings, models(), rules=rules), FakeFeatures(), FakeLake(), FakeLog())
    return create_app(tuned(settings, root), lambda: services), services


@pytest.fixture(scope="module")
def offline():
    """Readiness never reaches the machine's Redis or MLflow."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving.api.redis.Redis, "from_url", lambda *a, **k: _Up())
        mp.setattr(serving.api.httpx, "get", lambda *a, **k: _Up())
        yield


@pytest.fixture(scope="module")
def admin(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api.tokens['admin'].token.get_secret_value()}"}


# the schema (and the app behind it) exist at import, for schemathesis to parametrize the test by operation
# (its fixture-based loader, ``schemathesis.pytest.from_fixture``, relies on pytest internals pytest 9 dropped)
ROOT = Path(tempfile.mkdtemp(prefix="api-fuzz-"))  # the audit log
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)
APP, SERVICES = build(get_settings(), ROOT)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=schemathesis.Config())


def reached_its_handler(ctx, response, case) -> None:
    """The token was accepted and not rate limited: the request was really exercised, not refused at the door."""
    assert response.status_code not in (401, 403, 429), f"refused: {response.status_code} {response.text[:200]}"


@schema.parametrize()
@FUZZ
def test_no_server_error(case, admin, offline):
    """Every operation, with schemathesis's coverage phase (boundary and invalid values, other methods) and
    fuzzing phase, positive and negative: a 4xx at worst."""
    case.call_and_validate(headers=admin, checks=[not_a_server_error, reached_its_handler])


def test_every_operation_is_fuzzed():
    ops = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert len(ops) == 10 and ("POST", "/v1/transactions/score/batch") in ops


def test_the_fuzzer_finds_a_planted_server_error(settings: Settings, tmp_path, admin, offline):
    """The harness can fail: a feature engine that raises on cross-border transactions (country not FR) makes
    the score operation answer 500, and the fuzzer finds it from the schema alone (derandomized: the same
    examples every run)."""
    app, services = build(settings, tmp_path)
    services.features.fail = lambda tx: tx["country"] != "FR"
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config())
    operation = loaded["/v1/transactions/score"]["POST"]

    @given(case=operation.as_strategy())
    @examples(FUZZ, derandomize=True)
    def fuzz(case):
        case.call_and_validate(headers=admin, checks=[not_a_server_error])

    with pytest.raises((Failure, BaseExceptionGroup)) as info:
        fuzz()
    assert any(isinstance(e, ServerError) for e in failures(info.value)), info.value


def failures(exc: BaseException) -> list[BaseException]:
    """The exceptions of a (nested) exception group, or the exception."""
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in failures(sub)]
    return [exc]
