"""The control room in a real browser: an operator logs in, opens the dashboard, watches
queued jobs finish as a real worker runs them (the dashboard refreshing by itself), sees
the failure in the chart and the lists, opens it and retries it from the job page.

Headless Chromium through Selenium (tests/browser.py); skipped without a browser except
under CI=true. Screenshots land in test-output/screenshots/ to be looked at (docs/images
holds the ones docs/admin.md shows).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from django_tasks.models import Job
from tests import tasks
from tests.browser import PHONE, screenshot
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def fresh(read):
    """``read()``, again if the dashboard's refresh replaced the elements it was reading
    (Selenium's StaleElementReferenceException): the body is swapped every few seconds."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    return read()


def text_of(driver, selector) -> str:
    return fresh(lambda: " ".join(e.text for e in by_css(driver, selector)))


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


def queue_row(driver, queue) -> list[str]:
    """The dashboard's queue table row for ``queue``: its cells' texts."""
    def read() -> list[str]:
        for row in by_css(driver, "#dt-dashboard table tbody tr"):
            cells = [c.text for c in row.find_elements("css selector", "td")]
            if cells and cells[0] == queue:
                return cells
        return []

    return fresh(read)


def test_an_operator_runs_the_control_room(browser, live_server):
    log_in(browser, live_server)
    # The admin index links to the dashboard; so does every list of ours.
    assert by_css(browser, "a[href='/admin/django_tasks/dashboard/']")
    ok = tasks.add.enqueue(2, 3)
    bad = tasks.fails_with_type_error.enqueue()
    dashboard = f"{live_server.url}/admin/django_tasks/dashboard/"
    changelist = f"{live_server.url}/admin/django_tasks/job/"

    browser.get(dashboard)
    assert queue_row(browser, "default")[1] == "2"  # ready now
    stamp = text_of(browser, "#dt-dashboard p.dt-quiet")

    # A job enqueued while the page is open shows up without a reload: the body
    # refreshes itself every few seconds.
    third = tasks.add.enqueue(1, 1)
    assert wait_for(lambda: queue_row(browser, "default")[1:2] == ["3"], timeout=15)
    assert text_of(browser, "#dt-dashboard p.dt-quiet") != stamp
    screenshot(browser, "dashboard-ready")

    browser.get(changelist)
    assert "Ready" in row_text(browser, ok.id)
    assert by_css(browser, "a[href='/admin/django_tasks/dashboard/']")

    worker = start_worker("--burst")
    out, _ = worker.communicate(timeout=90)
    assert worker.returncode == 0, out

    # The dashboard, refreshing by itself: the failure is counted, charted and listed.
    browser.get(dashboard)
    assert wait_for(lambda: queue_row(browser, "default")[1:2] == ["0"], timeout=15)
    cells = queue_row(browser, "default")
    assert cells[6] == "1", cells  # failed in the last hour
    assert "3 finished, 1 failed" in browser.page_source
    assert by_css(browser, ".dt-chart svg rect.failed")
    failures = text_of(browser, "#dt-dashboard")
    assert "tests.tasks.fails_with_type_error" in failures and "TypeError" in failures
    screenshot(browser, "dashboard")

    browser.get(changelist)
    assert "Successful" in row_text(browser, ok.id) and "Successful" in row_text(browser,
                                                                                 third.id)
    failed_row = row_text(browser, bad.id)
    assert "Failed" in failed_row and "TypeError" in failed_row  # the error column
    screenshot(browser, "job-list")

    # The job page opens on the failure; Retry is a button there.
    by_css(browser, f"a[href$='/{bad.id}/change/']")[0].click()
    assert wait_for(lambda: "Traceback" in browser.page_source, timeout=10)
    screenshot(browser, "job-page-failed")
    by_css(browser, "button[name=retry]")[0].click()
    assert wait_for(lambda: Job.objects.get(pk=bad.id).status == "READY", timeout=10)
    retried = Job.objects.get(pk=bad.id).retried
    assert retried["by"] == "admin user operator"

    # The same dashboard on a phone: readable, nothing cut off sideways.
    browser.set_window_size(*PHONE)
    browser.get(dashboard)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px on a phone"
    screenshot(browser, "dashboard-phone")
