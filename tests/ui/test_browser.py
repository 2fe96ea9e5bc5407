"""The dashboard in headless Chromium against a real API: sign-in, tenant isolation, live charts, text-only
rendering of attacker-controlled samples, cancel, the submit form's 422, compare, and 10,000 points."""

from __future__ import annotations

import math
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.ui.conftest import Page, Tenant

By = pytest.importorskip(
    "selenium.webdriver.common.by", reason="selenium is not installed: pip install '.[test]'"
).By
Select = pytest.importorskip("selenium.webdriver.support.select").Select
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys

pytestmark = pytest.mark.browser
XSS_SCRIPT = '<script>window.__pwned = "script"</script>'
XSS_IMG = "<img src=x onerror=\"window.__pwned = 'img'\">"


def _rows(page: Page) -> list[str]:
    # Read in one script: the table may be redrawn between finding a row and reading it.
    return page.js("return [...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.job)")


def test_sign_in_keeps_the_key_out_of_urls_and_shows_only_own_jobs(
    page: Page, tenant_a: Tenant, tenant_b: Tenant
):
    mine = tenant_a.create(project="ui-own")
    theirs = tenant_b.create(project="ui-own")

    page.open()
    page.wait_for(By.ID, "api-key").send_keys("rlft_not-a-key")
    page.driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    page.until(lambda: "401" in page.driver.find_element(By.ID, "signin-error").text)
    assert page.js("return sessionStorage.getItem('rlft.apiKey')") is None

    page.sign_in(tenant_a.api.key)
    page.until(lambda: mine in _rows(page))  # the list may still be loading when its table appears
    page.screenshot("jobs")
    assert theirs not in _rows(page)
    assert page.js("return sessionStorage.getItem('rlft.apiKey')") == tenant_a.api.key
    assert tenant_a.api.key not in page.driver.current_url
    assert page.driver.get_cookies() == []

    # The metadata filter narrows the list to jobs that carry it.
    other = tenant_a.create(project="ui-other")
    page.driver.find_element(By.ID, "filter-meta").send_keys("project=ui-other")
    page.driver.find_element(By.CSS_SELECTOR, "form.row button[type=submit]").click()
    page.until(lambda: _rows(page) == [other])

    page.driver.find_element(By.ID, "signout").click()
    page.wait_for(By.ID, "api-key")
    assert page.js("return sessionStorage.getItem('rlft.apiKey')") is None
    # Every URL the page asked for, and none with the key in it.
    urls = page.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/v1/jobs" in u for u in urls) and not any(tenant_a.api.key in u for u in urls)


def test_jobs_list_pages_and_filters_by_status(page: Page, tenant_a: Tenant):
    jobs = [tenant_a.create(project="ui-pages") for _ in range(26)]
    assert tenant_a.http.post(f"/v1/jobs/{jobs[0]}/cancel").status_code == 200
    page.sign_in(tenant_a.api.key)
    page.open("#/jobs?meta=project%3Dui-pages")
    page.until(lambda: _rows(page) == jobs[::-1][:25], message="first page, newest first")
    page.click("next-page")
    page.until(lambda: _rows(page) == [jobs[0]], message="second page")
    page.driver.find_element(By.XPATH, "//button[text()='Previous']").click()
    page.until(lambda: len(_rows(page)) == 25)

    Select(page.driver.find_element(By.ID, "filter-status")).select_by_value("cancelled")
    page.until(lambda: _rows(page) == [jobs[0]], message="only the cancelled job")
    assert "status=cancelled" in page.driver.current_url


def test_running_job_chart_gains_points_while_watching(page: Page, tenant_a: Tenant):
    job = tenant_a.create(project="ui-live")
    fence = tenant_a.worker.claim(job)
    tenant_a.worker.report(job, fence, 1, 0.1)

    page.sign_in(tenant_a.api.key)
    page.open(f"#/jobs/{job}")
    chart = page.wait_for(By.CSS_SELECTOR, "#charts .chart[data-title^='reward']")
    page.until(lambda: page.js("return document.getElementById('charts').dataset.live") == "streaming")
    page.until(lambda: chart.get_attribute("data-points") == "1", message="the loaded point")

    for step in (2, 3, 4):
        tenant_a.worker.report(job, fence, step, 0.1 * step)
        # Each point arrives over the SSE stream, without a reload.
        page.until(lambda s=step: chart.get_attribute("data-points") == str(s), message=f"step {step}")
    kl = page.driver.find_element(By.CSS_SELECTOR, "#charts .chart[data-title='KL']")
    assert kl.get_attribute("data-points") == "4"
    assert "step 4" in page.driver.find_element(By.ID, "events").text
    page.screenshot("live")

    tenant_a.worker.finish(job, fence)
    page.until(lambda: page.text("#job-header .status") == "succeeded")


