"""How long the app takes to answer a user in a real browser: the Predict page with a batch of uploads on screen,
and the first and a warm open of the Label issues view and the Relabel page.

python benchmarks/app_responsiveness.py [--images 40]   (needs Debian chromium + playwright)

Predict page: wall time from the user's action until the app finished its run and Chromium drew the result (median
of several actions): a threshold slider step, the Grad-CAM toggle, and a change of gallery page. Label issues and
Relabel: wall time from opening the page until its first control is drawn, on the project manifest with its feature
cache built — first in a server just started (what it keeps on disk only), then again in a new browser session of
the same server (what it keeps in memory too).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from app_session import chromium_page, running_app, wait_for_run  # noqa: E402
from inference import benchmark_images  # noqa: E402


def timed(page, action, repeats: int) -> float:
    """Median seconds from `action()` until the app's answer is drawn."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        wait_for_run(page)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    with running_app() as (_, url), tempfile.TemporaryDirectory() as tmp, chromium_page() as page:
        paths = benchmark_images(args.images, Path(tmp))
        page.goto(url)
        page.get_by_text("Listing photos").wait_for()
        t0 = time.perf_counter()
        page.locator("input[type=file]").set_input_files(paths)
        page.get_by_text("All results").wait_for()
        wait_for_run(page)
        figures = {"upload to results": time.perf_counter() - t0}
        cards = page.locator("[data-testid=stMetric]").count() // 3
        slider = page.get_by_role("slider").first

        def slider_step():
            slider.focus()
            page.keyboard.press("ArrowRight")

        figures["threshold slider step"] = timed(page, slider_step, 5)
        figures["Grad-CAM toggle"] = timed(page, lambda: page.get_by_text("Grad-CAM overlay").click(), 4)
        next_page = page.get_by_test_id("stNumberInputStepUp")
        if next_page.count():
            figures["next gallery page"] = timed(page, next_page.click, 3)
    print(f"Predict page with {len(paths)} uploads ({cards} photo cards drawn):")
    for name, seconds in figures.items():
        print(f"  {name:<24} {seconds:6.2f} s")
    cold = view_opens(fresh_cache=True)
    kept = view_opens()
    print("Opening a view: nothing kept but the feature cache / first after the server starts / warm:")
    for name in kept:
        print(f"  {name:<24} {cold[name][0]:6.2f} s / {kept[name][0]:6.2f} s / {kept[name][1]:6.2f} s")


def view_opens(fresh_cache: bool = False) -> dict[str, tuple[float, float]]:
    """Seconds until the Label issues view and the Relabel page show their content, twice each in one server;
    `fresh_cache`: with a cache folder holding only the manifest's feature cache (no ranking kept on disk)."""
    if fresh_cache:
        from roomvision.config import ENV_CACHE_DIR, settings
        from roomvision.features import cache_path
        from roomvision.versions import current_default
        features = cache_path(current_default(), settings().manifest)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / features.name).symlink_to(features)
            os.environ[ENV_CACHE_DIR] = tmp
            try:
                return view_opens()
            finally:
                del os.environ[ENV_CACHE_DIR]
    views = {"Label issues": ("/mistakes", lambda page: page.get_by_text("Label issues", exact=True).click(),
                              lambda page: page.get_by_text(re.compile(r"of \d+ reviewed"))),
             "Relabel": ("/relabel", lambda page: None,
                         lambda page: page.get_by_role("button", name="GOOD").first)}
    opens = {}
    with running_app() as (_, url):
        for name, (path, choose, ready) in views.items():
            times = []
            for _ in range(2):
                with chromium_page() as page:
                    t0 = time.perf_counter()
                    page.goto(url + path)
                    page.get_by_role("link", name="Predict").wait_for()
                    choose(page)
                    ready(page).wait_for(timeout=600_000)
                    times.append(time.perf_counter() - t0)
            opens[name] = (times[0], times[1])
    return opens


if __name__ == "__main__":
    main()
