"""The analyst console: server-rendered pages under ``/console`` of the API.

The review queue (``review`` decisions no one has labelled, oldest first, with reasons and the card's recent
decisions), a form to score one transaction, a CSV upload scored as a batch with its results downloadable, and
marking a queued transaction fraud or genuine: a ``label`` event (source ``analyst``) on the labels topic, which
silver merges like any label, so the feedback reaches the next training set.

A browser logs in with an API token (``api.tokens``): it is kept in an HttpOnly, SameSite=Strict cookie and
checked on every request by the API's ``Authenticator`` with its scopes and rate limit: ``read`` for the queue,
``score`` for scoring and labelling. Every POST must come from the console's own origin (``Origin`` /
``Sec-Fetch-Site``) and carry the session's CSRF token (an HMAC of the cookie under a per-process key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from lakehouse.config import Settings
from lakehouse.contracts import ContractError, Limits, check, encode
from lakehouse.eventlog import EventLogError
from lakehouse.eventlog.producer import topic_for
from serving.auth import Principal
from serving.console_io import CONTRACT, FIELDS, REQUIRED, read_csv, results_csv, typed
from serving.console_pages import CSS, render
from serving.schemas import Score

if TYPE_CHECKING:
    from serving.api import AuditLog, Services

ROOT = "/console"
COOKIE = "console_token"
LABEL_SCOPE = "score"  # marking fraud/genuine writes ground truth: the write scope
QUEUE_PAGE = 20  # queue items a page
CARD_HISTORY = 6  # a card's recent decisions shown with each item
REMEMBERED = 10_000  # labels written by this process kept until silver has them
DOWNLOADS = 32  # batch results kept for download
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make POSTs send "Origin: null"
    "Cache-Control": "no-store",
}


class Remembered:
    """Bounded, oldest dropped first: what this process wrote (labels, batch results), by key."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def get(self, key: str) -> Any:
        return self.items.get(key)

    def forget(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.items.pop(k, None)


@dataclass
class _AsBearer:
    """A request as ``Authenticator.authorize`` reads it, with the cookie's token as the bearer token."""

    headers: dict[str, str]
    state: Any


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this server (``Origin``, else Fetch Metadata; neither: a non-browser)."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def form_errors(detail: Any) -> dict[str, str]:
    """The API's 422 ``detail`` (``[{loc, msg, type}]``) as field -> message ("" for the whole transaction)."""
    if not isinstance(detail, list):
        return {"": str(detail)}
    out = {}
    for d in detail:
        loc = [p for p in d.get("loc", []) if isinstance(p, str) and p in CONTRACT["properties"]]
        out.setdefault(loc[-1] if loc else "", d.get("msg", ""))
    return out


def choices(name: str) -> list[str] | None:
    """The values a form offers for a field: its enum (with an empty one if optional), true/false, or any."""
    prop = CONTRACT["properties"][name]
    if "enum" in prop:
        return ([] if name in REQUIRED else [""]) + prop["enum"]
    return ["true", "false"] if prop.get("type") == "boolean" else None


def contract_field(exc: ContractError) -> str:
    return exc.detail.split("'")[1] if exc.detail.startswith("field '") else ""


def router(
    settings: Settings,
    services: Callable[[], Services],
    score: Callable[[list[dict]], list[Score]],
    validated: Callable[[Any, list], dict],
    audit_log: AuditLog,
) -> APIRouter:
    """The console's routes on the API's services and its ``score`` and ``validated`` (the same scoring and
    validation as ``POST /v1/transactions/score``)."""
    cfg, limits, key = settings.api, Limits.from_settings(settings), secrets.token_bytes(32)
    labels, downloads = Remembered(REMEMBERED), Remembered(DOWNLOADS)
    r = APIRouter(prefix=ROOT, include_in_schema=False)
    fields = [{"name": n, "required": n in REQUIRED, "choices": choices(n)} for n in FIELDS]

    def csrf_of(request: Request) -> str:
        return hmac.new(key, request.cookies.get(COOKIE, "").encode(), hashlib.sha256).hexdigest()

    def page(request: Request, name: str, title: str, who: Principal | None, status: int = 200, **ctx) -> Response:
        html = render(name, root=ROOT, title=title, principal=who, csrf=csrf_of(request) if who else "",
                      view=ctx.pop("view", name), notices=ctx.pop("notices", []), **ctx)  # fmt: skip
        return HTMLResponse(html, status, headers=HEADERS)

    def enter(request: Request, scope: str) -> Principal | Response:
        """The principal of the session cookie if it has ``scope``; else the page to answer (login, 403, 429)."""
        token = request.cookies.get(COOKIE)
        if not token:
            return RedirectResponse(f"{ROOT}/login", 303)
        try:
            return request.app.state.auth.authorize(_AsBearer({"authorization": f"Bearer {token}"}, request.state),
                                                    scope)  # fmt: skip
        except HTTPException as exc:
            if exc.status_code in (401, 403):
                request.app.state.metrics.auth_failures.labels(str(exc.status_code)).inc()
            if exc.status_code == 401:
                out = RedirectResponse(f"{ROOT}/login", 303)
                out.delete_cookie(COOKIE, path=ROOT)
                return out
            out = page(request, "error", "Not allowed" if exc.status_code == 403 else "Too many requests", None,
                       exc.status_code, message=exc.detail)  # fmt: skip
            out.headers.update(exc.headers or {})
            return out

    async def posted(request: Request, scope: str) -> tuple[Principal, FormData] | Response:
        """A POST's principal and form, if it has ``scope`` and passes the CSRF checks."""
        who = enter(request, scope)
        if isinstance(who, Response):
            return who
        form = await request.form(max_files=1, max_fields=len(FIELDS) + 8)
        refused = forged(request, form, who)
        return (who, form) if refused is None else refused

    def forged(request: Request, form: FormData, who: Principal | None = None) -> Response | None:
        """None if the form passes the CSRF checks (this origin, the session's token), else the 403 page."""
        token = form.get("csrf")
        if same_origin(request) and isinstance(token, str) and hmac.compare_digest(token, csrf_of(request)):
            return None
        return page(
            request,
            "error",
            "Refused",
            who,
            403,
            message="The form did not come from this console (CSRF check): reload the page and retry.",
        )

    @r.get("/console.css")
    def css() -> Response:
        return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    @r.get("")
    def home() -> Response:
        return RedirectResponse(f"{ROOT}/queue", 303)

    @r.get("/login")
    def login_form(request: Request) -> Response:
        return page(request, "login", "Log in", None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        token = form.get("token")
        if not same_origin(request):
            return page(request, "login", "Log in", None, 403, notices=[("bad", "Refused: not from this console.")])
        try:
            request.app.state.auth.identify(f"Bearer {token}" if isinstance(token, str) else None)
        except HTTPException:
            request.app.state.metrics.auth_failures.labels("401").inc()
            return page(request, "login", "Log in", None, 401, notices=[("bad", "Unknown token.")])
        out = RedirectResponse(f"{ROOT}/queue", 303)
        out.set_cookie(COOKIE, token.strip(), path=ROOT, httponly=True, samesite="strict",
                       secure=request.url.scheme == "https")  # fmt: skip
        return out

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        refused = forged(request, await request.form(max_files=0, max_fields=4))
        if refused is not None:
            return refused
        out = RedirectResponse(f"{ROOT}/login", 303)
        out.delete_cookie(COOKIE, path=ROOT)
        return out

    def queue_page(request: Request, who: Principal, number: int, status: int = 200, notices=()) -> Response:
        lake = services().lake
        if labels.items:  # those silver has now are the lake's to exclude
            labels.forget(lake.labelled(list(labels.items)))
        rows, total = lake.review_queue(QUEUE_PAGE, (number - 1) * QUEUE_PAGE, set(labels.items), CARD_HISTORY)
        first = (number - 1) * QUEUE_PAGE + 1
        return page(request, "queue", "Review queue", who, status, rows=rows, total=total, page=number, first=first,
                    last=first + len(rows) - 1, can_label=LABEL_SCOPE in who.scopes, notices=list(notices))  # fmt: skip

    @r.get("/queue")
    def queue(request: Request, page: int = 1) -> Response:
        who = enter(request, "read")
        return who if isinstance(who, Response) else queue_page(request, who, max(1, min(page, 100_000)))

    @r.post("/label")
    async def label(request: Request) -> Response:
        got = await posted(request, LABEL_SCOPE)
        if isinstance(got, Response):
            return got
        who, form = got
        tx_id, verdict = str(form.get("transaction_id", "")), form.get("label")
        number = int(p) if (p := str(form.get("page", "1"))).isdigit() and 0 < int(p) < 100_000 else 1

        def refused(status: int, text: str) -> Response:
            if "read" not in who.scopes:
                return page(request, "error", "Not labelled", who, status, message=text)
            return queue_page(request, who, number, status, [("bad", text)])

        if verdict not in ("fraud", "genuine"):
            return refused(422, "A label is fraud or genuine.")
        s = services()
        if labels.get(tx_id) or s.lake.labelled([tx_id]):
            return refused(409, f"Transaction {tx_id} is already labelled.")
        recorded = s.lake.verdict(tx_id)
        if recorded is None:
            return refused(404, f"No decision is recorded for transaction {tx_id}.")
        event = {"transaction_id": tx_id, "card_id": recorded["card_id"], "label": verdict,
                 "reported_at": int(time.time() * 1000), "scenario": None, "source": "analyst"}  # fmt: skip
        topic = topic_for(settings, "label")
        try:
            check("label", event, limits)
            partition, offset = s.log.produce(topic, event["card_id"], encode(event))
        except (ContractError, EventLogError) as exc:
            return refused(503 if isinstance(exc, EventLogError) else 422, f"Not labelled: {exc}")
        labels.put(tx_id, verdict)
        audit_log.write({"at": datetime.now(UTC), "principal": who.name, "call": request.url.path,
                         "transaction_id": tx_id, "label": verdict, "topic": topic, "partition": partition,
                         "offset": offset, "status": 200})  # fmt: skip
        return queue_page(request, who, number, notices=[("ok", f"Transaction {tx_id} marked {verdict}.")])

    def score_page(request: Request, who: Principal, values: dict, status: int = 200, **ctx) -> Response:
        errors = ctx.pop("errors", {})
        notices = [("bad", errors[""])] if errors.get("") else []
        return page(request, "score", "Score a transaction", who, status, fields=fields, values=values,
                    errors=errors, result=ctx.pop("result", None), notices=notices)  # fmt: skip

    @r.get("/score")
    def score_form(request: Request) -> Response:
        who = enter(request, "score")
        if isinstance(who, Response):
            return who
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        defaults = {"transaction_id": f"console-{uuid.uuid4().hex[:12]}", "event_time": now, "currency": "EUR",
                    "channel": "POS", "card_present": "true", "transaction_type": "PURCHASE"}  # fmt: skip
        return score_page(request, who, defaults)

    @r.post("/score")
    async def score_one(request: Request) -> Response:
        got = await posted(request, "score")
        if isinstance(got, Response):
            return got
        who, form = got
        values = {n: str(form.get(n, "")) for n in FIELDS}
        try:
            tx = validated(typed(values), ["form"])
        except ContractError as exc:
            return score_page(request, who, values, 422, errors={contract_field(exc): exc.detail})
        except HTTPException as exc:
            return score_page(request, who, values, exc.status_code, errors=form_errors(exc.detail))
        return score_page(request, who, values, result=score([tx])[0])

    def batch_page(request: Request, who: Principal, status: int = 200, **ctx) -> Response:
        return page(request, "batch", "Batch scoring (CSV)", who, status, fields=fields, max_rows=cfg.max_batch,
                    results=ctx.pop("results", None), **ctx)  # fmt: skip

    @r.get("/batch")
    def batch_form(request: Request) -> Response:
        who = enter(request, "score")
        return who if isinstance(who, Response) else batch_page(request, who)

    @r.post("/batch")
    async def batch(request: Request) -> Response:
        got = await posted(request, "score")
        if isinstance(got, Response):
            return got
        who, form = got
        upload = form.get("file")
        raw = await upload.read(cfg.max_body_bytes + 1) if isinstance(upload, UploadFile) else b""
        parsed = read_csv(raw, cfg.max_batch) if len(raw) <= cfg.max_body_bytes else None
        problem = "no file uploaded" if not raw else parsed.problem if parsed else "the file is too large"
        if problem:
            return batch_page(request, who, 422, notices=[("bad", f"Not scored: {problem}.")])
        results: list[tuple[int, Score | None, str | None, str | None]] = []
        valid: list[tuple[int, dict]] = []
        for n, row, error in parsed.rows:
            tx_id = row.get("transaction_id")
            try:
                if error:
                    raise ContractError("row", error)
                valid.append((n, validated(typed(row), ["row", n])))
            except ContractError as exc:
                results.append((n, None, tx_id, exc.detail))
            except HTTPException as exc:
                results.append((n, None, tx_id, "; ".join(form_errors(exc.detail).values())))
        scored = score([tx for _, tx in valid]) if valid else []
        results += [(n, s, s.transaction_id, None) for (n, _), s in zip(valid, scored, strict=True)]
        results.sort(key=lambda x: x[0])
        name = uuid.uuid4().hex
        downloads.put(name, (who.name, results_csv(results)))
        return batch_page(request, who, results=results, scored=len(scored), failed=len(results) - len(scored),
                          download=f"{ROOT}/batch/{name}.csv")  # fmt: skip

    @r.get("/batch/{name}.csv")
    def batch_download(request: Request, name: str) -> Response:
        who = enter(request, "score")
        if isinstance(who, Response):
            return who
        found = downloads.get(name)
        if found is None or found[0] != who.name:
            return page(request, "error", "Not found", who, 404, message="No such results (they are kept for the "
                        f"last {DOWNLOADS} uploads of this server process).")  # fmt: skip
        return Response(
            found[1],
            media_type="text/csv; charset=utf-8",
            headers={**HEADERS, "Content-Disposition": f'attachment; filename="scores-{name[:8]}.csv"'},
        )

    return r