def test_attacker_controlled_samples_render_as_text_and_run_nothing(page: Page, tenant_a: Tenant):
    job = tenant_a.create(project="ui-xss")
    fence = tenant_a.worker.claim(job)
    samples = [
        {"step": 1, "index": 0, "prompt": XSS_IMG, "completion": XSS_SCRIPT, "reward": 1.0, "label": "a"},
        {"step": 1, "index": 1, "prompt": "p", "completion": XSS_IMG, "reward": 0.0, "label": XSS_SCRIPT},
    ]
    tenant_a.post(job, "samples", {"fence": fence, "samples": samples})
    tenant_a.post(job, "events", {"fence": fence, "events": [{"level": "warning", "message": XSS_IMG}]})
    error = {"code": "reward_invalid", "message": XSS_SCRIPT}
    tenant_a.post(job, "finish", {"fence": fence, "status": "failed", "error": error})

    page.sign_in(tenant_a.api.key)
    page.open(f"#/jobs/{job}")
    page.wait_for(By.ID, "samples-table")
    completions = [c.text for c in page.driver.find_elements(By.CSS_SELECTOR, "#samples-table .completion")]
    prompts = [c.text for c in page.driver.find_elements(By.CSS_SELECTOR, "#samples-table .prompt")]
    assert completions == [XSS_SCRIPT, XSS_IMG]
    assert prompts == [XSS_IMG, "p"]
    page.until(lambda: XSS_IMG in page.driver.find_element(By.ID, "events").text)
    assert page.text("#job-error") == f"reward_invalid: {XSS_SCRIPT}"
    page.screenshot("samples")
    assert page.driver.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert page.js("return window.__pwned === undefined")


def test_pause_resume_and_cancel_from_the_page(page: Page, tenant_a: Tenant):
    secret = "Bearer ui-secret-0123456789"
    job = tenant_a.create(headers={"Authorization": secret}, project="ui-cancel")
    page.sign_in(tenant_a.api.key)
    page.open(f"#/jobs/{job}")
    page.wait_for(By.ID, "spec")
    assert '"Authorization": "********"' in page.text("#spec")
    assert "ui-secret" not in page.driver.page_source

    page.click("action-pause")
    page.click("confirm-yes")
    page.until(lambda: page.text("#job-header .status") == "paused")
    assert tenant_a.job(job)["status"] == "paused"
    page.click("action-resume")
    page.click("confirm-yes")
    page.until(lambda: page.text("#job-header .status") == "queued")
    assert tenant_a.job(job)["status"] == "queued"

    page.click("action-cancel")
    page.click("confirm-no")  # the confirmation's "Back" changes nothing
    page.click("action-cancel")
    page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)  # nor does Escape
    page.until(lambda: not page.js("return document.getElementById('confirm').open"))
    assert tenant_a.job(job)["status"] == "queued"

    page.click("action-cancel")
    page.screenshot("confirm")
    page.click("confirm-yes")
    page.until(lambda: page.text("#job-header .status") == "cancelled")
    assert tenant_a.job(job)["status"] == "cancelled"
    assert page.driver.find_elements(By.ID, "action-cancel") == []


