"""The status page (§12.5) in a real headless Chromium, driven by Playwright.

Debian's ``chromium`` is used (``executable_path``); no browser is downloaded. Without
it or without Playwright the tests skip, unless ``OBSERVER_REQUIRE_BROWSER=1`` (CI),
where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from operators_kit import event

from observer_core.testing import DaemonFactory, daemon_config, wait_for

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15000
XSS = '<img src=x onerror="window.__owned = 1">'


def _unavailable(reason: str) -> None:
    if os.environ.get("OBSERVER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"OBSERVER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page in a fresh headless Chromium profile; console errors are kept on it."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=FLAGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text))
            page.console_errors = errors
            yield page
        finally:
            context.close()


def _text(page: Any, selector: str) -> str:
    return str(page.inner_text(selector))


def _wait_text(page: Any, selector: str, wanted: str | Callable[[str], bool]) -> None:
    check = wanted if callable(wanted) else (lambda text: wanted in text)
    wait_for(lambda: check(_text(page, selector)), TIMEOUT_MS / 1000, what=f"{selector}: {wanted}")


CONFIG = (
    daemon_config(cycle_secs=0.5, state_dir="state")
    + """\
[sinks.findings]
plugin = "jsonl"
path = "findings.jsonl"
accepts = ["escalation"]
[analyzers.escalation]
url = "STUB"
threshold = 2
"""
)


def test_the_page_shows_live_figures_failures_as_text_findings_and_an_unreachable_daemon(
    observer_daemon: DaemonFactory, stub_server: Any, browser_page: Any, tmp_path: Path
) -> None:
    review = stub_server()
    daemon = observer_daemon.start(CONFIG.replace("STUB", review.url))
    page = browser_page
    reply = httpx.get(f"{daemon.url}/")
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert reply.headers["x-content-type-options"] == "nosniff"

    page.goto(f"{daemon.url}/")
    _wait_text(page, "#state", "live")
    daemon.post_events(
        [event(source="web", endpoint="/v1/ok") for _ in range(3)]
        + [event(source="web", endpoint="/v1/pay", success=False, error=XSS, sig_hash="s1")] * 2
    )
    _wait_text(page, "#ring", "ring 5 / 2000 ops")
    _wait_text(page, "#sources", "web")
    _wait_text(page, "#failures", XSS)  # the markup shows as text ...
    assert page.eval_on_selector_all("#failures img", "nodes => nodes.length") == 0
    assert page.evaluate("window.__owned") is None  # ... and never ran
    _wait_text(page, "#findings", "escalation")
    assert "s1" in _text(page, "#findings")
    _wait_text(
        page, "#analyzers", lambda text: "analyzers.escalation" in text and "never" not in text
    )
    assert "sinks.findings" in _text(page, "#sinks")
    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
    if os.environ.get("OBSERVER_SCREENSHOT"):  # docs/status-page.png is made this way
        shutil.copy(tmp_path / "status-page.png", os.environ["OBSERVER_SCREENSHOT"])
    assert not [text for text in page.console_errors if "Content Security Policy" in text]

    daemon.kill()
    _wait_text(page, "#state", "unreachable")
    assert _text(page, "#failures") == "" and _text(page, "#ring") == ""  # no stale numbers
    page.screenshot(path=str(tmp_path / "status-page-unreachable.png"))


def test_a_protected_daemon_shows_nothing_until_the_token_is_entered(
    observer_daemon: DaemonFactory, browser_page: Any
) -> None:
    config = CONFIG.split("[sinks.findings]")[0].replace(
        "port = {port}", 'port = {port}\ntoken = "t0k"'
    )
    daemon = observer_daemon.start(config)
    daemon_headers = {"Authorization": "Bearer t0k"}
    reply = httpx.post(
        f"{daemon.url}/event", json=event(source="private-agent"), headers=daemon_headers
    )
    assert reply.status_code == 200
    page = browser_page
    page.goto(f"{daemon.url}/")
    _wait_text(page, "#state", "token needed")
    assert page.is_visible("#login") and not page.is_visible("#main")
    assert "private-agent" not in page.content()

    page.fill("#token", "wrong")
    page.click("#login button")
    _wait_text(page, "#login-error", "that token was refused")

    page.fill("#token", "t0k")
    page.click("#login button")
    _wait_text(page, "#state", "live")
    _wait_text(page, "#sources", "private-agent")
    assert page.evaluate("sessionStorage.getItem('observer-token')") == "t0k"
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
