"""The chat page in real headless Chromium (Debian's chromium + chromium-driver, via Selenium)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server import KEY, client, running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (run .ci/install-browser)")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("webui") / "server.log", "--api-key", KEY) as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,700", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_chat(browser, server: str, max_tokens: int):
    """Load the page, answer the API-key prompt, set greedy decoding and the reply length."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    alert.send_keys(KEY)
    alert.accept()
    WebDriverWait(browser, 10).until(lambda d: d.find_element("id", "model").text == "tiny_llama")
    for field, value in (("temperature", "0"), ("max-tokens", str(max_tokens))):
        element = browser.find_element("id", field)
        element.clear()
        element.send_keys(value)
    return WebDriverWait(browser, 30)


def screenshot(browser, path: Path, record_property) -> None:
    """Save the page as a PNG in the test's output folder and name it in the report."""
    browser.save_screenshot(str(path))
    record_property("screenshot", str(path))
    print(f"screenshot: {path}")
    assert path.stat().st_size > 5000


def say(browser, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.find_element("id", "input").send_keys(text, Keys.ENTER)


def test_chat_streams_a_reply_keeps_the_conversation_and_shows_speed(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 20)
    say(browser, "Hello there")
    wait.until(lambda d: d.find_element("id", "send").is_enabled()
               and "tokens/s" in d.find_element("id", "stats").text)
    say(browser, "And again")
    wait.until(lambda d: len(d.find_elements("css selector", ".msg.assistant")) == 2
               and d.find_element("id", "send").is_enabled())
    bubbles = [(e.get_attribute("class").split()[1], browser.execute_script("return arguments[0].firstChild.data", e))
               for e in browser.find_elements("css selector", ".msg")]
    assert [role for role, _ in bubbles] == ["user", "assistant", "user", "assistant"]
    history = [{"role": role, "content": text} for role, text in bubbles[:3]]
    expected = client(server).chat.completions.create(model="tiny_llama", messages=history, max_tokens=20,
                                                      temperature=0)
    assert bubbles[3][1] == expected.choices[0].message.content  # the page sent the whole conversation
    assert re.fullmatch(r"\d+ tokens, [\d.]+ tokens/s", browser.find_element("id", "stats").text)
    screenshot(browser, tmp_path / "webui-chat.png", record_property)


def test_stop_ends_the_reply(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 150)
    # a slow link keeps the reply streaming long enough to press Stop in the middle of it
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": 3000, "uploadThroughput": -1})
    say(browser, "Tell me everything")
    wait.until(lambda d: d.find_element("css selector", ".msg.assistant").text.strip())
    browser.find_element("id", "stop").click()
    wait.until(lambda d: d.find_element("id", "send").is_enabled())
    assert "(stopped)" in browser.find_element("css selector", ".msg.assistant").text
    assert not browser.find_element("id", "stop").is_enabled()
    screenshot(browser, tmp_path / "webui-stopped.png", record_property)
