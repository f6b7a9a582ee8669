"""The server's web page in a real headless browser: Debian's chromium driven by selenium through
the system chromedriver (no browser download). Skipped when either is missing
(`apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import PROMPT, Server  # noqa: E402

from nanochat_ternary import TernaryModel  # noqa: E402

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER), reason="no chromium + chromedriver installed")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--parallel", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    options = Options()
    options.binary_location = BROWSER  # type: ignore[assignment]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _open(browser: object, server: Server) -> None:
    browser.get(server.url + "/")  # type: ignore[attr-defined]
    WebDriverWait(browser, 20).until(lambda d: "context" in d.find_element(By.ID, "model").text)


def _set(browser: object, field: str, value: str) -> None:
    el = browser.find_element(By.ID, field)  # type: ignore[attr-defined]
    el.clear()
    el.send_keys(value)


def test_page_streams_a_completion(browser: object, server: Server) -> None:
    _open(browser, server)
    _set(browser, "input", PROMPT)
    _set(browser, "max_tokens", "24")
    _set(browser, "temperature", "0")
    browser.find_element(By.ID, "send").click()  # type: ignore[attr-defined]
    stats = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "stats") if d.find_element(By.ID, "stats").get_attribute("data-finish") else False
    )
    assert stats.get_attribute("data-finish") in ("length", "stop")
    texts = browser.find_elements(By.CSS_SELECTOR, "#log .msg .text")  # type: ignore[attr-defined]
    expected = TernaryModel.from_pretrained().generate(PROMPT, max_new_tokens=24, temperature=0, repetition_penalty=1.0,
                                                        token_healing=False)
    # textContent keeps the newlines the rendered text shows
    assert texts[-1].get_attribute("textContent") == expected


def _finished(server: Server) -> float:
    """Requests finished so far, whatever the outcome."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("nct:request_finished_total{"))


def test_stop_button_cancels_and_chat_mode_answers(browser: object, server: Server) -> None:
    _open(browser, server)
    finished0 = _finished(server)
    _set(browser, "input", PROMPT)
    _set(browser, "max_tokens", "480")
    _set(browser, "temperature", "0")
    browser.find_element(By.ID, "send").click()  # type: ignore[attr-defined]
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log .msg .text")[-1].text)
    browser.find_element(By.ID, "stop").click()  # type: ignore[attr-defined]
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "stats").get_attribute("data-finish"))
    finish = browser.find_element(By.ID, "stats").get_attribute("data-finish")  # type: ignore[attr-defined]
    if finish == "stopped":  # (a fast machine may have finished the 480 tokens first)
        # The stop button aborts the page's stream. On an idle machine the server may already have
        # generated all 480 tokens of the tiny model (the page is still reading them) when the click
        # lands, so its outcome is "length", not "cancelled"; either way the request must be over.
        # That a disconnected stream is cancelled server-side is asserted in test_serve.py.
        deadline = time.monotonic() + 10
        while server.metric("nct:num_requests_running") > 0 or _finished(server) <= finished0:
            assert time.monotonic() < deadline, "the stopped generation is still running on the server"
            time.sleep(0.05)
    assert not browser.find_element(By.ID, "send").get_attribute("disabled")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "clear").click()  # type: ignore[attr-defined]
    browser.find_element(By.ID, "mode-chat").click()  # type: ignore[attr-defined]
    _set(browser, "max_tokens", "8")
    _set(browser, "input", "Write a Rust function.")
    browser.find_element(By.ID, "send").click()  # type: ignore[attr-defined]
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "stats").get_attribute("data-finish"))
    who = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#log .msg .who")]  # type: ignore[attr-defined]
    assert who == ["you", "assistant"]
    assert browser.find_element(By.ID, "stats").get_attribute("data-finish") in ("length", "stop")  # type: ignore[attr-defined]
