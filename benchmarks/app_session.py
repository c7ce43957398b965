"""A running app (`python -m roomvision app`) and a Debian Chromium page on it, for the app benchmarks."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def running_app():
    """(process, url) of the app on a free local port with the committed default model; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "roomvision", "app", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "STREAMLIT_SERVER_HEADLESS": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextlib.contextmanager
def chromium_page(viewport=(1400, 1000)):
    """A page of Debian's Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.set_default_timeout(300_000)
        yield page
        browser.close()


def wait_for_run(page, timeout_s: float = 120) -> None:
    """Wait until the app has started and finished a (full or fragment) run and the browser has drawn it."""
    app = page.locator("[data-testid=stApp]")
    deadline = time.time() + 2
    while time.time() < deadline and app.get_attribute("data-test-script-state") != "running":
        page.wait_for_timeout(10)
    deadline = time.time() + timeout_s
    while app.get_attribute("data-test-script-state") == "running":
        if time.time() > deadline:
            raise TimeoutError("the app kept running")
        page.wait_for_timeout(10)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # drawn
