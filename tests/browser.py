"""A real Chromium for the admin's browser tests, driven by Selenium through Debian's
chromedriver (packages ``chromium`` and ``chromium-driver``; ``.ci/run`` installs them).

Without them the browser tests skip, except under ``CI=true``, where a missing browser
is a failure like a missing PostgreSQL. Screenshots go to ``test-output/screenshots/``
(``TEST_OUTPUT_DIR`` moves it), to be looked at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "test-output")) / "screenshots"
#: The width the issue's operator works at; a phone is checked at PHONE.
DESKTOP = (1400, 900)
PHONE = (390, 844)


def browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra)"
    for name in ("chromium", "chromedriver"):
        if shutil.which(name) is None:
            return f"{name} not found (apt-get install -y chromium chromium-driver)"
    return None


def start_chromium(size: tuple[int, int] = DESKTOP):
    """A headless Chromium with an empty profile and nothing that reaches the network
    (this machine's network is closed: background requests only fail, slowly)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={size[0]},{size[1]}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='django-tasks-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=shutil.which("chromedriver")))
    driver.set_window_size(*size)
    return driver


def screenshot(driver, name: str) -> Path:
    """Save what the browser shows as ``SCREENSHOTS/<name>.png`` (the whole page height)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(int(height) + 120, size["height"]))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path
