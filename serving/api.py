"""The FastAPI service: real-time scores, recorded verdicts, card history, fraud summaries and time-travel audits.

``create_app(settings)`` wires the edges (online store, reference tables, registry loaders, Delta tables, event
log) into the routes; ``python -m serving`` runs it under uvicorn. Scoring uses the stream's code: the request's
features from the online store (``features.request``) and ``serving.scorer.Scorer.decide``, so the same event
and state get the same decision. Every route but ``/v1/health`` and ``/metrics`` needs a bearer token with its
scope (``serving.auth``); audit calls are appended to ``api.audit_log``.
"""

import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from pydantic import BaseModel

from features.request import RequestFeatures
from lakehouse import eventlog
from lakehouse.config import Settings, get_settings
from lakehouse.contracts import ContractError, Limits, check, schema
from lakehouse.maintenance import TimeTravelError
from lakehouse.streaming import consumer_lag
from serving import schemas
from serving.auth import Authenticator, Principal
from serving.console import router as console_router
from serving.guard import Guard
from serving.lake import LakeReader
from serving.scorer import Scorer, current

log = logging.getLogger("serving.api")
API = "/v1"
TxId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^\S+$")]
CardId = Annotated[str, PathParam(min_length=8, max_length=64, pattern=r"^\S+$")]
TX_ID_PATTERN = r"^\S+$"  # the API's ids are path segments: no whitespace (the contract allows it)
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # set by ``python -m serving --workers N`` (N > 1) for prometheus_client
TableName = Annotated[str, PathParam(pattern=r"^[a-z_]+\.[a-z_]+$", description="e.g. silver.transactions")]


@dataclass
class Services:
    """The edges the routes use; tests may pass their own."""

    scorer: Scorer
    features: RequestFeatures
    lake: LakeReader
    log: eventlog.EventLog

    @classmethod
    def connect(cls, settings: Settings) -> "Services":
        return cls(Scorer(settings), RequestFeatures(settings), LakeReader(settings), eventlog.from_settings(settings))


