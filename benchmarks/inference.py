"""Inference speed: our predictor end to end against what a team would pick instead, same images, same run.

python benchmarks/inference.py [--images N] [--repeats R]

Pipelines: ours (`Predictor`: EfficientNet-Lite0 multi-task graph in ONNX Runtime, every output a prediction
needs) in fp32 as README's install leaves it (glibc malloc), the same under jemalloc, and the INT8 fast profile
(`--fast`); MobileNetV3-Large and ResNet-18 room classifiers exported to ONNX Runtime and run the way a
speed-minded team would (batches of 64, PIL draft-mode JPEG decoding at the needed scale in two threads
overlapping the model, one image at a time for latency), under jemalloc when installed; and the seed-style
reference (ResNet-18 in eager PyTorch, one image at a time, glibc). Peers have random weights: same cost. Each
pipeline runs in its own subprocess (peak RSS and cold load are its own); figures are medians over the repeats.
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


def run_ours(paths: list[str], weights: str, profile: str = "default") -> dict:
    t0 = time.perf_counter()  # import cost reported apart from model load; CPU serving does not import PyTorch
    from roomvision.images import load_image
    from roomvision.inference import Predictor
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = Predictor(weights, device="auto", profile=profile)
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


PEERS = {"mobilenetv3-large-ort": "mobilenet_v3_large", "resnet18-ort": "resnet18"}


def export_peer(arch: str, out: Path) -> Path:
    """A torchvision classifier with five outputs (random weights), exported once for ONNX Runtime."""
    import torch
    import torchvision
    model = getattr(torchvision.models, arch)(num_classes=5).eval()
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(out), input_names=["x"], output_names=["room"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    return out


def run_peer(paths: list[str], model_file: str) -> dict:
    """An ONNX Runtime classifier fed by PIL draft-mode decoding (resize 256, centre crop 224), batched."""
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    t_import = time.perf_counter() - t0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def prepare(p):
        img = Image.open(p)
        img.draft("RGB", (256, 256))
        img = img.convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        x = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255
        return ((x - mean) / std).transpose(2, 0, 1)

    t0 = time.perf_counter()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0

    def scores(batch):
        logits = session.run(["room"], {"x": np.stack(batch)})[0]
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    scores([prepare(paths[0])])
    lat = []
    for p in paths:
        t = time.perf_counter()
        scores([prepare(p)])
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
        upcoming = [pool.submit(prepare, p) for p in chunks[0]]
        for i in range(len(chunks)):
            current = upcoming
            upcoming = [pool.submit(prepare, p) for p in chunks[i + 1]] if i + 1 < len(chunks) else []
            scores([f.result() for f in current])
    batch = len(paths) / (time.perf_counter() - t)
    return {"import_s": t_import, "load_s": load, "b1_ips": len(paths) / sum(lat),
            "b1_median_ms": 1000 * statistics.median(lat), "b64_ips": batch}


def child(engine: str, paths_file: str, weights: str) -> None:
    paths = json.loads(Path(paths_file).read_text())
    if engine.startswith("ours"):
        res = run_ours(paths, weights, "fast" if engine == "ours-fast" else "default")
    elif engine == "baseline":
        res = run_baseline(paths)
    else:
        res = run_peer(paths, str(Path(paths_file).parent / f"{engine}.onnx"))
    # VmHWM: this process image's own peak (ru_maxrss would carry over the parent's peak across fork and exec)
    status = Path("/proc/self/status").read_text()
    res["peak_rss_mb"] = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
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
        for engine, arch in PEERS.items():
            export_peer(arch, Path(tmp) / f"{engine}.onnx")
        engines = ["ours", "ours-jemalloc", "ours-fast", *PEERS, "baseline"]
        runs: dict[str, list[dict]] = {e: [] for e in engines}
        plain = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
        tuned = dict(plain)
        if os.path.exists(JEMALLOC):
            tuned.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
        for _ in range(args.repeats):
            for engine in engines:
                out = subprocess.run([sys.executable, __file__, "--weights", args.weights, "--child", engine,
                                      str(paths_file)], capture_output=True, text=True, check=True,
                                     env=tuned if engine in ("ours-jemalloc", *PEERS) else plain)
                runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in runs.items()}
    print(f"images: {len(paths)} ({'house-rooms test split' if 'house-rooms' in paths[0] else 'generated'}), "
          f"repeats: {args.repeats}, cores: {os.cpu_count()}, allocator: "
          f"peers {'jemalloc' if 'LD_PRELOAD' in tuned else 'glibc'}, ours and the seed-style reference as README's "
          f"install leaves them (glibc)\n")
    names = {"ours": "ours", "ours-jemalloc": "ours, jemalloc", "ours-fast": "ours --fast (INT8)",
             "mobilenetv3-large-ort": "MobileNetV3-L, ORT",
             "resnet18-ort": "ResNet-18, ORT", "baseline": "ResNet-18 eager, seed-style"}
    rows = [("batch 64, images/s", "b64_ips"), ("batch 1, images/s", "b1_ips"),
            ("median latency, ms", "b1_median_ms"), ("peak RSS, MB", "peak_rss_mb"),
            ("cold model load, s", "load_s"), ("imports, s", "import_s")]
    print("| figure | " + " | ".join(names[e] for e in engines) + " |")
    print("|" + " --- |" * (len(engines) + 1))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(f"{med[e][key]:.2f}" for e in engines) + " |")
    for ours in ("ours", "ours-fast"):
        print(f"\n{names[ours]} / other, batch-64 throughput: " + ", ".join(
            f"{names[e]} {med[ours]['b64_ips'] / med[e]['b64_ips']:.2f}" for e in engines if e != ours))


if __name__ == "__main__":
    main()
