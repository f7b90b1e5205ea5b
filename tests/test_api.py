"""serving/api.py: every route, authentication and scopes, the rate limit, request validation, errors, the audit
log, metrics and readiness. No services: the app runs on fakes (``Services``) and a real ``Scorer`` with fake
models, so a score is what ``Scorer.decide`` answers for the same enriched transaction and feature vector."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_scorer import FakeModel

import serving.api
from features.request import ReferenceLookup, RequestFeatures
from features.store import OnlineStoreUnavailable
from lakehouse.catalog import DECISIONS_TABLE, TRANSACTIONS
from lakehouse.config import Settings
from lakehouse.contracts import Limits, schema
from lakehouse.maintenance import TimeTravelError
from lakehouse.streaming import checkpoint_dir
from serving import schemas
from serving.api import Services, create_app
from serving.lake import LakeReader
from serving.rules import RuleBook
from serving.scorer import Models, Scorer

LOADED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# --------------------------------------------------------------------------------------------------------------
# fakes


class AmountModel(FakeModel):
    """A supervised model whose probability grows with the amount: ~0.33 at 25 (approve), ~0.85 at 5,000 (the
    review band of its thresholds), 0.99 at 50,000 (block)."""

    def score(self, x: pd.DataFrame) -> pd.Series:
        super().score(x)
        return (x["amount_log"].fillna(0) / 10).clip(0, 0.99).rename("score")


class Loader:
    """A ``ModelLoader`` for the scorer and ``/v1/models``: name, alias and the current model."""

    def __init__(self, model: FakeModel, alias: str):
        model.loaded_at = LOADED_AT.timestamp()
        self.model, self.name, self.alias = model, model.name, alias

    @property
    def current(self) -> FakeModel:
        return self.model


class FakeStore:
    """The online store: knows no entity (every state is new), or is down (``up = False``)."""

    def __init__(self):
        self.up = True

    def load(self, keys):
        if not self.up:
            raise OnlineStoreUnavailable("online store unreachable: connection refused")
        return dict.fromkeys(keys)


class FakeReference(ReferenceLookup):
    """Reference tables as canned dicts (no Delta)."""

    def __init__(self):
        self.versions = {}
        self.tables = {
            "mcc": {c: {"mcc_risk_tier": t} for c, t in (("5411", "low"), ("6011", "medium"), ("7995", "high"))},
            "countries": {"FR": {"country_risk_tier": "standard"}, "KP": {"country_risk_tier": "high"}},
            "terminals": {"term-1": {"terminal_lat": 48.86, "terminal_lon": 2.35}},
            "merchants": {"merch-1": {"merchant_lat": 48.85, "merchant_lon": 2.34}},
        }


class FakeFeatures(RequestFeatures):
    """``RequestFeatures`` on a fake store and reference: the real online engine on new states, or the real
    degraded answer when the store is down. ``fail(tx)`` true makes ``compute`` raise."""

    def __init__(self):
        self.store, self.reference = FakeStore(), FakeReference()
        self.fail = None

    def compute(self, tx):
        if self.fail is not None and self.fail(tx):
            raise RuntimeError("feature engine exploded: secret-internal-detail")
        return super().compute(tx)


def decision_row(tx_id: str, card_id: str, decision: str, event_time: datetime, **fields) -> dict:
    """A gold.decisions row as the stream writes it (every column of the table)."""
    flagged = decision != "approve"
    row = {
        "transaction_id": tx_id,
        "card_id": card_id,
        "event_time": event_time,
        "decision": decision,
        "score": {"approve": 12.0, "review": 64.0, "block": 100.0}[decision],
        "driver": "rules" if flagged else "ml",
        "rules_score": 70.0 if flagged else None,
        "statistical_score": 5.0,
        "ml_score": 12.0,
        "ml_probability": 0.1,
        "anomaly_score": None,
        "anomaly_raw": None,
        "triggered_rules": ["R001"] if flagged else [],
        "reasons": ["VELOCITY_5M"] if flagged else [],
        "route": "champion",
        "model_name": "fraud_xgb",
        "model_version": "3",
        "anomaly_model_version": "1",
        "shadow_model_version": "4",
        "shadow_probability": 0.2,
        "shadow_decision": "approve",
        "rules_version": "rules.yaml@1",
        "features": "{}",
        "scoring_ms": 0.4,
        "log_time": event_time + timedelta(milliseconds=5),
        "decided_at": event_time + timedelta(milliseconds=40),
        "latency_ms": 35.0,
        "event_date": event_time.date(),
        **fields,
    }
    assert set(row) == set(DECISIONS_TABLE.schema.names)
    return row


DAY = date(2024, 5, 1)
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
CARD = "card-00042"
DECISIONS = [
    decision_row("tx-a", CARD, "approve", T0),
    decision_row("tx-b", CARD, "review", T0 + timedelta(hours=1)),
    decision_row("tx-c", CARD, "approve", T0 + timedelta(hours=2)),
    decision_row("tx-d", "card-00007", "block", T0),
]
SUMMARY = {
    "event_date": DAY,
    "total_count": 1200,
    "total_amount": 54_321.5,
    "fraud_count": 12,
    "fraud_amount": 3_210.0,
    "labelled_count": 900,
    "fraud_rate": 0.0133,
    "active_cards": 400,
    "flagged_count": 30,
    "blocked_count": 4,
    "false_positive_rate": 0.6,
    "computed_at": datetime(2024, 5, 2, 1, 0, tzinfo=UTC),
}
TABLES = {"silver.transactions", "gold.decisions", "gold.fraud_summary_daily"}


class FakeLake:
    """``LakeReader`` answers from canned rows; a method named in ``fail`` raises RuntimeError."""

    def __init__(self):
        self.decisions = {r["transaction_id"]: r for r in DECISIONS}
        self.fail: set[str] = set()
        self.calls: list[tuple] = []

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise RuntimeError(f"{name} failed: /secret/path/to/table")

    def verdict(self, transaction_id):
        self._call("verdict", transaction_id)
        return self.decisions.get(transaction_id)

    def card_history(self, card_id, limit):
        self._call("card_history", card_id, limit)
        rows = [r for r in self.decisions.values() if r["card_id"] == card_id]
        return sorted(rows, key=lambda r: r["event_time"], reverse=True)[:limit]

    def fraud_summary(self, day):
        self._call("fraud_summary", day)
        return SUMMARY if day == DAY else None

    def audit(self, transaction_id, version, as_of):
        self._call("audit", transaction_id, version, as_of)
        if version is not None and version >= 1000:
            raise TimeTravelError(f"silver/transactions: version {version} is older than the oldest version kept")
        if version is not None and version > 5:
            raise TimeTravelError(f"silver/transactions: no version {version} yet (latest is 5)")
        decision = self.decisions.get(transaction_id)
        row = None if decision is None else {"transaction_id": transaction_id, "amount": 25.0, "label": None}
        return {
            "transaction_id": transaction_id,
            "as_of": as_of or T0,
            "silver": {"table": TRANSACTIONS.full_name, "version": version if version is not None else 5, "row": row},
            "label": None if row is None else {"label": None, "reported_at": None, "scenario": None},
            "decision": {"table": DECISIONS_TABLE.full_name, "version": 7, "row": decision},
            "model": None if decision is None else {"name": decision["model_name"], "version": "3"},
        }

    def public(self, message: str) -> str:
        return message.replace("silver/transactions", TRANSACTIONS.full_name)

    def table_history(self, full_name, limit):
        self._call("table_history", full_name, limit)
        if full_name not in TABLES:
            raise KeyError(f"unknown table {full_name!r}")
        commits = [
            {"version": v, "timestamp": T0 + timedelta(minutes=v), "operation": "STREAMING UPDATE",
             "parameters": {"outputMode": "Append"}, "query_id": "q-1", "batch_id": v, "metrics": {"numFiles": "1"}}
            for v in range(9, -1, -1)
        ]  # fmt: skip
        return commits[:limit]

    def reachable(self):
        self._call("reachable")
        return True


class FakeLog:
    def __init__(self):
        self.up, self.closed = True, False

    def ping(self):
        return self.up

    def end_offsets(self, topic):
        return {0: 10, 1: 5}

    def close(self):
        self.closed = True


class Deps:
    """What ``/v1/ready`` reaches besides the services: Redis (online store) and MLflow's /health."""

    def __init__(self):
        self.redis_ok, self.mlflow_status, self.urls = True, 200, []


# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers


def models() -> Models:
    return Models(
        Loader(AmountModel("3", name="fraud_xgb"), "champion"),
        Loader(AmountModel("4", name="fraud_xgb"), "challenger"),
        Loader(FakeModel("1", 0.3, name="fraud_iforest", thresholds={"review": 0.6, "block": 0.8}), "champion"),
    )


def tuned(settings: Settings, tmp_path: Path, **api) -> Settings:
    """The test profile with the audit log and the checkpoints (consumer lag) under ``tmp_path``."""
    return settings.model_copy(
        update={
            "api": settings.api.model_copy(update={"audit_log": str(tmp_path / "audit" / "api.jsonl"), **api}),
            "spark": settings.spark.model_copy(update={"checkpoint_root": str(tmp_path / "checkpoints")}),
        }
    )


@pytest.fixture(scope="module")
def rulebook(settings: Settings) -> RuleBook:
    return RuleBook(settings.path(settings.decision.rules_file), reload_seconds=3600)


@pytest.fixture
def services(settings: Settings, rulebook: RuleBook) -> Services:
    return Services(Scorer(settings, models(), rules=rulebook), FakeFeatures(), FakeLake(), FakeLog())


@pytest.fixture
def deps(monkeypatch) -> Deps:
    """Readiness's Redis and MLflow checks answered by fakes (never the machine's services)."""
    found = Deps()

    class Client:
        def ping(self):
            if not found.redis_ok:
                raise serving.api.redis.ConnectionError("Error 111 connecting to redis: Connection refused")
            return True

    class Answer:
        def __init__(self, code):
            self.status_code = code

    def from_url(url, **kwargs):
        found.urls.append(url)
        return Client()

    def get(url, **kwargs):
        found.urls.append(url)
        return Answer(found.mlflow_status)

    monkeypatch.setattr(serving.api.redis.Redis, "from_url", from_url)
    monkeypatch.setattr(serving.api.httpx, "get", get)
    return found


