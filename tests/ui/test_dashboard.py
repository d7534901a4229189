"""The dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, via Selenium)
against a real API server, worker and projector: open it with a token in the fragment, see a
task, trigger it, see the executions appear without a reload, as an operator and as a viewer.

Screenshots are kept in ``.stack/test-output/ui/`` (``SCHED_UI_SCREENSHOTS`` to change it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.api.conftest import auth, new_tenant, token
from tests.api.test_server import Server
from tests.integration.harness import REPO

SHOTS = Path(os.environ.get("SCHED_UI_SCREENSHOTS", REPO / ".stack" / "test-output" / "ui"))
NASTY_NAME = '<img src=x onerror="window.__xss=1"> nightly & "report"'
"""A task name that would run script if the page ever parsed data as HTML."""
T = TypeVar("T")


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs them: missing there is a failure, not a skip
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless Chromium, with the browser's console log kept (JavaScript and CSP errors)."""
    chromium, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, what: str, check: Callable[[WebDriver], T], seconds: float = 30) -> T:
    """``check``'s first truthy answer within ``seconds``; a screenshot and a clear failure otherwise."""

    def probe(d: WebDriver) -> T | bool:
        try:
            return check(d)
        except (StaleElementReferenceException, WebDriverException):
            return False  # the page re-rendered under our feet: look again

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(probe)  # type: ignore[arg-type]
    except Exception:
        shot = _shot(driver, "failed-" + "".join(c if c.isalnum() else "-" for c in what)[:60])
        raise AssertionError(f"the dashboard did not show {what} within {seconds} s (screenshot {shot})") from None


def _shot(driver: WebDriver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _execution_statuses(driver: WebDriver) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#execution-rows tr[data-execution-id]")
    return {str(r.get_attribute("data-execution-id")): r.find_element(By.CSS_SELECTOR, "td .badge").text for r in rows}


def _heading(driver: WebDriver) -> str:
    """The task page's title line (name and status)."""
    return str(driver.find_element(By.CSS_SELECTOR, ".task-head h1").text)


def _severe_console_entries(driver: WebDriver) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e for e in entries if e.get("level") == "SEVERE"]


