"""Open the running dashboard in headless Chromium and save one screenshot per panel.

    python tools/dashboard_screenshots.py --url http://127.0.0.1:8501 --out Docs/screenshots

Used by the browser test (screenshots as test artefacts) and to refresh the pictures in
``Docs/DASHBOARD.md``. Needs Debian's ``chromium`` and ``chromium-driver`` (``bootstrap.sh --dev``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PANELS = ["Overview", "Heatmap", "Top Servers", "Historical", "Model health", "Advanced"]  # as the page


def open_browser(user_data_dir: Path, width: int = 1500, height: int = 1900, network_log: bool = False):
    """Start headless Chromium through chromedriver and return the webdriver.

    ``network_log``: keep Chrome's performance log (DevTools Network events, websocket frames included),
    read with ``driver.get_log("performance")``; the browser test looks for secrets in it.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_until_idle(driver, seconds: float) -> None:
    """Best effort: give a rerun in progress up to ``seconds`` to finish, so the shot is not greyed out."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not driver.find_elements(By.CSS_SELECTOR, "[data-testid^='stStatusWidgetRunning']"):
            return
        time.sleep(0.25)


def capture_panels(driver, url: str, out_dir: Path, timeout: float = 90.0) -> tuple[dict[str, str], str]:  # noqa: ANN001
    """Load ``url``, visit every panel, wait for its text and charts, save ``dashboard_<n>_<panel>.png``.

    Returns each panel's own text and the text of the page's header (title, connection, model,
    last forecast). Raises ``AssertionError`` when the page shows a Streamlit exception or a
    traceback, or when the tabs are not the six panels.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out_dir.mkdir(parents=True, exist_ok=True)
    driver.get(url)
    # The page reruns on its refresh timer, so elements can go stale or vanish between polls:
    # every poll looks them up again, and a missing or stale one just means "not yet".
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))

    def no_exception(d) -> None:  # noqa: ANN001
        errors = d.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
        assert not errors, errors[0].text[:2000]

    def loaded(d) -> bool:  # noqa: ANN001
        no_exception(d)
        return bool(d.find_elements(By.CSS_SELECTOR, "[role='tab']"))

    try:
        wait.until(loaded)
    finally:
        driver.save_screenshot(str(out_dir / "dashboard_0_first_load.png"))
    tabs = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "[role='tab']")]
    assert tabs == PANELS, tabs

    texts: dict[str, str] = {}
    for index, name in enumerate(PANELS):
        def drawn(d, name=name) -> str | bool:  # noqa: ANN001
            # The selected tab's panel shows text and every chart in it has drawn its SVG.
            no_exception(d)
            tab = next((t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']") if t.text == name), None)
            if tab is None:
                return False
            if tab.get_attribute("aria-selected") != "true":
                tab.click()
                return False
            panel = next((p for p in d.find_elements(By.CSS_SELECTOR, "[role='tabpanel']") if p.is_displayed()),
                         None)
            if panel is None or not panel.text.strip():
                return False
            charts = panel.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
            return all(c.find_elements(By.CSS_SELECTOR, ".main-svg") for c in charts) and panel.text

        wait.until(drawn)
        _wait_until_idle(driver, 20.0)
        time.sleep(1.0)
        driver.save_screenshot(str(out_dir / f"dashboard_{index + 1}_{name.lower().replace(' ', '_')}.png"))
        texts[name] = wait.until(drawn)
        body = driver.find_element(By.TAG_NAME, "body").text
        no_exception(driver)
        assert "Traceback" not in body, body[:2000]
    header = body.split(PANELS[0])[0]  # everything above the tab bar
    return texts, header


def main() -> None:
    """Capture the six panels of a running dashboard."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--out", type=Path, default=Path("Docs/screenshots"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        driver = open_browser(Path(profile))
        try:
            capture_panels(driver, args.url, args.out)
        finally:
            driver.quit()
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()
