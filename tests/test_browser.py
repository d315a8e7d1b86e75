"""The admin in a real browser: an operator logs in, watches queued jobs finish as a
real worker runs them, opens a failure and retries it.

Headless Chromium through Selenium (tests/browser.py); skipped without a browser except
under CI=true. Screenshots land in test-output/screenshots/ to be looked at.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from django_tasks.models import Job
from tests import tasks
from tests.browser import screenshot
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def log_in(driver, live_server) -> None:
    """Through the login form, as an operator would."""
    User.objects.create_superuser("operator", "operator@example.com", "s3cret-pw")
    driver.get(f"{live_server.url}/admin/login/?next=/admin/")
    by_css(driver, "#id_username")[0].send_keys("operator")
    by_css(driver, "#id_password")[0].send_keys("s3cret-pw")
    by_css(driver, "input[type=submit], button[type=submit]")[0].click()
    assert wait_for(lambda: "Site administration" in driver.page_source, timeout=10)


def row_text(driver, job_id) -> str:
    """The job list's row for ``job_id`` as the browser renders it ("" if absent)."""
    for row in by_css(driver, "#result_list tbody tr"):
        if row.find_elements("css selector", f"input[value='{job_id}']"):
            return row.text
    return ""


def test_an_operator_watches_jobs_run_and_retries_a_failure(browser, live_server):
    log_in(browser, live_server)
    ok = tasks.add.enqueue(2, 3)
    bad = tasks.fails_with_type_error.enqueue()
    changelist = f"{live_server.url}/admin/django_tasks/job/"

    browser.get(changelist)
    assert "Ready" in row_text(browser, ok.id)
    assert "Ready" in row_text(browser, bad.id)
    screenshot(browser, "job-list-ready")

    worker = start_worker("--burst")
    assert worker.wait(timeout=60) == 0, worker.stdout.read()

    def shows_outcomes() -> bool:
        browser.get(changelist)
        return ("Successful" in row_text(browser, ok.id)
                and "Failed" in row_text(browser, bad.id))

    assert wait_for(shows_outcomes, timeout=10)
    screenshot(browser, "job-list-finished")

    browser.get(f"{changelist}{bad.id}/change/")
    page = browser.page_source
    assert "TypeError" in page and "Traceback" in page
    screenshot(browser, "job-page-failed")

    # Retry it from the list: tick its row, choose the action, Go.
    from selenium.webdriver.support.ui import Select

    browser.get(changelist)
    by_css(browser, f"input[name=_selected_action][value='{bad.id}']")[0].click()
    Select(by_css(browser, "select[name=action]")[0]).select_by_value("retry_jobs")
    by_css(browser, "button[name=index], input[name=index]")[0].click()
    assert wait_for(lambda: "Ready" in row_text(browser, bad.id), timeout=10)
    screenshot(browser, "job-list-retried")
    assert Job.objects.get(pk=bad.id).status == "READY"
