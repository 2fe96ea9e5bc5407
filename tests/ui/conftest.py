"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven
by Selenium against a real API process on the embedded defaults, with the stand-in worker of tests/cli
playing the worker's part over /internal/v1 (claim, metrics, samples, finish) so that a test decides when
points arrive. Screenshots of every browser test land in its temporary directory (``screenshots/``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.conftest import StandInWorker, letter_spec
from tests.service.conftest import (  # noqa: F401 - fixtures are found by name
    alice,
    client,
    database_url,
    pg_schema_url,
    settings,
)
from tests.support.stacks import Api, api_stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20


@pytest.fixture(scope="session")
def ui_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with api_stack(tmp_path_factory.mktemp("rlft-ui")) as api:
        yield api


class Tenant:
    """A tenant's REST calls (what the page shows is checked against them) and the stand-in worker's."""

    def __init__(self, api: Api, key: str):
        self.api = api
        self.http = httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        self.worker = StandInWorker(api)

    def create(self, headers: dict[str, str] | None = None, **metadata: str) -> str:
        spec = letter_spec(self.api.reward_url, steps=50)
        spec["metadata"] = metadata
        if headers:
            spec["reward"]["headers"] = headers
        resp = self.http.post("/v1/jobs", json=spec)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def post(self, job_id: str, what: str, body: dict[str, Any]) -> Any:
        return self.worker._post(job_id, what, body)


@pytest.fixture(scope="session")
def tenant_a(ui_api: Api) -> Tenant:
    return Tenant(ui_api, ui_api.key)


@pytest.fixture(scope="session")
def tenant_b(ui_api: Api) -> Tenant:
    return Tenant(ui_api, ui_api.other_key)


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    return None


@pytest.fixture(scope="session")
def _driver() -> Iterator[Any]:
    if reason := _browser_missing():
        pytest.skip(reason)
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install '.[test]')"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on the dashboard of one API; screenshots go to the test's own directory."""

    def __init__(self, driver: Any, api: Api, shots: Path):
        self.driver = driver
        self.api = api
        self.shots = shots

    def open(self, hash_path: str = "") -> None:
        self.driver.get(f"{self.api.url}/ui/{hash_path}")

    def sign_in(self, key: str) -> None:
        from selenium.webdriver.common.by import By

        self.open()
        field = self.wait_for(By.ID, "api-key")
        field.send_keys(key)
        self.driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
        self.wait_for(By.ID, "jobs", "no-jobs")

    def wait_for(self, by: str, *ids_or_selectors: str, timeout: float = WAIT_S) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        def found(driver: Any) -> Any:
            for sel in ids_or_selectors:
                els = driver.find_elements(by, sel)
                if els:
                    return els[0]
            return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(found)

    def until(self, condition: Any, timeout: float = WAIT_S, message: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # A live page redraws: an element found by the condition may be replaced before it is read.
        wait = WebDriverWait(
            self.driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        return wait.until(lambda d: condition(), message)

    def click(self, element_id: str) -> None:
        """Click by id, finding the element again if the page redrew it in between (a live page does)."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked() -> bool:
            try:
                self.wait_for("id", element_id).click()
                return True
            except StaleElementReferenceException:
                return False

        self.until(clicked, message=f"click #{element_id}")

    def text(self, css: str) -> str:
        """The text of the first element matching ``css``, found afresh (empty while there is none)."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def csp_violations(self) -> list[str]:
        logs = self.driver.get_log("browser")
        return [json.dumps(e) for e in logs if "Content Security Policy" in e.get("message", "")]


@pytest.fixture
def page(_driver: Any, ui_api: Api, tmp_path: Path) -> Iterator[Page]:
    p = Page(_driver, ui_api, tmp_path / "screenshots")
    p.open()
    p.js("sessionStorage.clear()")
    p.csp_violations()  # drain the log of earlier tests
    yield p
    p.screenshot("end")
    assert p.csp_violations() == [], "the page broke its own Content-Security-Policy"
