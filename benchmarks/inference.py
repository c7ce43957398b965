"""Inference speed: our predictor end to end vs the usual ResNet-18 baseline, same images, same run.

python benchmarks/inference.py [--images N] [--repeats R]

Each engine runs in its own subprocess (so peak RSS and cold load are its own); figures are medians
over the repeats. Ours runs as shipped (`python -m roomvision app` preloads jemalloc when installed); the
baseline runs with the default allocator, as the usual approach does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def benchmark_images(n: int, folder: Path) -> list[str]:
    """Test-split photos from the shared House Rooms set when present, else generated JPEGs."""
    from roomvision.config import DEFAULT_MANIFEST
    from roomvision.data import load_manifest, manifest_roots, resolve_paths
    try:
        df = load_manifest(DEFAULT_MANIFEST)
        df = df[(df["source"] == "house-rooms") & (df["split"] == "test")].head(n)
        paths = resolve_paths(df, manifest_roots(DEFAULT_MANIFEST))
        if len(paths) == n and all(p.is_file() for p in paths):
            return [str(p) for p in paths]
    except (FileNotFoundError, ValueError):
        pass
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (416, 416, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(str(p))
    return out


def run_ours(paths: list[str], weights: str) -> dict:
    t0 = time.perf_counter()  # import cost reported apart from model load; CPU serving does not import PyTorch
    from roomvision.images import load_image
    from roomvision.inference import Predictor
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = Predictor(weights, device="auto")
    load = time.perf_counter() - t0
    predictor.predict_images([load_image(paths[0])])  # warm-up
    lat = []
    for p in paths:
        t = time.perf_counter()
        predictor.predict_images([load_image(p)])
        lat.append(time.perf_counter() - t)
    predictor.predict_paths(paths[:64], batch_size=64)  # warm-up of the batched path
    t = time.perf_counter()
    predictor.predict_paths(paths, batch_size=64)
    batch = len(paths) / (time.perf_counter() - t)
    return {"import_s": t_import, "load_s": load, "b1_ips": len(paths) / sum(lat),
            "b1_median_ms": 1000 * statistics.median(lat), "b64_ips": batch}


def run_baseline(paths: list[str]) -> dict:
    """torchvision ResNet-18, fp32, eager, one image at a time, PIL resize per image."""
    t0 = time.perf_counter()
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = torchvision.models.resnet18(num_classes=5).eval()  # no download here: random weights, same cost
    load = time.perf_counter() - t0
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def one(p):
        with torch.no_grad():
            return torch.softmax(model(tf(Image.open(p).convert("RGB")).unsqueeze(0)), 1)

    one(paths[0])
    lat = []
    for p in paths:
        t = time.perf_counter()
        one(p)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths:  # the baseline has no batched path: a "batch" is a loop
        one(p)
    batch = len(paths) / (time.perf_counter() - t)
    return {"import_s": t_import, "load_s": load, "b1_ips": len(paths) / sum(lat),
            "b1_median_ms": 1000 * statistics.median(lat), "b64_ips": batch}


def child(engine: str, paths_file: str, weights: str) -> None:
    import resource
    paths = json.loads(Path(paths_file).read_text())
    res = run_ours(paths, weights) if engine == "ours" else run_baseline(paths)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main() -> None:
    from roomvision.config import DEFAULT_WEIGHTS, JEMALLOC
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        paths = benchmark_images(args.images, Path(tmp))
        paths_file = Path(tmp) / "paths.json"
        paths_file.write_text(json.dumps(paths))
        runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
        envs = {"baseline": {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")},
                "ours": dict(os.environ)}
        if os.path.exists(JEMALLOC):
            envs["ours"].update(LD_PRELOAD=JEMALLOC, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
        for _ in range(args.repeats):
            for engine in runs:
                out = subprocess.run([sys.executable, __file__, "--weights", args.weights, "--child", engine,
                                      str(paths_file)], capture_output=True, text=True, check=True, env=envs[engine])
                runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in runs.items()}
    print(f"images: {len(paths)} ({'house-rooms test split' if 'house-rooms' in paths[0] else 'generated'}), "
          f"repeats: {args.repeats}, threads: {os.cpu_count()}, "
          f"allocator: ours {'jemalloc' if 'jemalloc' in envs['ours'].get('LD_PRELOAD', '') else 'glibc'}, "
          f"baseline glibc")
    print(f"{'figure':<32}{'ours':>12}{'baseline':>12}{'ours/base':>12}")
    rows = [("batch 1, images/s", "b1_ips", True), ("batch 64, images/s", "b64_ips", True),
            ("median latency, ms", "b1_median_ms", False), ("peak RSS, MB", "peak_rss_mb", False),
            ("cold model load, s", "load_s", False), ("imports (ours: no PyTorch), s", "import_s", False)]
    for label, key, _ in rows:
        o, b = med["ours"][key], med["baseline"][key]
        print(f"{label:<32}{o:>12.2f}{b:>12.2f}{o / b:>12.2f}")


if __name__ == "__main__":
    main()