@pytest.fixture
def make_client(settings: Settings, services: Services, deps: Deps, tmp_path: Path):
    """``make_client(**api settings)`` -> a started ``TestClient`` (lifespan run) on the fakes."""
    clients = []

    def build(**api) -> TestClient:
        app = create_app(tuned(settings, tmp_path, **api), lambda: services)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def auth(settings: Settings) -> dict[str, dict]:
    """name -> headers with that token of the test profile."""
    return {n: {"Authorization": f"Bearer {t.token.get_secret_value()}"} for n, t in settings.api.tokens.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


def tx(i: int = 0, **fields) -> dict:
    out = {
        "transaction_id": f"tx-{i:05d}",
        "event_time": now_ms() - 60_000,
        "card_id": f"card-{i:05d}",
        "customer_id": "cust-1",
        "merchant_id": "merch-1",
        "merchant_category_code": "5411",
        "terminal_id": "term-1",
        "amount": 25.0,
        "currency": "EUR",
        "channel": "POS",
        "card_present": True,
        "country": "FR",
        "lat": None,
        "lon": None,
        "transaction_type": "PURCHASE",
        **fields,
    }
    return {k: v for k, v in out.items() if v is not ...}


def expected(services: Services, txs: list[dict]) -> list[dict]:
    """What ``Scorer.decide`` answers for these transactions (enriched) and their feature vectors, as the API's
    response body, without the latency."""
    f = services.features
    results = [f.compute(t) for t in txs]
    rows = services.scorer.decide([f.reference.enrich(t) for t in txs], [r.values for r in results])
    out = []
    for row, r in zip(rows, results, strict=True):
        body = schemas.Score.of(row, r.status, r.reason, 0.0).model_dump(mode="json")
        out.append({k: v for k, v in body.items() if k != "latency_ms"})
    return out


def without_latency(body: dict) -> dict:
    assert body["latency_ms"] >= 0
    return {k: v for k, v in body.items() if k != "latency_ms"}


def error(response, status: int = 422) -> dict:
    """The one error of a 422 answer (``detail=[{loc, msg, type}]``)."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and len(detail) == 1, detail
    assert set(detail[0]) >= {"loc", "msg", "type"}
    return detail[0]


def audit_lines(settings: Settings, tmp_path: Path) -> list[dict]:
    path = tuned(settings, tmp_path).path(tuned(settings, tmp_path).api.audit_log)  # where the app writes it
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


SCORE = "/v1/transactions/score"
BATCH = "/v1/transactions/score/batch"


# --------------------------------------------------------------------------------------------------------------
# 1. scoring: the same decision as Scorer.decide


@pytest.mark.parametrize(
    ("fields", "decision"),
    [
        ({}, "approve"),
        ({"amount": 5_000.0}, "review"),  # the model's review band (and no rule)
        ({"amount": 50_000.0}, "block"),  # the model's block band; and the MCC amount limit rule
        ({"country": "KP"}, "block"),  # a blocked country (rule R004)
        ({"merchant_category_code": "6011", "amount": 1_500.0, "channel": "ATM"}, None),  # the ATM amount limit
    ],
)
def test_score_equals_scorer_decide(client, auth, services, fields, decision):
    t = tx(1, **fields)
    r = client.post(SCORE, json=t, headers=auth["scorer"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert without_latency(body) == expected(services, [t])[0]
    assert body["features_status"] == "ok" and body["degraded_reason"] is None
    if decision:
        assert body["decision"] == decision
    assert body["model"] == {"name": "fraud_xgb", "version": "3", "route": "champion"}
    assert body["shadow"]["version"] == "4"  # routing "shadow": the challenger scored beside
    assert body["anomaly_model_version"] == "1"


def test_score_reasons_and_rules(client, auth):
    body = client.post(SCORE, json=tx(2, country="KP"), headers=auth["admin"]).json()
    assert body["decision"] == "block" and "R004" in body["triggered_rules"] and "BLOCKED_COUNTRY" in body["reasons"]
    assert body["tier_scores"]["rules"] == 100
    body = client.post(SCORE, json=tx(3, amount=5_000.0), headers=auth["admin"]).json()
    assert body["decision"] == "review" and "ML_AMOUNT_LOG" in body["reasons"]  # the model's SHAP reason


def test_score_batch_equals_scorer_decide(client, auth, services):
    txs = [tx(i, amount=a) for i, a in enumerate((25.0, 5_000.0, 50_000.0, 12.0))]
    r = client.post(BATCH, json={"transactions": txs}, headers=auth["scorer"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [without_latency(s) for s in body["results"]] == expected(services, txs)
    assert [s["transaction_id"] for s in body["results"]] == [t["transaction_id"] for t in txs]
    assert body["latency_ms"] >= 0


def test_score_accepts_the_contract_as_the_stream_does(client, auth):
    """Optional fields may be absent or null; a minimal transaction scores."""
    minimal = tx(4, terminal_id=..., lat=..., lon=...)
    assert client.post(SCORE, json=minimal, headers=auth["scorer"]).status_code == 200
    full = tx(5, lat=48.8, lon=2.3, device_id="dev-1", ip_hash="ip-1")
    assert client.post(SCORE, json=full, headers=auth["scorer"]).status_code == 200


def test_degraded_features_are_flagged(client, auth, services):
    services.features.store.up = False
    t = tx(6)
    body = client.post(SCORE, json=t, headers=auth["scorer"]).json()
    assert body["features_status"] == "degraded"
    assert "online store unreachable" in body["degraded_reason"]
    assert without_latency(body) == expected(services, [t])[0]  # still the scorer's decision, on what is known
    batch = client.post(BATCH, json={"transactions": [tx(7), tx(8)]}, headers=auth["scorer"]).json()
    assert {s["features_status"] for s in batch["results"]} == {"degraded"}
    text = client.get("/metrics").text
    assert metric(text, "fraud_api_degraded_scores_total") == 3
    assert metric(text, "fraud_api_decisions_total", decision="approve") == 3


# --------------------------------------------------------------------------------------------------------------
# 2. reading: verdicts, card history, fraud summary, models


def test_verdict(client, auth):
    r = client.get("/v1/transactions/tx-b/verdict", headers=auth["reader"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transaction_id"] == "tx-b" and body["decision"] == "review" and body["reasons"] == ["VELOCITY_5M"]
    assert set(body) == set(schemas.Verdict.model_fields)
    assert datetime.fromisoformat(body["event_time"]) == T0 + timedelta(hours=1)


def test_verdict_404(client, auth):
    r = client.get("/v1/transactions/tx-nope/verdict", headers=auth["reader"])
    assert r.status_code == 404 and "tx-nope" in r.json()["detail"]


def test_card_history(client, auth):
    r = client.get(f"/v1/cards/{CARD}/history", headers=auth["reader"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["card_id"] == CARD and body["risk_tier"] == "elevated"
    assert [d["transaction_id"] for d in body["decisions"]] == ["tx-c", "tx-b", "tx-a"]  # newest first
    assert [d["transaction_id"] for d in body["alerts"]] == ["tx-b"]
    limited = client.get(f"/v1/cards/{CARD}/history", params={"limit": 1}, headers=auth["reader"]).json()
    assert [d["transaction_id"] for d in limited["decisions"]] == ["tx-c"]
    blocked = client.get("/v1/cards/card-00007/history", headers=auth["reader"]).json()
    assert blocked["risk_tier"] == "high"


def test_card_history_unknown_card(client, auth, settings):
    """No 404 for a card without decisions: an empty history and an unknown tier."""
    body = client.get("/v1/cards/card-unknown/history", headers=auth["reader"]).json()
    assert body == {"card_id": "card-unknown", "risk_tier": "unknown", "decisions": [], "alerts": []}
    assert client.get("/v1/cards/short/history", headers=auth["reader"]).status_code == 422  # min 8 characters
    over = settings.api.history_max + 1
    r = client.get(f"/v1/cards/{CARD}/history", params={"limit": over}, headers=auth["reader"])
    assert r.status_code == 422


def test_fraud_summary(client, auth):
    r = client.get("/v1/metrics/fraud-summary", params={"date": DAY.isoformat()}, headers=auth["reader"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["event_date"] == "2024-05-01" and body["fraud_count"] == 12 and body["false_positive_rate"] == 0.6


def test_fraud_summary_404_and_bad_date(client, auth):
    r = client.get("/v1/metrics/fraud-summary", params={"date": "2020-01-01"}, headers=auth["reader"])
    assert r.status_code == 404 and "2020-01-01" in r.json()["detail"]
    assert (
        client.get("/v1/metrics/fraud-summary", params={"date": "yesterday"}, headers=auth["reader"]).status_code == 422
    )
    assert client.get("/v1/metrics/fraud-summary", headers=auth["reader"]).status_code == 422


def test_models_lists_the_loaders_versions(client, auth):
    r = client.get("/v1/models", headers=auth["reader"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["routing"] == "shadow" and body["split_percent"] == 10.0
    got = {(m["role"], m["name"], m["alias"], m["version"]) for m in body["models"]}
    assert got == {
        ("champion", "fraud_xgb", "champion", "3"),
        ("challenger", "fraud_xgb", "challenger", "4"),
        ("anomaly", "fraud_iforest", "champion", "1"),
    }
    assert {datetime.fromisoformat(m["loaded_at"]) for m in body["models"]} == {LOADED_AT}


def test_models_without_a_registered_model(make_client, auth, services):
    services.scorer.models.challenger = None

    class Unset:
        name, alias = "fraud_iforest", "champion"

        @property
        def current(self):
            raise LookupError("models:/fraud_iforest@champion is not set")

    services.scorer.models.anomaly = Unset()
    body = make_client().get("/v1/models", headers=auth["reader"]).json()
    assert [(m["role"], m["version"], m["loaded_at"]) for m in body["models"]] == [
        ("champion", "3", LOADED_AT.isoformat().replace("+00:00", "Z")),
        ("anomaly", None, None),
    ]


def test_unknown_route_is_404(client, auth):
    assert client.get("/v1/nope", headers=auth["admin"]).status_code == 404


# --------------------------------------------------------------------------------------------------------------
# 3. audit: time travel and the audit log


def test_audit_transaction(client, auth, settings, tmp_path):
    r = client.get("/v1/audit/transactions/tx-b", params={"version": 3}, headers=auth["auditor"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["silver"] == {"table": "silver.transactions", "version": 3, "row": body["silver"]["row"]}
    assert body["decision"]["row"]["transaction_id"] == "tx-b" and body["model"] == {
        "name": "fraud_xgb",
        "version": "3",
    }
    r = client.get("/v1/audit/transactions/tx-b", params={"as_of": "2024-05-01T10:00:00"}, headers=auth["auditor"])
    assert r.status_code == 200, r.text
    lines = audit_lines(settings, tmp_path)
    assert [(e["principal"], e["status"], e["call"]) for e in lines] == [
        ("auditor", 200, "/v1/audit/transactions/tx-b"),
        ("auditor", 200, "/v1/audit/transactions/tx-b"),
    ]
    assert lines[0]["query"] == {"version": "3"} and lines[1]["query"] == {"as_of": "2024-05-01T10:00:00"}
    assert datetime.fromisoformat(lines[0]["at"]).tzinfo is not None


def test_audit_naive_as_of_is_utc(client, auth, services):
    client.get("/v1/audit/transactions/tx-b", params={"as_of": "2024-05-01T10:00:00"}, headers=auth["auditor"])
    (name, tx_id, version, as_of) = services.lake.calls[-1]
    assert (name, tx_id, version, as_of) == ("audit", "tx-b", None, datetime(2024, 5, 1, 10, tzinfo=UTC))


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"version": 3}, 404),  # in neither table
        ({"version": 6}, 404),  # no such version yet
        ({"version": 1000}, 410),  # older than the log retention kept
    ],
)
def test_audit_transaction_404_and_410(client, auth, settings, tmp_path, params, status):
    tx_id = "tx-nope" if params["version"] == 3 else "tx-b"
    r = client.get(f"/v1/audit/transactions/{tx_id}", params=params, headers=auth["admin"])
    assert r.status_code == status, r.text
    assert "silver/transactions" not in r.text  # the table's name, never its storage location
    assert [(e["principal"], e["status"]) for e in audit_lines(settings, tmp_path)] == [("admin", status)]


@pytest.mark.parametrize("params", [{}, {"version": 1, "as_of": "2024-05-01T00:00:00Z"}, {"version": -1}])
def test_audit_needs_exactly_one_of_version_or_as_of(client, auth, params):
    assert client.get("/v1/audit/transactions/tx-b", params=params, headers=auth["auditor"]).status_code == 422


def test_table_history(client, auth, settings, tmp_path):
    r = client.get("/v1/audit/tables/gold.decisions/history", params={"limit": 3}, headers=auth["auditor"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["table"] == "gold.decisions" and [c["version"] for c in body["commits"]] == [9, 8, 7]
    assert body["commits"][0]["batch_id"] == 9 and body["commits"][0]["operation"] == "STREAMING UPDATE"
    r = client.get("/v1/audit/tables/gold.nope/history", headers=auth["auditor"])
    assert r.status_code == 404 and "gold.nope" in r.json()["detail"]
    assert client.get("/v1/audit/tables/Gold.Decisions/history", headers=auth["auditor"]).status_code == 422
    lines = audit_lines(settings, tmp_path)
    assert [(e["principal"], e["status"], e["call"], e["query"]) for e in lines] == [
        ("auditor", 200, "/v1/audit/tables/gold.decisions/history", {"limit": "3"}),
        ("auditor", 404, "/v1/audit/tables/gold.nope/history", {}),
    ]


def test_audit_log_records_a_failed_call_as_failed(client, auth, services, settings, tmp_path):
    services.lake.fail = {"audit", "table_history"}
    assert client.get("/v1/audit/transactions/tx-b", params={"version": 1}, headers=auth["auditor"]).status_code == 500
    assert client.get("/v1/audit/tables/gold.decisions/history", headers=auth["auditor"]).status_code == 500
    assert [e["status"] for e in audit_lines(settings, tmp_path)] == [500, 500]


def test_real_lake_reader_before_the_first_batch(make_client, auth, services, settings, tmp_path):
    """The real ``LakeReader`` on a lakehouse without tables (a fresh deployment): answers, not 500s."""
    empty = settings.model_copy(
        update={"lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path / "lakehouse")})}
    )
    lake = LakeReader(empty)
    assert lake.verdict("tx-a") is None and lake.card_history(CARD, 5) == [] and lake.fraud_summary(DAY) is None
    assert lake.reachable() is False and lake.table_history("gold.decisions", 5) == []
    with pytest.raises(TimeTravelError, match="no such table yet"):
        lake.audit("tx-a", 0, None)
    services.lake = lake
    client = make_client()
    assert client.get("/v1/transactions/tx-a/verdict", headers=auth["admin"]).status_code == 404
    assert client.get("/v1/audit/transactions/tx-a", params={"version": 0}, headers=auth["admin"]).status_code == 404
    r = client.get("/v1/audit/tables/silver.transactions/history", headers=auth["admin"])
    assert r.status_code == 200 and r.json()["commits"] == []


# --------------------------------------------------------------------------------------------------------------
# 4. authentication, scopes, rate limit

ROUTES = [
    ("post", SCORE, "score"),
    ("post", BATCH, "score"),
    ("get", "/v1/transactions/tx-a/verdict", "read"),
    ("get", f"/v1/cards/{CARD}/history", "read"),
    ("get", "/v1/metrics/fraud-summary?date=2024-05-01", "read"),
    ("get", "/v1/models", "read"),
    ("get", "/v1/ready", "read"),
    ("get", "/v1/audit/transactions/tx-a?version=1", "audit"),
    ("get", "/v1/audit/tables/gold.decisions/history", "audit"),
]


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
@pytest.mark.parametrize(
    "header",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer not-a-known-token-0000", "test-admin-token-0123456789"],
)
def test_no_or_unknown_token_is_401(client, method, path, scope, header):
    headers = {} if header is None else {"Authorization": header}
    r = client.request(method, path, headers=headers, json=tx() if method == "post" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]


def test_token_prefix_or_case_is_not_enough(client, auth):
    token = auth["admin"]["Authorization"].split(" ", 1)[1]
    for wrong in (token[:-1], token + "x", token.upper(), " " + token[1:]):
        r = client.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401, wrong
    assert client.get("/v1/models", headers={"Authorization": f"bearer {token}"}).status_code == 200  # scheme: any case


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_token_without_the_scope_is_403(client, auth, settings, method, path, scope):
    lacking = [n for n, t in settings.api.tokens.items() if scope not in t.scopes]
    assert lacking
    for name in lacking:
        r = client.request(method, path, headers=auth[name], json=tx() if method == "post" else None)
        assert r.status_code == 403, (name, r.text)
        assert f"'{scope}' scope" in r.json()["detail"] and name in r.json()["detail"]
        assert "www-authenticate" not in r.headers


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_tokens_with_the_scope_pass(client, auth, settings, method, path, scope):
    for name, t in settings.api.tokens.items():
        if scope in t.scopes:
            r = client.request(method, path, headers=auth[name], json=tx() if method == "post" else None)
            assert r.status_code not in (401, 403), (name, r.text)


def test_health_and_metrics_need_no_token(client):
    assert client.get("/v1/health").json() == {"status": "ok"}
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_rate_limit_is_429_with_retry_after(make_client, auth):
    client = make_client(rate_limit_per_s=0.01, rate_limit_burst=2)
    assert [client.get("/v1/models", headers=auth["reader"]).status_code for _ in range(2)] == [200, 200]
    r = client.get("/v1/models", headers=auth["reader"])
    assert r.status_code == 429 and "reader" in r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 100  # one token in 100 s
    assert client.get("/v1/models", headers=auth["auditor"]).status_code == 200  # a bucket per token
    assert client.get("/v1/health").status_code == 200  # no token, no limit
    assert client.get("/v1/models").status_code == 401  # refused before any bucket


def test_rate_limit_refills(make_client, auth):
    client = make_client(rate_limit_per_s=4, rate_limit_burst=1)  # a token every 250 ms: no refill between calls
    assert client.get("/v1/models", headers=auth["reader"]).status_code == 200
    assert client.get("/v1/models", headers=auth["reader"]).status_code == 429
    time.sleep(0.3)
    assert client.get("/v1/models", headers=auth["reader"]).status_code == 200


# --------------------------------------------------------------------------------------------------------------
# 5. request validation: the transaction contract, as the stream checks it


@pytest.mark.parametrize(
    ("change", "loc", "reason"),
    [
        ({"amount": ...}, ["body", "amount"], "schema_required"),
        ({"card_id": ...}, ["body", "card_id"], "schema_required"),
        ({"amount": "12.50"}, ["body", "amount"], "schema_type"),
        ({"card_present": "yes"}, ["body", "card_present"], "schema_type"),
        ({"event_time": "2024-05-01T00:00:00Z"}, ["body", "event_time"], "schema_type"),
        ({"foo": 1}, ["body", "foo"], "schema_additionalProperties"),
        ({"amount": 0}, ["body", "amount"], "schema_exclusiveMinimum"),
        ({"amount": -5.0}, ["body", "amount"], "schema_exclusiveMinimum"),
        ({"amount": 2_000_000}, ["body", "amount"], "schema_maximum"),
        ({"channel": "FAX"}, ["body", "channel"], "schema_enum"),
        ({"country": "fr"}, ["body", "country"], "schema_pattern"),
        ({"card_id": "short"}, ["body", "card_id"], "schema_minLength"),
        ({"transaction_id": ""}, ["body", "transaction_id"], "schema_minLength"),
        ({"transaction_id": "tx 1"}, ["body", "transaction_id"], "schema_pattern"),  # the API's path pattern
        ({"transaction_id": "tx-1\n"}, ["body", "transaction_id"], "schema_pattern"),
        ({"lat": 91.0}, ["body", "lat"], "schema_maximum"),
    ],
)
def test_invalid_transaction_is_422(client, auth, change, loc, reason):
    r = client.post(SCORE, json=tx(9, **change), headers=auth["scorer"])
    e = error(r)
    assert (e["loc"], e["type"]) == (loc, reason), e


@pytest.mark.parametrize(
    ("event_time", "reason"),
    [
        (lambda: now_ms() + 86_400_000, "time_in_future"),
        (lambda: 4_102_444_800_000, "time_in_future"),  # 2100
        (lambda: 1_000, "time_too_old"),  # 1970
        (lambda: 915_148_800_000, "time_too_old"),  # 1999, before contracts.min_event_time
    ],
)
def test_far_future_or_past_event_time_is_422(client, auth, event_time, reason):
    e = error(client.post(SCORE, json=tx(9, event_time=event_time()), headers=auth["scorer"]))
    assert e["type"] == reason and e["loc"] == ["body", "event_time"] and "event_time" in e["msg"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_amount_is_422(client, auth, constant):
    raw = json.dumps(tx(9, amount=12.5)).replace("12.5", constant)
    assert constant in raw
    r = client.post(SCORE, content=raw, headers={**auth["scorer"], "Content-Type": "application/json"})
    e = error(r)
    assert (e["loc"], e["type"]) == (["body", "amount"], "non_finite_number"), e


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"transaction_id": "tx-1",', "malformed_json"),
        (b"", "malformed_json"),
        (b"\xff\xfe\x00", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # nesting deeper than the parser's recursion
        (b"[1, 2]", "not_an_object"),
        (b'"tx"', "not_an_object"),
        (b"null", "not_an_object"),
    ],
)
def test_malformed_body_is_422(make_client, auth, raw, reason):
    client = make_client(max_body_bytes=400_000)
    r = client.post(SCORE, content=raw, headers={**auth["scorer"], "Content-Type": "application/json"})
    e = error(r)
    assert (e["loc"], e["type"]) == (["body"], reason), e


def test_body_over_max_body_bytes_is_413(make_client, auth):
    client = make_client(max_body_bytes=1024)
    big = tx(9, device_id="d" * 64, ip_hash="i" * 64)
    raw = json.dumps(big) + " " * 1200
    r = client.post(SCORE, content=raw, headers={**auth["scorer"], "Content-Type": "application/json"})
    assert r.status_code == 413 and "1024" in r.json()["detail"]
    # without a Content-Length (chunked): refused once read
    r = client.post(SCORE, content=iter([raw.encode()]), headers={**auth["scorer"], "Content-Type": "application/json"})
    assert r.status_code == 413
    batch = {"transactions": [tx(i) for i in range(10)]}
    assert client.post(BATCH, json=batch, headers=auth["scorer"]).status_code == 413
    assert client.post(SCORE, json=tx(9), headers=auth["scorer"]).status_code == 200  # under it: fine


@pytest.mark.parametrize(
    ("payload", "loc", "reason"),
    [
        ({"transactions": []}, ["body", "transactions"], "batch_size"),
        ({"transactions": [tx(i) for i in range(4)]}, ["body", "transactions"], "batch_size"),  # max_batch 3
        ({"transactions": {"0": tx(0)}}, ["body", "transactions"], "batch_size"),
        ({"transactions": None}, ["body", "transactions"], "batch_size"),
        ([tx(0)], ["body"], "schema_required"),
        ({}, ["body"], "schema_required"),
        ({"transactions": [tx(0)], "extra": 1}, ["body"], "schema_required"),
        ({"transactions": [tx(0), tx(1, amount=...)]}, ["body", "transactions", 1, "amount"], "schema_required"),
        ({"transactions": [tx(0), tx(1), tx(2, amount=-1)]}, ["body", "transactions", 2, "amount"],
         "schema_exclusiveMinimum"),
        ({"transactions": [tx(0), "tx-1"]}, ["body", "transactions", 1], "not_an_object"),
        ({"transactions": [tx(0, event_time=1_000)]}, ["body", "transactions", 0, "event_time"], "time_too_old"),
    ],
)  # fmt: skip
def test_invalid_batch_is_422_with_the_index(make_client, auth, payload, loc, reason):
    client = make_client(max_batch=3)
    e = error(client.post(BATCH, json=payload, headers=auth["scorer"]))
    assert (e["loc"], e["type"]) == (loc, reason), e


def test_batch_non_finite_amount_names_its_index(client, auth):
    raw = json.dumps({"transactions": [tx(0), tx(1, amount=12.5)]}).replace("12.5", "NaN")
    r = client.post(BATCH, content=raw, headers={**auth["scorer"], "Content-Type": "application/json"})
    e = error(r)
    assert (e["loc"], e["type"]) == (["body", "transactions", 1, "amount"], "non_finite_number")


def test_validation_does_not_change_the_stream_contract(client, auth, settings):
    """The API's OpenAPI schema adds a pattern to transaction_id and the time limits to event_time; the shared
    contract (cached, used by the stream's validators) stays as its file has it."""
    spec = client.get("/openapi.json").json()
    contract = schema("transaction")["properties"]
    assert "pattern" not in contract["transaction_id"] and "minimum" not in contract["event_time"]
    body = spec["paths"][SCORE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["transaction_id"]["pattern"] == r"^\S+$"
    assert body["properties"]["event_time"]["minimum"] == Limits.from_settings(settings).min_event_time_ms
    assert "$schema" not in body and "$id" not in body


# --------------------------------------------------------------------------------------------------------------
# 6. errors: no stack trace to the caller


@pytest.mark.parametrize(
    ("method", "path", "fail"),
    [
        ("get", "/v1/transactions/tx-a/verdict", "verdict"),
        ("get", f"/v1/cards/{CARD}/history", "card_history"),
        ("get", "/v1/metrics/fraud-summary?date=2024-05-01", "fraud_summary"),
        ("get", "/v1/audit/transactions/tx-a?version=1", "audit"),
        ("get", "/v1/audit/tables/gold.decisions/history", "table_history"),
        ("post", SCORE, "features"),
        ("post", BATCH, "features"),
    ],
)
def test_unhandled_error_is_500_without_a_traceback(client, auth, services, caplog, method, path, fail):
    if fail == "features":
        services.features.fail = lambda t: True
    else:
        services.lake.fail = {fail}
    body = {"transactions": [tx(0)]} if path == BATCH else tx(0) if method == "post" else None
    r = client.request(method, path, headers=auth["admin"], json=body)
    assert r.status_code == 500
    answer = r.json()
    assert answer["detail"] == "internal error" and len(answer["incident"]) == 12
    assert set(answer) == {"detail", "incident"}
    for leak in ("Traceback", "RuntimeError", "secret", "File "):
        assert leak not in r.text
    assert any(answer["incident"] in rec.getMessage() and rec.exc_info for rec in caplog.records)  # in the log


# --------------------------------------------------------------------------------------------------------------
# 7. metrics, readiness, lifespan


def test_metrics_latency_and_auth_failures(client, auth):
    client.get("/v1/models", headers=auth["reader"])
    client.get("/v1/models")
    client.get("/v1/models", headers={"Authorization": "Bearer wrong-token-000000"})
    client.get("/v1/models", headers=auth["scorer"])
    client.get("/v1/transactions/tx-nope/verdict", headers=auth["reader"])
    text = client.get("/metrics").text
    assert "fraud_api_request_duration_seconds_bucket" in text
    count = "fraud_api_request_duration_seconds_count"
    assert metric(text, count, method="GET", route="/v1/models", status="200") == 1
    assert metric(text, count, method="GET", route="/v1/models", status="401") == 2
    assert metric(text, count, method="GET", route="/v1/models", status="403") == 1
    assert metric(text, count, method="GET", route="/v1/transactions/{transaction_id}/verdict", status="404") == 1
    assert metric(text, "fraud_api_auth_failures_total", status="401") == 2
    assert metric(text, "fraud_api_auth_failures_total", status="403") == 1


def test_metrics_are_per_app(make_client, auth):
    a, b = make_client(), make_client()
    a.get("/v1/models")
    assert metric(b.get("/metrics").text, "fraud_api_auth_failures_total", status="401") == 0
    assert metric(a.get("/metrics").text, "fraud_api_auth_failures_total", status="401") == 1


def test_ready(client, auth, deps, settings, tmp_path):
    # bronze.transactions committed offsets 7 and 2 of partitions 0 and 1 (the log ends at 10 and 5)
    cp = Path(checkpoint_dir(tuned(settings, tmp_path), "bronze.transactions"))
    (cp / "commits").mkdir(parents=True)
    (cp / "offsets").mkdir()
    (cp / "commits" / "0").write_text("v1\n{}\n")
    (cp / "offsets" / "0").write_text('v1\n{"batchWatermarkMs":0}\n{"0": 7, "1": 2}\n')
    r = client.get("/v1/ready", headers=auth["reader"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert body["checks"] == {"event_log": True, "online_store": True, "mlflow": True, "lakehouse": True}
    assert body["consumer_lag"] == {"bronze.transactions": 6, "bronze.labels": None, "bronze.market_ticks": None}
    assert deps.urls == [settings.online_store.url, f"{settings.mlflow.tracking_uri}/health"]


def test_not_ready_when_the_event_log_is_down(client, auth, services):
    services.log.up = False
    r = client.get("/v1/ready", headers=auth["reader"])
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["checks"]["event_log"] is False
    assert all(v for k, v in body["checks"].items() if k != "event_log")


def test_not_ready_when_redis_or_mlflow_or_the_lake_is_down(client, auth, services, deps):
    deps.redis_ok, deps.mlflow_status = False, 503
    services.lake.fail = {"reachable"}
    body = client.get("/v1/ready", headers=auth["reader"]).json()
    assert body["checks"] == {"event_log": True, "online_store": False, "mlflow": False, "lakehouse": False}
    assert "Connection refused" in body["details"]["online_store"] and "failed" in body["details"]["lakehouse"]


def test_lifespan_builds_services_once_and_closes_the_log(settings, services, deps, tmp_path):
    made = []

    def factory() -> Services:
        made.append(1)
        return services

    app = create_app(tuned(settings, tmp_path), factory)
    assert made == []  # nothing connects before the app starts
    with TestClient(app) as client:
        assert client.get("/v1/health").status_code == 200
        assert made == [1] and not services.log.closed
    assert made == [1] and services.log.closed


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        SCORE,
        BATCH,
        "/v1/transactions/{transaction_id}/verdict",
        "/v1/cards/{card_id}/history",
        "/v1/metrics/fraud-summary",
        "/v1/audit/transactions/{transaction_id}",
        "/v1/audit/tables/{table}/history",
        "/v1/models",
        "/v1/health",
        "/v1/ready",
    }
    batch = spec["paths"][BATCH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["transactions"]["maxItems"] == 1000
