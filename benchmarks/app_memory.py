"""Resident memory of the running app after it scored a batch of uploads in a real browser.

python benchmarks/app_memory.py [--images 16]   (needs Debian chromium + playwright)
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from inference import benchmark_images  # noqa: E402


def process_tree_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    from playwright.sync_api import sync_playwright
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "roomvision", "app", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "STREAMLIT_SERVER_HEADLESS": "true"})
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        idle = process_tree_rss_mb(proc.pid)[0]
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
            paths = benchmark_images(args.images, Path(tmp))
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"])
            page = browser.new_page()
            page.set_default_timeout(300_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_text("Listing photos").wait_for()
            t0 = time.time()
            page.locator("input[type=file]").set_input_files(paths)
            page.get_by_text("All results").wait_for()
            page.wait_for_function(f"() => document.querySelectorAll('[data-testid=stMetric]').length >= {3 * len(paths)}")
            elapsed = time.time() - t0
            browser.close()
        rss, peak = process_tree_rss_mb(proc.pid)
        print(f"app RSS: idle {idle:.0f} MB | after scoring {len(paths)} uploads {rss:.0f} MB | peak {peak:.0f} MB "
              f"| upload-to-results {elapsed:.1f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