def test_submit_form_shows_the_field_of_a_422_then_submits(page: Page, tenant_a: Tenant):
    page.sign_in(tenant_a.api.key)
    page.open("#/submit")
    text = page.wait_for(By.ID, "spec")
    text.clear()
    text.send_keys(
        "algorithm: grpo\nmodel: {name_or_path: tiny-qwen}\n"
        'dataset: {rows: [{prompt: "Say:", label: a}]}\n'
        f"reward: {{url: '{tenant_a.api.reward_url}'}}\n"
        "hyperparameters: {steps: ten}\nresources: {gpus: 0}\n"
    )
    page.driver.find_element(By.ID, "submit-job").click()
    error = page.wait_for(By.CSS_SELECTOR, "#submit-result li[data-field='hyperparameters.steps']")
    assert "hyperparameters.steps" in error.text
    assert "422" in page.driver.find_element(By.ID, "submit-result").text
    page.screenshot("submit-422")

    text.clear()
    text.send_keys('{"algorithm": "grpo", "model": {"name_or_path": "tiny-qwen"}, ')
    text.send_keys('"dataset": {"rows": [{"prompt": "Say:", "label": "a"}]}, ')
    text.send_keys(f'"reward": {{"url": "{tenant_a.api.reward_url}"}}, "resources": {{"gpus": 0}}, ')
    text.send_keys('"metadata": {"project": "ui-submit"}}')
    page.driver.find_element(By.ID, "submit-job").click()
    page.until(lambda: "#/jobs/job_" in page.driver.current_url)
    job = page.driver.current_url.rsplit("/", 1)[-1]
    assert tenant_a.job(job)["metadata"] == {"project": "ui-submit"}


def test_compare_overlays_reward_curves(page: Page, tenant_a: Tenant):
    jobs = [tenant_a.create(project="ui-compare") for _ in range(2)]
    for n, job in enumerate(jobs):
        fence = tenant_a.worker.claim(job)
        for step in range(1, 6):
            tenant_a.worker.report(job, fence, step, 0.1 * step * (n + 1))
        tenant_a.worker.finish(job, fence)
    page.sign_in(tenant_a.api.key)
    page.open("#/jobs?meta=project%3Dui-compare")
    page.until(lambda: sorted(_rows(page)) == sorted(jobs))
    for box in page.driver.find_elements(By.CSS_SELECTOR, "#jobs tbody input[type=checkbox]"):
        box.click()
    page.click("compare-selected")
    page.wait_for(By.CSS_SELECTOR, "#compare-charts[data-loaded='true']")
    assert sorted(page.driver.current_url.split("ids=")[1].split(",")) == sorted(jobs)
    reward = page.driver.find_element(By.CSS_SELECTOR, "#compare-charts .chart[data-title='reward/mean']")
    assert reward.get_attribute("data-points") == "10"
    assert all(j in reward.text for j in jobs)
    page.screenshot("compare")


def test_ten_thousand_points_per_series_load_and_draw_bounded(page: Page, tenant_a: Tenant):
    job = tenant_a.create(project="ui-10k")
    fence = tenant_a.worker.claim(job)
    names = ["reward/mean", "reward/std", "kl/mean", "policy/entropy", "completion/length_mean"]
    for start in range(1, 10_001, 2500):
        points = [
            {
                "step": s,
                "name": n,
                "value": (0.5 + 0.4 * (s / 10_000)) if n == "reward/mean" else 0.1 + (s % 7) / 70,
            }
            for s in range(start, start + 2500)
            for n in names
        ]
        tenant_a.post(job, "metrics", {"fence": fence, "points": points})
    tenant_a.worker.finish(job, fence)

    page.sign_in(tenant_a.api.key)
    page.open(f"#/jobs/{job}")
    charts = page.wait_for(By.CSS_SELECTOR, "#charts[data-loaded='true']", timeout=60)
    reward = page.driver.find_element(By.CSS_SELECTOR, "#charts .chart[data-title^='reward']")
    # The page asks for max_points=1000 a series: the API sends bucket extremes, not 10,000 points.
    assert 1000 <= int(reward.get_attribute("data-points")) <= 2 * 1002  # mean and std
    page.until(lambda: reward.get_attribute("data-drawn") is not None)
    assert int(reward.get_attribute("data-drawn")) <= 2 * 1002  # downsampled before drawing
    loaded_ms = int(charts.get_attribute("data-loaded-ms"))
    slowest = page.js(
        "return Math.max(...performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/metrics')).map(e => e.duration))"
    )
    draw_ms = reward.get_attribute("data-draw-ms")
    print(  # noqa: T201 - the measured times, for whoever runs the test with -s
        f"\n10,000 points x {len(names)} series: charts loaded in {loaded_ms} ms "
        f"(slowest request {slowest:.0f} ms); the reward chart draws in {draw_ms} ms"
    )
    # The stream then replays the job's 10,000 metric events: steps the load covered are not added back.
    page.until(lambda: charts.get_attribute("data-live") == "ended", timeout=60)
    assert int(reward.get_attribute("data-points")) <= 2 * 1002
    page.screenshot("ten-thousand")


