"""How long the Predict page takes to answer a user in a real browser, with a batch of uploads on screen.

python benchmarks/app_responsiveness.py [--images 40]   (needs Debian chromium + playwright)

Each figure is wall time from the user's action until the app finished its run and Chromium drew the result
(median of several actions): a threshold slider step, the Grad-CAM toggle, and a change of gallery page.
"""
from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()
