"""The chat page in real headless Chromium (Debian's chromium + chromium-driver, via Selenium), its routes,
and `graphllm webui` opening it."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import KEY, TINY, client, running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)

from graphllm.commands import serve as serve_command
from graphllm.runtime.sampling import chat_sampling

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PHONE = (390, 844)
GREEDY = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}  # what open_chat sets

# replaces the page's fetch of /v1/chat/completions with a stream of the given [delay ms, text] pieces
MOCK_REPLY = """
const [pieces, status] = arguments;
window.realFetch = window.realFetch || window.fetch;
window.fetch = async (url, init) => {
  if (!String(url).endsWith("/chat/completions")) return window.realFetch(url, init);
  window.lastBody = JSON.parse(init.body);
  const bytes = new TextEncoder();
  const body = new ReadableStream({async start(out) {
    for (const [delay, text] of pieces) {
      await new Promise((done) => setTimeout(done, delay));
      out.enqueue(bytes.encode(text));
    }
    out.close();
  }});
  return new Response(body, {status, headers: {"Content-Type": status === 200 ? "text/event-stream" : "application/json"}});
};
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    # an event per token: test_stop_ends_the_reply's throttled link then streams long enough to press Stop
    with running_server(tmp_path_factory.mktemp("webui") / "server.log", "--api-key", KEY,
                        "--stream-interval", "0") as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (run .ci/install-browser)")
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


def settings(browser, **values: str) -> None:
    """Open the settings panel, type the values (field id with _ for -), close it."""
    toggle = browser.find_element("id", "settings-toggle")
    toggle.click()
    for field, value in values.items():
        element = browser.find_element("id", field.replace("_", "-"))
        element.clear()
        element.send_keys(value)
    toggle.click()