def test_job_page_shows_everything_and_makes_the_readme_screenshot(
    page: Page, tenant_a: Tenant, tmp_path: Path
):
    """A running job with every chart, samples of two steps and a checkpoint: the README's picture.

    Saved with the test's artifacts; ``RLFT_UPDATE_DASHBOARD_PNG=1`` also writes docs/dashboard.png."""
    job = tenant_a.create(project="readme", run="grpo-letter")
    worker = tenant_a.worker
    fence = worker.claim(job)
    points = []
    for s in range(1, 41):
        wave = math.sin(s / 3)
        points += [
            {"step": s, "name": "reward/mean", "value": 0.2 + 0.6 * (1 - math.exp(-s / 12)) + 0.03 * wave},
            {"step": s, "name": "reward/std", "value": 0.25 * math.exp(-s / 30) + 0.05},
            {"step": s, "name": "kl/mean", "value": 0.002 * s + 0.004 * abs(wave)},
            {"step": s, "name": "policy/entropy", "value": 2.2 - 0.02 * s + 0.05 * wave},
            {"step": s, "name": "completion/length_mean", "value": 24 - 0.3 * s + 2 * wave},
            {"step": s, "name": "reward_endpoint/latency_p50_ms", "value": 12 + 2 * wave},
            {"step": s, "name": "reward_endpoint/latency_p95_ms", "value": 30 + 6 * abs(wave)},
            {"step": s, "name": "reward_endpoint/errors", "value": 1.0 if s in (9, 27) else 0.0},
        ]
    points += [{"step": s, "name": "eval/reward_mean", "value": 0.1 + s / 50} for s in (0, 20, 40)]
    tenant_a.post(job, "metrics", {"fence": fence, "points": points})
    samples = [
        {"step": 40, "index": i, "prompt": "Say:", "completion": c, "reward": r, "label": "a"}
        for i, (c, r) in enumerate([("aaaa", 1.0), ("a a a", 0.8), ("bab", 0.33), ("<script>", 0.0)])
    ]
    samples.append({"step": 10, "index": 0, "prompt": "Go:", "completion": "b", "reward": 0.0, "label": "a"})
    tenant_a.post(job, "samples", {"fence": fence, "samples": samples})
    tenant_a.post(job, "checkpoints", {"fence": fence, **worker._checkpoint(job, 40)})
    page.sign_in(tenant_a.api.key)
    page.open(f"#/jobs/{job}")
    page.wait_for(By.CSS_SELECTOR, "#charts[data-loaded='true']")
    page.wait_for(By.ID, "samples-table")
    page.until(lambda: page.js("return document.getElementById('charts').dataset.live") == "streaming")
    shot = page.screenshot("dashboard")
    assert shot.stat().st_size > 10_000
    if os.environ.get("RLFT_UPDATE_DASHBOARD_PNG"):
        shutil.copyfile(shot, Path(__file__).resolve().parents[2] / "docs" / "dashboard.png")

    # Eval metrics get a chart of their own; every chart got all 40 steps.
    assert page.js("return document.querySelector(\".chart[data-title='eval']\").dataset.points") == "3"
    assert page.js("return document.querySelector(\".chart[data-title='KL']\").dataset.points") == "40"
    # The samples of another step.
    assert page.text("#samples-table tbody tr:nth-child(4) .completion") == "<script>"
    step = page.driver.find_element(By.ID, "sample-step")
    step.send_keys("10")
    page.driver.find_element(By.CSS_SELECTOR, "#samples button[type=submit]").click()
    page.until(lambda: page.text("#samples p.muted").startswith("step 10,"))
    assert page.text("#samples-table .completion") == "b"
    # The checkpoint's download button fetches the tar with the key and hands it to the browser.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    page.driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    page.driver.find_element(By.CSS_SELECTOR, "#checkpoints button").click()
    tar_name = f"{job}-step-40.tar"
    page.until(lambda: (downloads / tar_name).exists(), message="the downloaded tar")
    with tarfile.open(downloads / tar_name) as tar:
        assert any(n.endswith("config.json") for n in tar.getnames())
    worker.finish(job, fence)