class Metrics:
    """The API's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "fraud_api_request_duration_seconds", "API request latency", ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry,
        )  # fmt: skip
        self.auth_failures = Counter("fraud_api_auth_failures_total", "refused requests", ["status"],
                                     registry=self.registry)  # fmt: skip
        self.decisions = Counter("fraud_api_decisions_total", "API decisions", ["decision"], registry=self.registry)
        self.degraded = Counter("fraud_api_degraded_scores_total", "scores without the online store",
                                registry=self.registry)  # fmt: skip


class AuditLog:
    """Every audit call as one JSON line (who, what, when, the answer's status)."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(entry, default=str) + "\n")


def json_response(model: BaseModel) -> Response:
    """``model`` as its JSON, serialized once (a route returning the model has FastAPI validate it again against
    its ``response_model``, which stays declared for the OpenAPI schema)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _contract_error(exc: ContractError, loc: list) -> HTTPException:
    field = exc.detail.split("'")[1] if exc.detail.startswith("field '") else None
    if exc.reason in ("time_in_future", "time_too_old"):
        field = "event_time"
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": [*loc, *([field] if field else [])], "msg": exc.detail, "type": exc.reason}],
    )


def _transaction_schema(limits: Limits) -> dict:
    """The transaction contract as the API checks it: with its pattern on ``transaction_id`` and the time limits
    of ``check`` on ``event_time`` (documented, so that clients and fuzzers know what is accepted)."""
    # a deep copy: ``schema`` is cached and shared with the stream's validators, which must not see the changes
    out = {k: copy.deepcopy(v) for k, v in schema("transaction").items() if not k.startswith("$")}
    out["properties"]["transaction_id"]["pattern"] = TX_ID_PATTERN
    event_time = out["properties"]["event_time"]
    event_time["minimum"] = limits.min_event_time_ms
    event_time["description"] += (
        f"; not before {limits.min_event_time_ms} and at most {limits.max_future_skew_ms} ms ahead of now"
    )
    return out


def from_environment() -> FastAPI:
    """The app of the settings the environment selects: each uvicorn worker's (``python -m serving --workers``)."""
    return create_app(get_settings())


def create_app(settings: Settings, services: Services | Callable[[], Services] | None = None) -> FastAPI:
    cfg = settings.api
    auth = Authenticator(cfg)
    metrics = Metrics()
    audit_log = AuditLog(settings.path(cfg.audit_log))
    limits = Limits.from_settings(settings)
    state: dict[str, Services] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        made = services() if callable(services) else services
        state["services"] = made or Services.connect(settings)
        yield
        state["services"].log.close()

    app = FastAPI(
        title="Fraud & risk lakehouse API",
        version="1.0.0",
        description="Real-time scores, recorded verdicts, card history, fraud summaries and time-travel audits. "
        "Send `Authorization: Bearer <token>`; scopes: `score`, `read`, `audit`.",
        lifespan=lifespan,
    )
    app.state.metrics, app.state.auth = metrics, auth

    def svc() -> Services:
        return state["services"]

    def scope(name: str):
        async def dependency(request: Request):  # async: no thread-pool hop for a few microseconds of work
            try:
                return auth.authorize(request, name)
            except HTTPException as exc:
                if exc.status_code in (401, 403):
                    metrics.auth_failures.labels(str(exc.status_code)).inc()
                raise

        return Depends(dependency)

    def observe(method: str, route: str, code: int, seconds: float) -> None:
        metrics.latency.labels(method, route, str(code)).observe(seconds)

    app.add_middleware(Guard, max_body_bytes=cfg.max_body_bytes, observe=observe)

    async def body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > cfg.max_body_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"request body over {cfg.max_body_bytes} bytes")
        try:
            return json.loads(raw, parse_constant=lambda c: float(c))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "malformed_json"}],
            ) from None

    def validated(event: Any, loc: list) -> dict:
        try:
            tx = check("transaction", event, limits)
            if not re.fullmatch(r"\S+", tx["transaction_id"]):  # TX_ID_PATTERN, what the OpenAPI schema adds
                raise ContractError("schema_pattern", f"field 'transaction_id': {tx['transaction_id']!r} does not "
                                    f"match {TX_ID_PATTERN!r}")  # fmt: skip
            return tx
        except ContractError as exc:
            raise _contract_error(exc, loc) from None

    def score(txs: list[dict]) -> list[schemas.Score]:
        s = svc()
        out, rows, vectors, computed = [], [], [], []
        for tx in txs:
            t0 = time.perf_counter()
            result = s.features.compute(tx)
            rows.append(result.transaction)
            vectors.append(result.values)
            computed.append((result, t0))
        decided = s.scorer.decide(rows, vectors)
        for row, (result, t0) in zip(decided, computed, strict=True):
            metrics.decisions.labels(row["decision"]).inc()
            if result.status != "ok":
                metrics.degraded.inc()
            latency = (time.perf_counter() - t0) * 1000
            out.append(schemas.Score.of(row, result.status, result.reason, latency))
        return out

    tx_body = {"content": {"application/json": {"schema": _transaction_schema(limits)}}, "required": True}
    batch_body = {
        "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "required": ["transactions"],
            "properties": {"transactions": {"type": "array", "minItems": 1, "maxItems": cfg.max_batch,
                                            "items": _transaction_schema(limits)}},
        }}},
        "required": True,
    }  # fmt: skip

    @app.post(f"{API}/transactions/score", response_model=schemas.Score, tags=["scoring"],
              openapi_extra={"requestBody": tx_body}, dependencies=[scope("score")],
              responses={422: {"description": "the transaction breaks its contract"}})  # fmt: skip
    async def score_one(request: Request) -> Response:
        """Score one transaction now: online features + the request, rules, statistics, the champion (and the
        challenger per routing); the same code and combination as the stream."""
        tx = validated(await body(request), ["body"])
        return json_response(score([tx])[0])

    @app.post(f"{API}/transactions/score/batch", response_model=schemas.ScoreBatch, tags=["scoring"],
              openapi_extra={"requestBody": batch_body}, dependencies=[scope("score")])  # fmt: skip
    async def score_batch(request: Request) -> Response:
        """Score up to ``api.max_batch`` transactions (each against the online state as it is: a batch does not
        update it)."""
        t0 = time.perf_counter()
        payload = await body(request)
        if not isinstance(payload, dict) or set(payload) != {"transactions"}:
            raise HTTPException(422, [{"loc": ["body"], "msg": "expected {\"transactions\": [...]}",
                                       "type": "schema_required"}])  # fmt: skip
        items = payload["transactions"]
        if not isinstance(items, list) or not 1 <= len(items) <= cfg.max_batch:
            raise HTTPException(422, [{"loc": ["body", "transactions"], "type": "batch_size",
                                       "msg": f"a list of 1 to {cfg.max_batch} transactions"}])  # fmt: skip
        txs = [validated(tx, ["body", "transactions", i]) for i, tx in enumerate(items)]
        results = score(txs)
        return json_response(schemas.ScoreBatch(results=results, latency_ms=(time.perf_counter() - t0) * 1000))

    @app.get(f"{API}/transactions/{{transaction_id}}/verdict", response_model=schemas.Verdict, tags=["decisions"],
             dependencies=[scope("read")], responses={404: {"description": "no decision recorded"}})  # fmt: skip
    def verdict(transaction_id: TxId) -> dict:
        """The decision the stream recorded for a transaction (gold.decisions), with its reasons."""
        row = svc().lake.verdict(transaction_id)
        if row is None:
            raise HTTPException(404, f"no decision recorded for transaction {transaction_id!r}")
        return row

    @app.get(f"{API}/cards/{{card_id}}/history", response_model=schemas.CardHistory, tags=["decisions"],
             dependencies=[scope("read")])  # fmt: skip
    def card_history(
        card_id: CardId,
        limit: Annotated[int, Query(ge=1, le=cfg.history_max)] = 50,
    ) -> schemas.CardHistory:
        """A card's most recent decisions (newest first), those that raised alerts, and its risk tier."""
        rows = svc().lake.card_history(card_id, limit)
        found = {r["decision"] for r in rows}
        tier = "unknown" if not rows else "high" if "block" in found else "elevated" if "review" in found else "low"
        verdicts = [schemas.Verdict.model_validate(r) for r in rows]
        return schemas.CardHistory(card_id=card_id, risk_tier=tier, decisions=verdicts,
                                   alerts=[v for v in verdicts if v.decision != "approve"])  # fmt: skip

    @app.get(f"{API}/metrics/fraud-summary", response_model=schemas.FraudSummary, tags=["reporting"],
             dependencies=[scope("read")])  # fmt: skip
    def fraud_summary(day: Annotated[date, Query(alias="date")]) -> dict:
        """The day's line of gold.fraud_summary_daily: totals, fraud, flagged and blocked, false-positive rate."""
        row = svc().lake.fraud_summary(day)
        if row is None:
            raise HTTPException(404, f"no fraud summary for {day.isoformat()}")
        return row

    @app.get(f"{API}/audit/transactions/{{transaction_id}}", response_model=schemas.Audit, tags=["audit"])
    def audit_transaction(
        request: Request,
        transaction_id: TxId,
        principal: Annotated[Principal, scope("audit")],
        as_of: Annotated[datetime | None, Query(description="ISO-8601 time (UTC if naive)")] = None,
        version: Annotated[int | None, Query(ge=0, description="a version of silver.transactions")] = None,
    ) -> dict:
        """What the tables said about a transaction at a time (or at a version of silver.transactions): the
        silver row and its label then, the decision and the model version then — Delta time travel."""
        if (as_of is None) == (version is None):
            raise HTTPException(422, [{"loc": ["query"], "msg": "give exactly one of as_of or version",
                                       "type": "value_error"}])  # fmt: skip
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        outcome = 500  # unless it answers
        try:
            found = svc().lake.audit(transaction_id, version, as_of)
            if found["silver"]["row"] is None and found["decision"]["row"] is None:
                outcome = 404
                raise HTTPException(404, f"transaction {transaction_id!r} is in neither table at that time")
            outcome = 200
            return found
        except TimeTravelError as exc:
            outcome = 410 if "deleted" in str(exc) or "older than" in str(exc) else 404
            raise HTTPException(outcome, svc().lake.public(str(exc))) from None
        finally:
            audit_log.write({"at": datetime.now(UTC), "principal": principal.name, "call": request.url.path,
                             "query": dict(request.query_params), "status": outcome})  # fmt: skip

    @app.get(f"{API}/audit/tables/{{table}}/history", response_model=schemas.TableHistory, tags=["audit"])
    def table_history(
        request: Request,
        table: TableName,
        principal: Annotated[Principal, scope("audit")],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> schemas.TableHistory:
        """The table's Delta commits, newest first: version, time, operation, the streaming batch that wrote it."""
        outcome = 500  # unless it answers
        try:
            found = schemas.TableHistory(table=table, commits=svc().lake.table_history(table, limit))
            outcome = 200
            return found
        except KeyError:
            outcome = 404
            raise HTTPException(404, f"unknown table {table!r}") from None
        finally:
            audit_log.write({"at": datetime.now(UTC), "principal": principal.name, "call": request.url.path,
                             "query": dict(request.query_params), "status": outcome})  # fmt: skip

    @app.get(f"{API}/models", response_model=schemas.Models, tags=["models"], dependencies=[scope("read")])
    def models() -> schemas.Models:
        """The champion and challenger (and anomaly model) this service scores with, and since when."""
        s = svc()
        out = []
        for role, loader in (("champion", s.scorer.models.champion), ("challenger", s.scorer.models.challenger),
                             ("anomaly", s.scorer.models.anomaly)):  # fmt: skip
            if loader is None:
                continue
            m = current(loader)
            out.append(schemas.ModelInUse(
                role=role, name=loader.name, alias=loader.alias, version=m.version if m else None,
                loaded_at=datetime.fromtimestamp(m.loaded_at, UTC) if m else None,
            ))  # fmt: skip
        d = settings.decision
        return schemas.Models(routing=d.routing, split_percent=d.split_percent, models=out)

    @app.get(f"{API}/health", tags=["operations"])
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(f"{API}/ready", response_model=schemas.Ready, tags=["operations"], dependencies=[scope("read")],
             responses={503: {"model": schemas.Ready, "description": "a dependency is down"}})  # fmt: skip
    def ready(response: Response) -> schemas.Ready:
        """Readiness: the event log, the online store, MLflow and the lakehouse answer; the stream's lag."""
        s, checks, details = svc(), {}, {}
        checks["event_log"] = s.log.ping()
        try:
            checks["online_store"] = bool(redis.Redis.from_url(settings.online_store.url, socket_timeout=1).ping())
        except redis.RedisError as exc:
            checks["online_store"], details["online_store"] = False, str(exc)
        try:
            checks["mlflow"] = httpx.get(f"{settings.mlflow.tracking_uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError as exc:
            checks["mlflow"], details["mlflow"] = False, str(exc)
        try:
            checks["lakehouse"] = s.lake.reachable()
        except Exception as exc:
            checks["lakehouse"], details["lakehouse"] = False, str(exc)
        try:
            lag = consumer_lag(settings, s.log)
        except Exception as exc:
            lag, details["consumer_lag"] = {}, str(exc)
        ok = all(checks.values())
        if not ok:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return schemas.Ready(ready=ok, checks=checks, consumer_lag=lag, details=details)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        registry = metrics.registry
        if os.environ.get(METRICS_DIR):  # several workers: the sum of every worker's files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(console_router(settings, svc, score, validated, audit_log))  # the analyst console
    return app
