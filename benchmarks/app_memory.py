"""Resident memory of the running app while it scores uploads in a real browser: a batch of phone-sized photos,
then one 48-megapixel photo (the largest upload the decoder accepts at full resolution).

python benchmarks/app_memory.py [--images 16]   (needs Debian chromium + playwright)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from app_session import chromium_page, running_app, wait_for_run  # noqa: E402
from inference import benchmark_images  # noqa: E402

TARGET_MB = 800


def process_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def phone_photo(src: str, out: Path, size: tuple[int, int]) -> str:
    """A real photo enlarged to a phone camera's size and saved as a detailed JPEG (noise keeps it realistic)."""
    img = np.asarray(Image.open(src).convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-6, 7, img.shape[:2] + (1,), dtype=np.int16)
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(out, quality=92)
    return str(out)


def upload(page, paths: list[str]) -> float:
    """Seconds from choosing the files until every photo's result is drawn."""
    t0 = time.perf_counter()
    page.locator("input[type=file]").set_input_files(paths)
    page.get_by_text("All results").wait_for()
    wait_for_run(page)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    with running_app() as (proc, url), tempfile.TemporaryDirectory() as tmp, chromium_page() as page:
        tmp = Path(tmp)
        sources = benchmark_images(args.images, tmp)
        batch = [phone_photo(s, tmp / f"phone{i}.jpg", (4032, 3024)) for i, s in enumerate(sources)]
        huge = phone_photo(sources[0], tmp / "48mp.jpg", (8000, 6000))
        idle = process_rss_mb(proc.pid)[0]
        page.goto(url)
        page.get_by_text("Listing photos").wait_for()
        batch_s = upload(page, batch)
        after_batch, peak_batch = process_rss_mb(proc.pid)
        page.reload()
        page.get_by_text("Listing photos").wait_for()
        huge_s = upload(page, [huge])
        if page.get_by_test_id("stMetric").count() < 3:
            raise SystemExit("the 48 MP photo was not scored: " + page.get_by_test_id("stAlert").inner_text())
        after_huge, peak = process_rss_mb(proc.pid)
    print(f"app RSS: idle {idle:.0f} MB | {len(batch)} photos of 12 MP: {batch_s:.1f} s, after {after_batch:.0f} MB, "
          f"peak {peak_batch:.0f} MB | then one 48 MP photo: {huge_s:.1f} s, after {after_huge:.0f} MB | "
          f"peak over the run {peak:.0f} MB (target ≤ {TARGET_MB} MB: {'met' if peak <= TARGET_MB else 'NOT met'})")


if __name__ == "__main__":
    main()
