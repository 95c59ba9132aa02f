"""Headless Chromium for the report tests: no network, console errors collected, a screenshot on demand."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "")
                     if p and Path(p).exists()), None)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'htsr[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
    return None


def start(width: int = 1400, height: int = 1000):
    """A headless Chromium with networking cut off (no DNS, no proxy route, CDP offline emulation)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
              "--proxy-server=http://0.0.0.0:9", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": 0, "uploadThroughput": 0})
    return driver


def open_report(driver, path: str | Path, timeout: float = 30.0) -> dict:
    """Load a report and wait until every chart has rendered; returns ``window.htsrReport``'s state."""
    driver.get(Path(path).resolve().as_uri())
    t0 = time.time()
    while time.time() - t0 < timeout:
        state = driver.execute_script(
            "var R = window.htsrReport; return R ? {done: R.done, errors: R.errors, shown: R.shown} : null;")
        if state and (state["done"] or state["errors"]):
            return state
        time.sleep(0.1)
    raise TimeoutError(f"the report did not finish rendering in {timeout} s")


def severe_logs(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def requests(driver) -> list[str]:
    """URLs the page asked for (Network.requestWillBeSent events), other than the report file and data: URLs."""
    import json

    out = []
    for e in driver.get_log("performance"):
        msg = json.loads(e["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith(("file://", "data:", "blob:", "about:")):
                out.append(url)
    return out
