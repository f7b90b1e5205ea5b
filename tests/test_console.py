"""serving/console.py: the analyst console's views, its login and scopes, CSRF refusals, the review queue read by the
real ``LakeReader`` from Delta tables, scoring by form and by CSV (row errors, download), and analyst labels as
contract-valid label events. No services: the app runs on test_api's fakes, a recording event log and a local
lakehouse (``console_support``)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import test_api
from console_support import QUEUE, RecordingLog, add_labels, csrf, lakehouse, login, queued
from fastapi.testclient import TestClient
from test_api import CARD, T0, FakeFeatures, audit_lines, expected, models, tx

from lakehouse.config import Settings
from lakehouse.contracts import decode
from serving import console
from serving.api import Services
from serving.lake import LakeReader
from serving.scorer import Scorer

ORIGIN = {"Origin": "http://testserver"}
deps, make_client, rulebook = test_api.deps, test_api.make_client, test_api.rulebook  # test_api's fixtures


@pytest.fixture
def local(settings: Settings, tmp_path: Path) -> Settings:
    return lakehouse(settings, tmp_path / "lakehouse")


@pytest.fixture
def services(settings: Settings, rulebook, local: Settings) -> Services:
    return Services(Scorer(settings, models(), rules=rulebook), FakeFeatures(), LakeReader(local), RecordingLog())


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    return {n: t.token.get_secret_value() for n, t in settings.api.tokens.items()}


@pytest.fixture
def browser(make_client, tokens) -> TestClient:
    """A client logged in as ``admin`` (every scope)."""
    return login(make_client(), tokens["admin"])


def label(client: TestClient, tx_id: str, verdict: str, **extra) -> object:
    token = csrf(client.get("/console/queue").text)
    return client.post("/console/label", data={"transaction_id": tx_id, "label": verdict, "csrf": token, **extra},
                       headers=ORIGIN)  # fmt: skip


def upload(client: TestClient, text: str | bytes, name: str = "batch.csv"):
    token = csrf(client.get("/console/batch").text)
    return client.post("/console/batch", data={"csrf": token}, files={"file": (name, text, "text/csv")},
                       headers=ORIGIN)  # fmt: skip


def as_csv(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else str(v).lower() if isinstance(v, bool) else v for k, v in r.items()})
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------------
# login, session cookie, scopes


def test_without_a_session_every_view_leads_to_the_login(make_client):
    client = make_client()
    for path in ("/console", "/console/queue", "/console/score", "/console/batch", "/console/batch/x.csv"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console"), path
    page = client.get("/console/queue")  # followed: the login form
    assert page.status_code == 200 and 'name="token"' in page.text and 'type="password"' in page.text
    for path in ("/console/label", "/console/score", "/console/batch"):
        r = client.post(path, data={"transaction_id": "tx-b", "label": "fraud"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_login_sets_an_http_only_same_site_strict_cookie(make_client, tokens):
    client = make_client()
    r = client.post("/console/login", data={"token": tokens["admin"]}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{console.COOKIE}={tokens['admin']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    page = client.get("/console/queue")
    assert page.status_code == 200 and '<span id="principal">admin</span>' in page.text


@pytest.mark.parametrize("token", ["", "not-a-known-token-0000", "test-admin-token-012345678"])
def test_an_unknown_token_is_refused(make_client, token):
    client = make_client()
    r = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 401 and "Unknown token." in r.text and "set-cookie" not in r.headers
    metrics = client.get("/metrics").text
    assert 'fraud_api_auth_failures_total{status="401"} 1.0' in metrics


def test_a_forged_cookie_is_dropped(make_client):
    client = make_client()
    client.cookies.set(console.COOKIE, "forged-token-0123456789", path="/console")
    r = client.get("/console/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert f'{console.COOKIE}=""' in r.headers["set-cookie"]  # deleted


def test_logout_ends_the_session(browser):
    token = csrf(browser.get("/console/queue").text)
    assert browser.post("/console/logout", data={"csrf": "0" * 64}, headers=ORIGIN).status_code == 403
    r = browser.post("/console/logout", data={"csrf": token}, headers=ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert browser.get("/console/queue", follow_redirects=False).status_code == 303


def test_scopes_apply(make_client, tokens, services):
    scorer = login(make_client(), tokens["scorer"])  # score only: no queue, but scoring
    r = scorer.get("/console/queue")
    assert r.status_code == 403 and "lacks the &#39;read&#39; scope" in r.text
    assert scorer.get("/console/score").status_code == 200 and scorer.get("/console/batch").status_code == 200

    reader = login(make_client(), tokens["reader"])  # read only: the queue without labelling, no scoring
    page = reader.get("/console/queue")
    assert page.status_code == 200 and queued(page.text) == QUEUE and "Mark fraud" not in page.text
    assert reader.get("/console/score").status_code == 403 and reader.get("/console/batch").status_code == 403
    r = reader.post("/console/label", data={"transaction_id": "tx-b", "label": "fraud", "csrf": csrf(page.text)},
                    headers=ORIGIN)  # fmt: skip
    assert r.status_code == 403 and services.log.records == []


def test_pages_carry_security_headers(browser):
    r = browser.get("/console/queue")
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    css = browser.get("/console/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


# --------------------------------------------------------------------------------------------------------------
# CSRF


@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        ({}, ORIGIN),  # no token
        ({"csrf": "0" * 64}, ORIGIN),  # a wrong token
        ({"csrf": None}, {"Origin": "https://evil.example"}),  # the right token from another origin
        ({"csrf": None}, {"Origin": "null"}),
        ({"csrf": None}, {"Sec-Fetch-Site": "cross-site"}),
    ],
)
def test_a_post_without_the_session_token_or_from_elsewhere_is_refused(browser, services, fields, headers):
    token = csrf(browser.get("/console/queue").text)
    data = {"transaction_id": "tx-b", "label": "fraud", **{k: v or token for k, v in fields.items()}}
    r = browser.post("/console/label", data=data, headers=headers)
    assert r.status_code == 403 and "CSRF" in r.text
    r = browser.post("/console/score", data={**tx(1), **{k: v or token for k, v in fields.items()}}, headers=headers)
    assert r.status_code == 403 and "CSRF" in r.text
    assert services.log.records == [] and "tx-b" in queued(browser.get("/console/queue").text)


def test_the_csrf_token_is_the_sessions(make_client, tokens, services):
    admin, other = login(make_client(), tokens["admin"]), login(make_client(), tokens["scorer"])
    foreign = csrf(other.get("/console/score").text)
    r = admin.post("/console/label", data={"transaction_id": "tx-b", "label": "fraud", "csrf": foreign},
                   headers=ORIGIN)  # fmt: skip
    assert r.status_code == 403 and services.log.records == []


def test_login_from_another_origin_is_refused(make_client, tokens):
    client = make_client()
    r = client.post("/console/login", data={"token": tokens["admin"]}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


# --------------------------------------------------------------------------------------------------------------
# the review queue


def test_queue_lists_unlabelled_reviews_oldest_first_with_reasons_and_card_history(browser):
    page = browser.get("/console/queue").text
    assert queued(page) == QUEUE  # tx-r3 has a chargeback label in silver; approve/block rows are not queued
    assert "3 transactions to review" in page
    item = page.split('data-transaction="tx-r1"')[1].split("</section>")[0]
    for text in ("AMOUNT_SPIKE", "NEW_DEVICE", "R001", "score 64.0", "card <code>card-00099</code>",
                 "model fraud_xgb v3", "2024-05-01 07:00:00 UTC", "Mark fraud", "Mark genuine"):  # fmt: skip
        assert text in item, text
    assert re.findall(r"<code>(tx-[a-z0-9]+)</code></td>", item) == ["tx-r2", "tx-e", "tx-r1"]  # newest first
    item = page.split('data-transaction="tx-b"')[1].split("</section>")[0]
    assert re.findall(r"<code>(tx-[a-z0-9]+)</code></td>", item) == ["tx-c", "tx-b", "tx-a"]
    assert f"<code>{CARD}</code>" in item and 'class="this"' in item
    assert "model fraud_xgb v5" in page.split('data-transaction="tx-r2"')[1]


def test_queue_pages(browser, monkeypatch):
    monkeypatch.setattr(console, "QUEUE_PAGE", 2)
    first = browser.get("/console/queue").text
    assert queued(first) == QUEUE[:2] and 'id="next"' in first and "showing 1 to 2" in first
    second = browser.get("/console/queue", params={"page": 2}).text
    assert queued(second) == QUEUE[2:] and 'id="next"' not in second and "previous page" in second
    assert browser.get("/console/queue", params={"page": "x"}).status_code == 422


def test_queue_escapes_every_value(settings, tmp_path, browser, services):
    from test_api import decision_row

    evil = decision_row("<b>tx</b>", "card-<i>x</i>", "review", T0, reasons=["<script>alert(1)</script>"],
                        model_version='"><img src=x onerror=alert(1)>')  # fmt: skip
    services.lake = LakeReader(lakehouse(settings, tmp_path / "evil", [evil]))
    page = browser.get("/console/queue").text
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>tx</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;tx&lt;/b&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_an_empty_lakehouse_has_an_empty_queue(settings, tmp_path, browser, services):
    services.lake = LakeReader(settings.model_copy(update={"lakehouse": settings.lakehouse.model_copy(
        update={"root": str(tmp_path / "none")})}))  # fmt: skip
    assert services.lake.review_queue(10) == ([], 0) and services.lake.labelled(["tx-b"]) == set()
    page = browser.get("/console/queue")
    assert page.status_code == 200 and "Nothing to review." in page.text


# --------------------------------------------------------------------------------------------------------------
# marking fraud / genuine: a label event


def test_marking_fraud_produces_a_contract_valid_label_event(browser, services, settings, tmp_path):
    r = label(browser, "tx-b", "fraud")
    assert r.status_code == 200 and "Transaction tx-b marked fraud." in r.text
    assert queued(r.text) == ["tx-r1", "tx-r2"]  # it left the queue
    [(topic, partition, offset, key, value)] = services.log.records
    assert topic == settings.eventlog.topics.labels.name and key == CARD and offset == 0
    event = decode("label", value)  # the contract check silver's label merge uses
    assert {k: v for k, v in event.items() if k != "reported_at"} == {
        "transaction_id": "tx-b", "card_id": CARD, "label": "fraud", "scenario": None, "source": "analyst"}  # fmt: skip
    [entry] = [e for e in audit_lines(settings, tmp_path) if e["call"] == "/console/label"]
    assert entry["principal"] == "admin" and entry["transaction_id"] == "tx-b" and entry["label"] == "fraud"
    assert (entry["topic"], entry["partition"], entry["offset"]) == (topic, partition, offset)


def test_marking_genuine_and_labels_once(browser, services):
    assert label(browser, "tx-r1", "genuine").status_code == 200
    assert json.loads(services.log.records[0][4])["label"] == "genuine"
    again = label(browser, "tx-r1", "fraud")
    assert again.status_code == 409 and "already labelled" in again.text and len(services.log.records) == 1
    chargeback = label(browser, "tx-r3", "genuine")  # labelled in silver already
    assert chargeback.status_code == 409 and len(services.log.records) == 1


def test_the_queue_relies_on_silver_once_it_has_the_label(browser, services, local):
    label(browser, "tx-r2", "fraud")
    row = {"transaction_id": "tx-r2", "card_id": "card-00099", "label": "fraud", "label_source": "analyst",
           "label_scenario": None, "label_reported_at": T0, "labeled_at": T0, "label_date": T0.date()}  # fmt: skip
    add_labels(local, [row])  # the pipeline merged it
    assert queued(browser.get("/console/queue").text) == ["tx-r1", "tx-b"]
    assert label(browser, "tx-r2", "genuine").status_code == 409


@pytest.mark.parametrize(("tx_id", "verdict", "status"), [("tx-zz", "fraud", 404), ("tx-b", "stolen", 422),
                                                          ("tx-b", "", 422)])  # fmt: skip
def test_bad_labels_are_refused(browser, services, tx_id, verdict, status):
    r = label(browser, tx_id, verdict)
    assert r.status_code == status and services.log.records == []
    assert queued(r.text) == QUEUE


def test_an_unreachable_event_log_labels_nothing(browser, services):
    services.log.up = False
    r = label(browser, "tx-b", "fraud")
    assert r.status_code == 503 and "event log unreachable" in r.text and queued(r.text) == QUEUE
    services.log.up = True
    assert label(browser, "tx-b", "fraud").status_code == 200


# --------------------------------------------------------------------------------------------------------------
# the score form


def test_score_form_offers_every_contract_field(browser):
    page = browser.get("/console/score").text
    for name in ("transaction_id", "event_time", "card_id", "amount", "channel", "card_present", "device_id"):
        assert f'name="{name}"' in page, name
    assert '<option value="ATM">' in page and 'value="console-' in page


@pytest.mark.parametrize("fields", [{}, {"amount": 5_000.0}, {"country": "KP"}])
def test_score_form_scores_like_the_api(browser, services, fields):
    t = tx(3, **fields)
    r = browser.post("/console/score", data={**as_form(t), "csrf": csrf(browser.get("/console/score").text)},
                     headers=ORIGIN)  # fmt: skip
    assert r.status_code == 200, r.text
    want = expected(services, [t])[0]
    result = r.text.split('id="result"')[1]
    assert f'<span class="decision {want["decision"]}">' in result
    assert f'<span class="big">{want["score"]:.1f}</span>' in result
    for reason in want["reasons"]:
        assert reason in result
    assert f"model {want['model']['name']} v{want['model']['version']}" in result


def as_form(t: dict) -> dict:
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in t.items()}


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"amount": "abc"}, "amount", "&#39;abc&#39; is not a number"),
        ({"amount": "-5"}, "amount", "less than or equal to the minimum"),
        ({"country": "France"}, "country", "does not match"),
        ({"card_id": ""}, "card_id", "&#39;card_id&#39; is a required property"),
        ({"card_present": "maybe"}, "card_present", "is not true or false"),
        ({"event_time": "yesterday"}, "event_time", "neither epoch milliseconds nor an ISO-8601 time"),
        ({"event_time": "2999-01-01T00:00:00Z"}, "event_time", "ahead of now"),
        ({"transaction_id": "tx 1"}, "transaction_id", "does not match"),
    ],
)
def test_score_form_shows_errors_by_field(browser, fields, field, text):
    data = {**as_form(tx(4)), **fields, "csrf": csrf(browser.get("/console/score").text)}
    r = browser.post("/console/score", data=data, headers=ORIGIN)
    assert r.status_code == 422, r.text
    after = r.text.split(f'id="f-{field}"')[1]
    assert '<span class="error">' in after.split("<label")[0] and text in after.split("<label")[0]
    assert 'id="result"' not in r.text


def test_score_form_takes_iso_times_and_escapes_the_echo(browser):
    data = {**as_form(tx(5)), "transaction_id": "<script>alert(1)</script>", "event_time": "2024-05-01T09:00:00"}
    r = browser.post("/console/score", data={**data, "csrf": csrf(browser.get("/console/score").text)},
                     headers=ORIGIN)  # fmt: skip
    assert r.status_code == 200 and 'id="result"' in r.text
    assert "<script>alert(1)" not in r.text and 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in r.text


# --------------------------------------------------------------------------------------------------------------
# batch scoring by CSV


def test_csv_upload_scores_rows_lists_row_errors_and_downloads_results(browser, services, make_client, tokens):
    good = [tx(10), tx(11, amount=5_000.0), tx(12, country="KP")]
    rows = [good[0], {**tx(13), "amount": "lots"}, good[1], {**tx(14), "card_id": ""}, good[2],
            {**tx(15), "channel": "FAX"}]  # fmt: skip
    r = upload(browser, as_csv(rows))
    assert r.status_code == 200, r.text
    assert "3 scored, 3 refused of 6 rows." in r.text
    want = {e["transaction_id"]: e for e in expected(services, good)}
    table = r.text.split('id="results"')[1]
    assert re.findall(r'<tr class="(refused)?"><td>(\d+)</td>', table) == [
        ("", "1"), ("refused", "2"), ("", "3"), ("refused", "4"), ("", "5"), ("refused", "6")]  # fmt: skip
    download = re.search(r'href="(/console/batch/[0-9a-f]+\.csv)" id="download"', r.text).group(1)
    got = browser.get(download)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"].startswith('attachment; filename="scores-')
    out = list(csv.DictReader(io.StringIO(got.text)))
    assert [int(o["row"]) for o in out] == [1, 2, 3, 4, 5, 6]
    for o in (out[0], out[2], out[4]):
        w = want[o["transaction_id"]]
        assert (o["decision"], float(o["score"]), o["reasons"]) == (w["decision"], w["score"], ";".join(w["reasons"]))
        assert o["model_version"] == w["model"]["version"] and o["error"] == ""
    assert out[1]["transaction_id"] == "tx-00013" and "'lots' is not a number" in out[1]["error"]
    assert "'card_id' is a required property" in out[3]["error"] and "FAX" in out[5]["error"]
    assert out[1]["decision"] == "" and out[3]["score"] == ""
    other = login(make_client(), tokens["scorer"])  # another principal does not get these results
    assert other.get(download).status_code == 404


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "no file uploaded"),
        ("transaction_id,amount,colour\nx,1,red\n", "unknown columns: colour"),
        ("transaction_id,amount\nx,1\n", "missing columns: card_id, card_present"),
        (",".join(tx(1)) + "\n", "the file has a header but no rows"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        ("\n", "the file is empty"),
    ],
)
def test_a_bad_csv_file_is_refused_with_the_reason(browser, services, body, problem):
    r = upload(browser, body)
    assert r.status_code == 422 and problem in r.text and 'id="results"' not in r.text


def test_csv_rows_beyond_max_batch_are_refused(make_client, tokens):
    client = login(make_client(max_batch=2), tokens["admin"])
    r = upload(client, as_csv([tx(1), tx(2), tx(3)]))
    assert r.status_code == 422 and "more than 2 rows (api.max_batch)" in r.text
    assert upload(client, as_csv([tx(1), tx(2)])).status_code == 200


def test_csv_row_shapes_and_formulas(browser):
    text = as_csv([tx(1), tx(2)]).splitlines()
    text[2] += ",extra,cells"
    text.append(as_csv([{**tx(3), "transaction_id": "=HYPERLINK(1)", "amount": "x"}]).splitlines()[1])
    text.append(",".join(["tx-00004", "1700000000000"]))  # too few cells: the missing fields are named
    r = upload(browser, "\n".join(text) + "\n")
    assert r.status_code == 200 and "1 scored, 3 refused of 4 rows." in r.text
    assert "2 more cells than the header has" in r.text
    download = re.search(r'href="(/console/batch/[0-9a-f]+\.csv)"', r.text).group(1)
    out = list(csv.DictReader(io.StringIO(browser.get(download).text)))
    assert out[2]["transaction_id"] == "'=HYPERLINK(1)"  # not a formula in a spreadsheet
    assert "is a required property" in out[3]["error"]


def test_the_console_is_not_in_the_openapi_schema(browser):
    assert not [p for p in browser.get("/openapi.json").json()["paths"] if p.startswith("/console")]
