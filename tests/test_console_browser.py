"""The analyst console in headless Chromium (Debian's ``chromium`` + ``chromium-driver``): the API with fakes under
uvicorn on a free port; log in, the queue, the score form, a CSV upload, marking a transaction fraud; a screenshot
of each view checked (a PNG of the window's size, not blank, the page's text as expected)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import pytest
import test_api
import uvicorn
from console_support import CARD, RecordingLog, lakehouse
from PIL import Image
from support import free_port
from test_api import FakeFeatures, models, tuned, tx
from test_console import as_csv
from webdriver import chromium

from lakehouse.config import Settings
from lakehouse.contracts import decode
from serving.api import Services, create_app
from serving.lake import LakeReader
from serving.scorer import Scorer

WIDTH, HEIGHT = 1280, 900
rulebook = test_api.rulebook  # test_api's fixture


@pytest.fixture
def served(settings: Settings, rulebook, tmp_path: Path):
    """The API on fakes and a local lakehouse, under uvicorn in a thread: (base URL, services)."""
    services = Services(Scorer(settings, models(), rules=rulebook), FakeFeatures(),
                        LakeReader(lakehouse(settings, tmp_path / "lakehouse")), RecordingLog())  # fmt: skip
    port = free_port()
    app = create_app(tuned(settings, tmp_path), lambda: services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", services
    server.should_exit = True
    thread.join(timeout=30)


def check_view(png: bytes, path: Path, text: str, expected: list[str], size: tuple[int, int]) -> None:
    """A screenshot of the whole viewport (``size``), not blank (many colours, none covering nearly all of it), of a
    page whose text has every ``expected`` item."""
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == size, (image.format, image.size, size)
    pixels = size[0] * size[1]
    colours = image.convert("RGB").getcolors(maxcolors=pixels)
    assert len(colours) >= 32, f"{path.name}: only {len(colours)} colours"
    assert max(n for n, _ in colours) < 0.95 * pixels, f"{path.name}: nearly uniform"
    missing = [e for e in expected if e not in text]
    assert not missing, f"{path.name}: {missing} not in {text[:1500]!r}"


def test_console_in_headless_chromium(served, settings, tmp_path):
    base, services = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    batch = tmp_path / "batch.csv"
    batch.write_text(as_csv([tx(20), {**tx(21), "amount": "lots"}, tx(22, country="KP")]))
    token = settings.api.tokens["admin"].token.get_secret_value()

    with chromium(WIDTH, HEIGHT) as b:
        b.get(f"{base}/console")
        assert b.url.endswith("/console/login")
        size = tuple(b.script("return [window.innerWidth, window.innerHeight]"))
        assert size[0] == WIDTH and 600 <= size[1] <= HEIGHT, size  # the window less its (headless) frame
        check_view(b.screenshot(), shots / "1-login.png", b.text(), ["Log in", "API token"], size)
        b.type("#token", token)
        b.click("#login")

        assert b.wait_url("/console/queue").endswith("/console/queue")
        check_view(b.screenshot(), shots / "2-queue.png", b.text(),
                   ["Review queue", "3 transactions to review", "tx-r1", "AMOUNT_SPIKE", "tx-b", CARD,
                    "the card's recent decisions", "Mark fraud", "admin"], size)  # fmt: skip

        b.click("a[href='/console/score']")
        b.type("#f-card_id", "card-00777")
        b.type("#f-customer_id", "cust-7")
        b.type("#f-merchant_id", "merch-1")
        b.type("#f-merchant_category_code", "5411")
        b.type("#f-amount", "5000")
        b.type("#f-country", "FR")
        b.click("#score")
        check_view(b.screenshot(), shots / "3-score.png", b.text(),
                   ["Score a transaction", "REVIEW", "/ 100", "model fraud_xgb v3", "features ok"], size)  # fmt: skip

        b.click("a[href='/console/batch']")
        b.type("#file", str(batch), clear=False)
        b.click("#upload")
        check_view(b.screenshot(), shots / "4-batch.png", b.text(),
                   ["2 scored, 1 refused of 3 rows", "tx-00020", "BLOCK", "'lots' is not a number",
                    "Download the results (CSV)"], size)  # fmt: skip
        href = b.script("return document.querySelector('#download').href")
        [cookie] = b.cookies()  # the session as the browser keeps it: HttpOnly, SameSite=Strict
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
            "console_token", True, "Strict", "/console")  # fmt: skip
        got = httpx.get(href, cookies={cookie["name"]: cookie["value"]})  # the page's CSP allows no script fetch
        assert got.status_code == 200 and got.text.startswith("row,transaction_id,decision")
        assert "tx-00022,block" in got.text

        b.click("a[href='/console/queue']")
        b.click("section[data-transaction='tx-b'] button.fraud")
        check_view(b.screenshot(), shots / "5-labelled.png", b.text(),
                   ["Transaction tx-b marked fraud.", "2 transactions to review", "tx-r1", "tx-r2"], size)  # fmt: skip
        assert "tx-b" not in b.script("return [...document.querySelectorAll('section')].map(s => "
                                      "s.dataset.transaction).join(',')")  # fmt: skip

    [(topic, _, _, key, value)] = services.log.records
    event = decode("label", value)
    assert topic == settings.eventlog.topics.labels.name and key == CARD
    assert (event["transaction_id"], event["label"], event["source"]) == ("tx-b", "fraud", "analyst")


def test_screenshot_check_refuses_a_blank_page(tmp_path):
    """The check itself: a uniform image fails it."""
    blank = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), "white").save(blank, "PNG")
    with pytest.raises(AssertionError, match="colours"):
        check_view(blank.getvalue(), tmp_path / "blank.png", "Review queue", ["Review queue"], (WIDTH, HEIGHT))