def test_operator_sees_a_task_triggers_it_and_executions_appear_live(server: Server, browser: WebDriver) -> None:
    tenant = new_tenant()
    body = {
        "name": NASTY_NAME,
        "schedule": {"kind": "cron", "expression": "30 6 * * 1-5", "timezone": "Europe/London"},
        "work": {"kind": "handler", "name": "noop"},
        "tags": ["reports"],
    }
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
        assert created.status_code == 200, created.text
        task_id = str(created.json()["task_id"])
        other = http.post("/v1/tasks?wait=20", json={**body, "name": "someone else's"}, headers=auth(new_tenant()))
        assert other.status_code == 200, other.text

        browser.get(f"{server.url}/ui/#token={token(tenant, ['operator'], sub='olivia')}")
        row = _wait(
            browser, "the task's row", lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{task_id}"]')
        )
        # The token left the address bar at once; it lives in this tab's sessionStorage.
        assert browser.execute_script("return location.hash") == "#/"
        assert browser.execute_script("return sessionStorage.length") == 1
        # Tenant input is text, never markup; the other tenant's task is not there.
        assert row.find_element(By.CSS_SELECTOR, "a.task-link").text == NASTY_NAME
        assert not browser.find_elements(By.CSS_SELECTOR, "#task-rows img")
        assert browser.execute_script("return window.__xss") is None
        assert len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tr[data-task-id]")) == 1
        assert row.find_element(By.CSS_SELECTOR, "td.schedule").text == "at 06:30 on weekdays (Europe/London)"
        assert "active" in row.text and "never ran" in row.text
        assert browser.find_element(By.ID, "who").text == f"olivia · tenant {tenant} · operator"
        _wait(browser, "the live badge", lambda d: d.find_element(By.ID, "live").text == "live")
        _shot(browser, "1-tasks")

        # The task page, reached without a reload (a marker on window would not survive one).
        browser.execute_script("window.__noReload = 42")
        row.find_element(By.CSS_SELECTOR, "a.task-link").click()
        _wait(browser, "the next fire times", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fire-rows time")) == 5)
        _wait(browser, "the TaskCreated event", lambda d: "TaskCreated" in d.find_element(By.ID, "event-rows").text)
        assert browser.find_element(By.CSS_SELECTOR, ".task-head h1").text.startswith(NASTY_NAME)
        assert "No executions yet." in browser.find_element(By.ID, "execution-rows").text

        # Trigger with the page's button: the execution shows up as it runs and ends.
        browser.find_element(By.CSS_SELECTOR, ".task-head button.act-trigger").click()
        first = _wait(
            browser,
            "the triggered execution, succeeded",
            lambda d: [i for i, s in _execution_statuses(d).items() if s == "succeeded"],
        )
        _wait(browser, "the outcome event", lambda d: "ExecutionCompleted" in d.find_element(By.ID, "event-rows").text)

        # Triggered by someone else (the API, outside this page): the page hears of it only
        # through the event stream (it polls only while the stream is down). First let the
        # refreshes that follow the page's own command run out (the last comes after 4 s).
        time.sleep(4.5)
        assert browser.find_element(By.ID, "live").text == "live"
        r = http.post(f"/v1/tasks/{task_id}/trigger", json={"trigger_id": "from-outside"}, headers=auth(tenant))
        assert r.status_code == 202, r.text
        statuses = _wait(
            browser,
            "the second execution, succeeded",
            lambda d: (s := _execution_statuses(d)) and len([v for v in s.values() if v == "succeeded"]) == 2 and s,
        )
        assert set(first) < set(statuses)
        assert browser.execute_script("return window.__noReload") == 42
        assert int(browser.find_element(By.ID, "live").get_attribute("data-events") or 0) >= 4
        summary = browser.find_element(By.CSS_SELECTOR, ".facts").text
        _wait(browser, "the counters", lambda d: "2 (succeeded 2," in d.find_element(By.CSS_SELECTOR, ".facts").text)
        meta = browser.find_element(By.CSS_SELECTOR, ".task-head .meta").text
        assert meta.endswith("at 06:30 on weekdays (Europe/London) · handler noop · reports"), (meta, summary)
        _shot(browser, "2-task-after-triggers")

        # Pause from the page: the button turns into Resume once the views say so.
        browser.find_element(By.CSS_SELECTOR, ".task-head button.act-pause").click()
        _wait(browser, "the resume button", lambda d: d.find_element(By.CSS_SELECTOR, ".task-head button.act-resume"))
        assert "paused" in browser.find_element(By.CSS_SELECTOR, ".task-head h1").text

        assert _severe_console_entries(browser) == []


def test_viewer_sees_no_buttons_and_a_bad_token_is_refused(server: Server, browser: WebDriver) -> None:
    tenant = new_tenant()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        body = {
            "name": "viewed",
            "schedule": {"kind": "interval", "every_seconds": 3600},
            "work": {"kind": "handler", "name": "noop"},
        }
        created = http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
        assert created.status_code == 200, created.text
        task_id = str(created.json()["task_id"])

    browser.get(f"{server.url}/ui/#token={token(tenant, ['viewer'])}")
    row = _wait(browser, "the task's row", lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{task_id}"]'))
    assert row.find_element(By.CSS_SELECTOR, "td.schedule").text == "every hour"
    assert not browser.find_elements(By.CSS_SELECTOR, "button.act-trigger, button.act-pause")
    # Filters go to the API: no paused task, then the active one again.
    Select(browser.find_element(By.NAME, "status")).select_by_value("paused")
    _wait(browser, "the empty list", lambda d: d.find_element(By.ID, "task-rows").text == "No tasks match.")
    Select(browser.find_element(By.NAME, "status")).select_by_value("active")
    row = _wait(browser, "the task again", lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{task_id}"]'))
    row.find_element(By.CSS_SELECTOR, "a.task-link").click()
    _wait(
        browser, "the task page", lambda d: d.find_element(By.CSS_SELECTOR, ".task-head h1").text.startswith("viewed")
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "button.act-trigger, button.act-pause, button.act-cancel")
    _shot(browser, "3-viewer-task")

    # A token the server refuses (signed with another key) ends the session with the reason.
    browser.get(f"{server.url}/ui/#token={token(tenant, ['admin'], key='another-secret-of-at-least-32-bytes!!')}")
    _wait(browser, "the sign-in form", lambda d: "token was refused" in d.find_element(By.CSS_SELECTOR, ".signin").text)
    assert browser.execute_script("return sessionStorage.length") == 0


def test_schedules_in_words_in_the_browser(server: Server, browser: WebDriver) -> None:
    """The formatter as the page runs it: common forms in words, anything else as the expression."""
    browser.get(f"{server.url}/ui/")
    _wait(browser, "the page", lambda d: d.find_element(By.CSS_SELECTOR, ".signin"))
    cases: dict[str, str] = {
        "* * * * *": "every minute",
        "*/5 * * * *": "every 5 minutes",
        "15 * * * *": "every hour at minute 15 (UTC)",
        "0 */2 * * *": "every 2 hours at minute 0 (UTC)",
        "0 3 * * *": "every day at 03:00 (UTC)",
        "30 6 * * 1-5": "at 06:30 on weekdays (UTC)",
        "0 9 * * sat,sun": "at 09:00 on Saturday and Sunday (UTC)",
        "0 9 * * 0": "at 09:00 on Sundays (UTC)",
        "0 0 1 * *": "at 00:00 on the 1st of every month (UTC)",
        "0 12 25 dec *": "at 12:00 on December 25 (UTC)",
        "*/10 * * * * *": "every 10 seconds",
        "5 0 4 * * *": "every day at 04:00:05 (UTC)",
        "0 0 13 * 5": 'cron "0 0 13 * 5" (UTC)',  # both day fields: Vixie's "either", not guessed
        "0 0 L * *": 'cron "0 0 L * *" (UTC)',
    }
    got = browser.execute_async_script(
        """
        const [cases, done] = arguments;
        import('/ui/schedule.js').then((m) => {
          const out = {};
          for (const expr of Object.keys(cases)) {
            out[expr] = m.scheduleInWords({kind: 'cron', expression: expr, timezone: 'UTC'}, (x) => x);
          }
          out.interval90 = m.scheduleInWords({kind: 'interval', every_seconds: 90}, (x) => x);
          out.interval1d = m.scheduleInWords({kind: 'interval', every_seconds: 86400}, (x) => x);
          out.once = m.scheduleInWords({kind: 'once', at: 'AT'}, (x) => x);
          out.none = m.scheduleInWords(null, (x) => x);
          done(out);
        }, (e) => done({error: String(e)}));
        """,
        cases,
    )
    expected = {
        **cases,
        "interval90": "every 90 seconds",
        "interval1d": "every day",
        "once": "once, at AT",
        "none": "manual (runs only when triggered)",
    }
    assert got == expected


def test_operator_cancels_a_running_execution_and_sees_a_failure_with_its_attempts(
    server: Server, browser: WebDriver
) -> None:
    tenant = new_tenant()
    slow = {"name": "slow", "work": {"kind": "handler", "name": "sleep", "params": {"seconds": 120}}}
    failing = {
        "name": "failing",
        "work": {"kind": "handler", "name": "fail", "params": {"message": "disk <b>full</b>"}},
        "retry": {"max_attempts": 2, "initial_backoff_seconds": 0.2},
    }
    ids: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body in (slow, failing):
            created = http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
            assert created.status_code == 200, created.text
            ids[str(body["name"])] = str(created.json()["task_id"])

    browser.get(f"{server.url}/ui/#token={token(tenant, ['operator'])}")
    _wait(browser, "both tasks", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#task-rows tr[data-task-id]")) == 2)
    assert browser.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{ids["slow"]}"] td.schedule').text == (
        "manual (runs only when triggered)"
    )

    # A long run: shown running, with a Cancel button that ends it.
    browser.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{ids["slow"]}"] a.task-link').click()
    _wait(browser, "the task page", lambda d: _heading(d).startswith("slow"))
    browser.find_element(By.CSS_SELECTOR, ".task-head button.act-trigger").click()
    _wait(browser, "the running execution", lambda d: list(_execution_statuses(d).values()) == ["running"])
    browser.find_element(By.CSS_SELECTOR, "#execution-rows button.act-cancel").click()
    _wait(browser, "the cancelled execution", lambda d: list(_execution_statuses(d).values()) == ["cancelled"])
    assert not browser.find_elements(By.CSS_SELECTOR, "#execution-rows button.act-cancel")

    # A failing run: its attempts and its error, as text.
    browser.find_element(By.CSS_SELECTOR, ".crumbs a").click()
    _wait(browser, "the list", lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{ids["failing"]}"]'))
    browser.find_element(By.CSS_SELECTOR, f'tr[data-task-id="{ids["failing"]}"] a.task-link').click()
    _wait(browser, "the task page", lambda d: _heading(d).startswith("failing"))
    browser.find_element(By.CSS_SELECTOR, ".task-head button.act-trigger").click()
    _wait(browser, "the failed execution", lambda d: list(_execution_statuses(d).values()) == ["failed"])
    cells = browser.find_elements(By.CSS_SELECTOR, "#execution-rows tr[data-execution-id] td")
    assert "disk <b>full</b>" in cells[2].text and cells[3].text == "2"
    assert not browser.find_elements(By.CSS_SELECTOR, "#execution-rows b")
    _shot(browser, "4-failed-with-attempts")
    assert _severe_console_entries(browser) == []