def open_chat(browser, server: str, max_tokens: int):
    """Load the page, answer the API-key prompt, set greedy decoding and the reply length."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    alert.send_keys(KEY)
    alert.accept()
    WebDriverWait(browser, 10).until(lambda d: d.find_element("id", "model").text == "tiny_llama"
                                     and d.find_element("id", "top-k").get_attribute("value") != "")
    settings(browser, temperature="0", repetition_penalty="1", max_tokens=str(max_tokens))
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


def idle(browser) -> bool:
    """The reply has ended (Send is enabled again)."""
    return browser.find_element("id", "send").is_enabled()


def stored(browser) -> list[dict]:
    """The conversation on screen as the page keeps it (role and content of each message)."""
    return browser.execute_script(
        "const c = JSON.parse(localStorage.getItem('graphllm-conversations'));"
        "const id = JSON.parse(localStorage.getItem('graphllm-current'));"
        "return c.find((x) => x.id === id).messages.map((m) => ({role: m.role, content: m.content}));")


def sse(*pieces: str, finish: str | None = "stop", error: str | None = None, delay: int = 30) -> list:
    """A chat completion stream of these text pieces as [delay ms, text] pairs for MOCK_REPLY."""
    def event(data):
        return [delay, f"data: {json.dumps(data)}\n\n"]

    def chunk(delta, finish_reason=None, tokens=0):
        return event({"object": "chat.completion.chunk", "usage": {"completion_tokens": tokens},
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}, tokens=i + 1) for i, piece in enumerate(pieces)]
    if error:
        out.append(event({"error": {"message": error, "type": "server_error"}}))
    elif finish:
        out.append(chunk({}, finish, len(pieces)))
    return out + [[delay, "data: [DONE]\n\n"]]


def mock_reply(browser, pieces: list, status: int = 200) -> None:
    browser.execute_script(MOCK_REPLY, pieces, status)


def in_view(browser, element) -> bool:
    """The element is shown inside the window (not scrolled away, not cut off at the sides)."""
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.width > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth;",
        element)


# ---------------------------------------------------------------- the chat against the tiny model
def test_chat_streams_a_reply_keeps_the_conversation_and_shows_speed(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 20)
    say(browser, "Hello there")
    wait.until(lambda d: idle(d) and "tokens/s" in d.find_element("id", "stats").text)
    say(browser, "And again")
    wait.until(lambda d: len(d.find_elements("css selector", ".msg.assistant")) == 2 and idle(d))
    roles = [e.get_attribute("class").split()[1] for e in browser.find_elements("css selector", ".msg")]
    assert roles == ["user", "assistant", "user", "assistant"]
    history = stored(browser)
    assert [m["content"] for m in history[::2]] == ["Hello there", "And again"]
    expected = client(server).chat.completions.create(model="tiny_llama", messages=history[:3], max_tokens=20,
                                                      **GREEDY)
    assert history[3]["content"] == expected.choices[0].message.content  # the page sent the whole conversation
    speed = r"\d+ tokens?, [\d.]+ tokens/s( \(with the prompt\))?"  # the latter when all came in one chunk
    assert re.fullmatch(speed, browser.find_element("id", "stats").text)
    meta = browser.find_elements("css selector", ".msg.assistant .meta")[-1].text
    assert re.fullmatch(speed + r", first token after [\d.]+ s", meta)
    screenshot(browser, tmp_path / "webui-chat.png", record_property)


def test_stop_ends_the_reply(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 150)
    # a slow link keeps the reply streaming long enough to press Stop in the middle of it
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": 3000, "uploadThroughput": -1})
    say(browser, "Tell me everything")
    wait.until(lambda d: d.find_element("css selector", ".msg.assistant .body").text.strip())
    browser.find_element("id", "stop").click()
    wait.until(idle)
    note = browser.find_element("css selector", ".msg.assistant .note")
    assert note.text == "(stopped)" and in_view(browser, note)
    assert not browser.find_element("id", "stop").is_enabled()
    screenshot(browser, tmp_path / "webui-stopped.png", record_property)


def test_settings_reach_the_server_and_are_kept(browser, server):
    wait = open_chat(browser, server, 20)
    chosen = {"system": "You are a pirate.", "temperature": "1.3", "top_k": "5", "top_p": "0.8",
              "repetition_penalty": "1.05", "max_tokens": "7", "seed": "1234"}
    settings(browser, **chosen)
    say(browser, "Hi")
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant .meta"))
    reply = stored(browser)[1]["content"]

    def server_reply(seed: int):
        return client(server).chat.completions.create(
            model="tiny_llama", messages=[{"role": "system", "content": "You are a pirate."},
                                          {"role": "user", "content": "Hi"}],
            temperature=1.3, top_p=0.8, max_tokens=7, seed=seed, extra_body={"top_k": 5, "repetition_penalty": 1.05})

    expected = server_reply(1234)
    assert reply == expected.choices[0].message.content  # system prompt, sampling, seed and length all arrived
    assert reply != server_reply(4321).choices[0].message.content
    meta = browser.find_element("css selector", ".msg.assistant .meta").text
    assert meta.startswith(f"{expected.usage.completion_tokens} tokens, ")

    browser.refresh()  # the API key is kept for the tab; the settings for the browser
    wait.until(lambda d: d.find_element("id", "model").text == "tiny_llama")
    browser.find_element("id", "settings-toggle").click()
    for field, value in chosen.items():
        assert browser.find_element("id", field.replace("_", "-")).get_attribute("value") == value
    browser.find_element("id", "defaults").click()  # back to the chat defaults the server announces
    defaults = httpx.get(server + "/v1/graphllm/defaults", headers={"Authorization": f"Bearer {KEY}"},
                         trust_env=False).json()
    for field in ("temperature", "top_k", "top_p", "repetition_penalty", "max_tokens", "seed"):
        assert float(browser.find_element("id", field.replace("_", "-")).get_attribute("value")) == defaults[field]
    assert browser.find_element("id", "system").get_attribute("value") == ""


def test_conversations_are_kept_renamed_and_deleted(browser, server):
    wait = open_chat(browser, server, 8)
    say(browser, "First conversation")
    wait.until(idle)
    first = stored(browser)
    browser.find_element("id", "new").click()
    assert not browser.find_elements("css selector", ".msg")
    say(browser, "Second conversation")
    wait.until(idle)
    titles = lambda: [e.text for e in browser.find_elements("css selector", "#conversations .title")]  # noqa: E731
    assert titles() == ["Second conversation", "First conversation"]  # the latest first

    browser.find_elements("css selector", "#conversations .title")[1].click()
    assert stored(browser) == first
    browser.find_element("css selector", "#conversations li.current .rename").click()
    field = browser.find_element("css selector", "#conversations .rename-input")
    assert field.get_attribute("value") == "First conversation"
    field.send_keys("Renamed\n")  # the old title is selected: typing replaces it
    assert titles() == ["Second conversation", "Renamed"]
    browser.find_elements("css selector", "#conversations .title")[0].click()
    browser.find_element("css selector", "#conversations li.current .delete").click()
    browser.switch_to.alert.accept()
    assert titles() == ["Renamed"] and not browser.find_elements("css selector", ".msg")

    browser.refresh()
    wait.until(lambda d: d.find_element("id", "model").text == "tiny_llama")
    assert titles() == ["Renamed"]
    browser.find_element("css selector", "#conversations .title").click()
    assert stored(browser) == first
    shown = [e.text for e in browser.find_elements("css selector", ".msg .body, .msg.user")]
    assert shown[0] == "First conversation" and len(shown) == 2


# ---------------------------------------------------------------- errors
def test_a_failed_turn_stays_with_its_error_and_is_left_out(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 10)
    settings(browser, top_p="0")  # the server refuses it: 400
    say(browser, "First")
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant .error"))
    error = browser.find_element("css selector", ".msg.assistant .error")
    assert "HTTP 400" in error.text and "top_p" in error.text and in_view(browser, error)
    settings(browser, top_p="0.9")
    say(browser, "Second")
    wait.until(lambda d: idle(d) and len(d.find_elements("css selector", ".msg.assistant")) == 2)
    history = stored(browser)
    assert [m["content"] for m in history[::2]] == ["First", "Second"]
    expected = client(server).chat.completions.create(model="tiny_llama", max_tokens=10, **GREEDY,
                                                      messages=[{"role": "user", "content": "Second"}])
    assert history[3]["content"] == expected.choices[0].message.content  # the failed turn was not sent
    browser.refresh()
    wait.until(lambda d: len(d.find_elements("css selector", ".msg")) == 4)
    assert len(browser.find_elements("css selector", ".msg.failed .error")) == 1
    assert not browser.find_elements("css selector", ".retry")  # only the last turn can be retried
    screenshot(browser, tmp_path / "webui-error.png", record_property)


def test_prompt_processing_stream_error_and_length_note(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 10)
    pieces = sse("Par", "tial ", "ans", "wer", error="the server is shutting down")
    pieces[0][0] = 1500  # a long prompt: the first event comes late
    mock_reply(browser, pieces)
    say(browser, "A long prompt")
    status = wait.until(lambda d: d.find_element("css selector", ".msg.assistant.pending .status"))
    assert status.text.startswith("Processing prompt")
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant .error"))
    bubble = browser.find_element("css selector", ".msg.assistant")
    assert bubble.find_element("css selector", ".body").text == "Partial answer"
    assert "the server is shutting down" in bubble.find_element("css selector", ".error").text
    # the speed is the decode speed, from the first token on: the long wait for it is shown apart
    tokens, rate, first = re.fullmatch(r"(\d+) tokens, ([\d.]+) tokens/s, first token after ([\d.]+) s",
                                       bubble.find_element("css selector", ".meta").text).groups()
    assert tokens == "4" and float(first) >= 1.4 and float(rate) > 8  # 3 tokens in ~0.1 s, not 4 in 1.6 s
    assert browser.execute_script("return window.lastBody.messages") == [{"role": "user", "content": "A long prompt"}]

    mock_reply(browser, sse("Cut ", "short", finish="length"))
    browser.find_element("css selector", ".retry").click()  # sends "A long prompt" again, now with a length limit
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant .note"))
    assert [m["content"] for m in stored(browser)] == ["A long prompt", "Cut short"]
    note = browser.find_element("css selector", ".msg.assistant .note")
    assert note.text == "(length limit)" and in_view(browser, note)
    mock_reply(browser, [[0, json.dumps({"error": {"message": "boom"}})]], status=500)
    say(browser, "Again")
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant .error"))
    assert "HTTP 500: boom" in browser.find_element("css selector", ".msg.assistant.failed .error").text
    assert browser.execute_script("return window.lastBody.messages")[-1] == {"role": "user", "content": "Again"}


# ---------------------------------------------------------------- Markdown
MARKDOWN = """Here is **code**:

```python
def add(a, b):
    return a + b  # a sum
```

- first item
- second item

| name | value |
|------|-------|
| a    | 1     |
| b    | 2     |
"""
HOSTILE = ('Look <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script>\n\n'
           '![pic](x" onerror="window.pwned=3) [link](javascript:window.pwned=4) '
           '<a href="javascript:window.pwned=5">a</a> <iframe src="javascript:window.pwned=6"></iframe>\n\n'
           '<div onclick="window.pwned=7">click</div>')


def test_markdown_is_rendered_highlighted_and_sanitized(browser, server, tmp_path, record_property):
    wait = open_chat(browser, server, 10)
    mock_reply(browser, sse(*[MARKDOWN[i:i + 25] for i in range(0, len(MARKDOWN), 25)]))
    say(browser, "Show me Markdown")
    wait.until(idle)
    reply = browser.find_element("css selector", ".msg.assistant .body")
    assert reply.find_element("css selector", "strong").text == "code"
    keyword = reply.find_element("css selector", "pre code.hljs .hljs-keyword")
    assert keyword.text == "def"
    assert reply.find_element("css selector", "pre code .hljs-comment").text == "# a sum"
    assert [li.text for li in reply.find_elements("css selector", "ul li")] == ["first item", "second item"]
    assert [th.text for th in reply.find_elements("css selector", "table th")] == ["name", "value"]
    assert len(reply.find_elements("css selector", "table tbody tr")) == 2
    copy = reply.find_element("css selector", "pre .copy")
    copy.click()
    wait.until(lambda d: copy.text in ("Copied", "Copy failed"))
    assert copy.text == "Copied"
    rate = re.fullmatch(r"\d+ tokens, ([\d.]+) tokens/s, first token after [\d.]+ s",
                        browser.find_element("css selector", ".msg.assistant .meta").text).group(1)
    assert 5 < float(rate) < 100  # pieces come every 30 ms
    screenshot(browser, tmp_path / "webui-markdown.png", record_property)

    mock_reply(browser, sse(HOSTILE))
    say(browser, "Now something hostile")
    wait.until(lambda d: idle(d) and len(d.find_elements("css selector", ".msg.assistant")) == 2)
    time.sleep(0.5)  # an onerror would have fired by now
    hostile = browser.find_elements("css selector", ".msg.assistant .body")[1]
    for tag in ("img", "script", "iframe", "[onclick]", "[onerror]"):
        assert not browser.find_elements("css selector", f"#messages {tag}"), tag
    assert all(not (a.get_attribute("href") or "").startswith("javascript:")
               for a in browser.find_elements("css selector", "#messages a"))
    assert '<img src=x onerror="window.pwned=1">' in hostile.text  # shown as text
    page = browser.current_window_handle
    for a in browser.find_elements("css selector", "#messages a"):
        a.click()  # none runs anything (links open in a new tab)
    browser.switch_to.window(page)
    assert browser.execute_script("return window.pwned") is None
    assert stored(browser)[3]["content"] == HOSTILE


# ---------------------------------------------------------------- phone width, dark mode
def test_phone_layout_in_dark_mode(browser, server, tmp_path, record_property):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    wait = open_chat(browser, server, 12)
    say(browser, "Hello from a phone")
    wait.until(idle)
    wide = ("A wide one:\n\n```python\nprint('" + "x" * 150 + "')\n```\n\n| " + " | ".join(f"column {i}" for i in range(12))
            + " |\n|" + "---|" * 12 + "\n| " + " | ".join(str(i) for i in range(12)) + " |\n\n" + "y" * 120)
    mock_reply(browser, sse(wide))
    say(browser, "Something wide")
    wait.until(lambda d: idle(d) and d.find_elements("css selector", ".msg.assistant table"))

    def fits() -> bool:
        return browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]

    assert browser.execute_script("return innerWidth") == PHONE[0] and fits()
    for control in ("menu", "model", "settings-toggle", "input", "send", "stop"):
        assert in_view(browser, browser.find_element("id", control)), control
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert sum(map(int, re.findall(r"\d+", background)[:3])) < 150, background  # dark
    screenshot(browser, tmp_path / "webui-phone.png", record_property)

    browser.find_element("id", "settings-toggle").click()
    assert fits() and in_view(browser, browser.find_element("id", "seed"))
    screenshot(browser, tmp_path / "webui-phone-settings.png", record_property)
    browser.find_element("id", "settings-toggle").click()
    browser.find_element("id", "menu").click()
    wait.until(lambda d: in_view(d, d.find_element("id", "new")))
    assert fits()
    screenshot(browser, tmp_path / "webui-phone-conversations.png", record_property)
    browser.execute_script("arguments[0].click()", browser.find_element("id", "backdrop"))  # beside the list
    wait.until(lambda d: not in_view(d, d.find_element("id", "new")))


# ---------------------------------------------------------------- routes and `graphllm webui`
def test_defaults_route_and_vendored_scripts(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    got = httpx.get(server + "/v1/graphllm/defaults", headers=auth, trust_env=False).json()
    generation_config = json.loads((TINY / "generation_config.json").read_text())
    assert got == {**chat_sampling(generation_config), "max_tokens": 512, "seed": -1}
    assert httpx.get(server + "/v1/graphllm/defaults", trust_env=False).status_code == 401
    page = httpx.get(server + "/", trust_env=False).text
    scripts = re.findall(r'(?:src=|from )"\.?/?(static/[^"]+)"', page)
    assert len(scripts) == 19
    for path in scripts:
        r = httpx.get(f"{server}/{path}", trust_env=False)
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], path
    assert httpx.get(server + "/static/../app.py", trust_env=False).status_code == 404
    vendored = (Path(serve_command.__file__).parents[1] / "server" / "static" / "VENDORED.md").read_text()
    for name in ("marked", "dompurify", "highlight.js"):
        assert name in vendored


def test_webui_opens_the_page_only_with_a_display(monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["webui", "-m", "x"]).open_page and not parser.parse_args(["serve", "-m", "x"]).open_page
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    serve_command._open_page("http://127.0.0.1:8080/")
    assert "no display: open http://127.0.0.1:8080/ in a browser" in capsys.readouterr().err
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    serve_command._open_page("http://127.0.0.1:8080/")
    deadline = time.monotonic() + 5
    while not opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opened == ["http://127.0.0.1:8080/"] and "opening" in capsys.readouterr().err
