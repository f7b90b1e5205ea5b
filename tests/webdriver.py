"""A minimal W3C WebDriver client (over httpx) for Debian's headless Chromium and chromedriver: enough to fill
forms, click, read the page and take screenshots, with no browser download and no Selenium."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from support import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


class Browser:
    """One WebDriver session: ``get``, ``find``/``type``/``click``, ``text``, ``screenshot``."""

    def __init__(self, url: str, session: str):
        self.http, self.session = httpx.Client(base_url=f"{url}/session/{session}", timeout=60), session

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        r = self.http.request(method, path, json=body if method == "POST" else None)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {value.get('error')}: {value.get('message')}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        assert isinstance(found, dict) and ELEMENT in found, found
        return found[ELEMENT]

    def type(self, css: str, text: str, clear: bool = True) -> None:
        element = self.find(css)
        if clear:
            self._call("POST", f"/element/{element}/clear", {})
        self._call("POST", f"/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def script(self, source: str, *args: object) -> object:
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def text(self) -> str:
        return self.script("return document.body.innerText")

    def cookies(self) -> list[dict]:
        return self._call("GET", "/cookie")

    @property
    def url(self) -> str:
        return self._call("GET", "/url")

    def wait_url(self, suffix: str, timeout_s: float = 20.0) -> str:
        """The page's URL once it ends with ``suffix`` (a click that submits a form returns before a loaded machine
        has navigated); the last URL seen if it never does."""
        deadline = time.monotonic() + timeout_s
        while not (url := self.url).endswith(suffix) and time.monotonic() < deadline:
            time.sleep(0.2)
        return url

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium (Debian's ``chromium`` and ``chromium-driver``) under a fresh chromedriver."""
    driver, binary = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver and binary, "install Debian's chromium and chromium-driver (make install does)"
    port = free_port()
    # a session of its own: chromedriver and the browsers it starts are stopped together (killpg)
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/status", timeout=2).json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.2)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--hide-scrollbars"]  # fmt: skip
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": binary, "args": args}}}}  # fmt: skip
        r = httpx.post(f"{url}/session", json=caps, timeout=120)
        assert r.status_code == 200, r.text
        browser = Browser(url, r.json()["value"]["sessionId"])
        try:
            yield browser
        finally:
            httpx.delete(f"{url}/session/{browser.session}", timeout=30)  # closes the browser
            browser.http.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the session left
        proc.wait(timeout=30)
