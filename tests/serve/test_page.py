"""The web page at /, in a real headless browser (Debian's chromium + chromium-driver, driven by selenium)
against the real server: classify, neighbours, an extractive answer and a streamed completion, read from the page."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from leanlm.serve.process import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

CONTEXT = ("The Normans gave their name to Normandy, a region in France. "
           "Their leader Rollo swore fealty to King Charles.")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    from leanlm.models.tiny import tiny_decoder, tiny_encoder

    root = tmp_path_factory.mktemp("page")
    clf = tiny_encoder().save(root / "clf")
    qa = tiny_encoder("question-answering").save(root / "qa")
    lm = tiny_decoder().save(root / "lm")
    with ServerProcess([str(clf), str(qa), str(lm), "--max-new-tokens", "48", "--no-access-log"],
                       log=root / "server.log") as s:
        yield s


def test_page_and_its_assets_are_served_without_a_key(page_server):
    html = httpx.get(page_server.url + "/")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html.text
        r = httpx.get(page_server.url + asset)
        assert r.status_code == 200 and len(r.text) > 500
    for page in (html.text, httpx.get(page_server.url + "/static/app.js").text):  # no CDN: nothing off the server
        assert "://" not in page


def _browser():
    """A headless chromium through selenium, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; it is in the dev extra)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install -y chromium chromium-driver; .ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1250"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_the_page_in_a_real_browser(page_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 20)
        text_of = lambda id: browser.find_element(By.ID, id).text  # noqa: E731
        browser.get(page_server.url + "/")
        wait.until(lambda b: len(Select(b.find_element(By.ID, "model")).options) == 3)
        model = Select(browser.find_element(By.ID, "model"))
        assert [o.get_attribute("value") for o in model.options] == ["clf", "qa", "lm"]

        # classifier: label + probabilities, and neighbours through its encoder body
        for sentence in ("A gorgeous, witty, seductive movie.", "Dull, lifeless and far too long."):
            box = browser.find_element(By.ID, "text")
            box.clear()
            box.send_keys(sentence)
            browser.find_element(By.ID, "run").click()
            wait.until(lambda b: text_of("result-label") and b.find_element(By.ID, "run").is_enabled())
        assert text_of("result-label") in ("negative", "positive")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#probabilities .bar")) == 2
        assert browser.find_element(By.CSS_SELECTOR, "#probabilities .fill").size["width"] > 0  # bars are drawn
        neighbours = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#neighbours li")]
        assert len(neighbours) == 5 and any("gorgeous" in n for n in neighbours)  # the earlier text is a neighbour
        wait.until(lambda b: "classify p50" in text_of("latency"))
        shots = Path(os.environ.get("LEANLM_PAGE_SCREENSHOTS", tmp_path))  # set it to look at the page
        browser.save_screenshot(str(shots / "page-classify.png"))

        # extractive QA: the answer is read off the page and is the highlighted span of the context
        model.select_by_value("qa")
        shown = lambda id: browser.find_element(By.ID, id).is_displayed()  # noqa: E731
        assert shown("question") and shown("context") and not shown("text")
        browser.find_element(By.ID, "question").send_keys("Who was their leader?")
        browser.find_element(By.ID, "context").send_keys(CONTEXT)
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: text_of("answer"))
        answer = text_of("answer")
        assert answer in CONTEXT and browser.find_element(By.CSS_SELECTOR, "#answer-context mark").text == answer
        assert "score" in text_of("answer-score")

        # decoder: a completion streamed over server-sent events into the page
        model.select_by_value("lm")
        box = browser.find_element(By.ID, "text")
        box.clear()
        box.send_keys("Once upon a time")
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: "finished" in text_of("completion-state"))
        assert text_of("completion") and not browser.find_element(By.ID, "error").is_displayed()

        # a bad request shows the server's one-line error on the page
        model.select_by_value("qa")
        too_long = "Who? " * 300  # 600 tokens: past the 512 the model takes
        browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "question"), too_long)
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: b.find_element(By.ID, "error").is_displayed())
        assert "tokens" in text_of("error")
        browser.find_element(By.ID, "question").clear()
        browser.find_element(By.ID, "question").send_keys("Who was their leader?")
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: not shown("error") and b.find_element(By.ID, "run").is_enabled())
        browser.save_screenshot(str(shots / "page-answer.png"))
    finally:
        browser.quit()
