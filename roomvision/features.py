"""Cache of backbone features and model outputs over a manifest (real photos + their degraded copies).

The relabel queue reads P(GOOD) from it and head retraining trains on its features, so neither needs
to run the backbone again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import settings
from .data import load_manifest, manifest_roots, resolve_paths
from .inference import Predictor
from .modelinfo import HEAD_OUTPUTS, file_sha256

META_COLUMNS = ["sha256", "path", "source", "split", "degrade", "class_idx", "quality", "aesthetic"]


def cache_path(weights: Path, manifest: Path) -> Path:
    return settings().cache_dir / f"features-{file_sha256(weights)[:12]}-{file_sha256(manifest)[:12]}.npz"


def build_feature_cache(predictor: Predictor, manifest: Path, data_roots: list[Path] | None = None,
                        batch_size: int = 64, on_batch=None, progress: str | None = "caching features") -> Path:
    """Run the model once over every manifest photo and its degraded copy; save features and outputs."""
    from .samples import degraded_cache_path, degraded_samples, real_samples  # PyTorch only when the cache is built
    df = load_manifest(manifest).reset_index(drop=True)
    real = real_samples(df, resolve_paths(df, manifest_roots(manifest, data_roots)), relabels=None)
    degraded = degraded_samples(real, degraded_cache_path(manifest))
    samples = pd.concat([real, degraded], ignore_index=True)
    raw = predictor.run_samples(samples, ("features", *HEAD_OUTPUTS), batch_size, progress=progress,
                                on_batch=on_batch)
    out = cache_path(predictor.weights, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {c: samples[c].to_numpy() if samples[c].dtype.kind in "iufb" else np.array(samples[c].astype(str).tolist())
            for c in META_COLUMNS}
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, features=raw["features"].astype(np.float16), room_logits=raw["room"],
             quality_logit=raw["quality"], aesthetic_probs=raw["aesthetic"], **meta)
    tmp.replace(out)
    return out


def load_feature_cache(path: Path) -> dict:
    """Arrays of a feature cache, with the sample metadata as a DataFrame under 'samples'."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["samples"] = pd.DataFrame({c: data.pop(c) for c in META_COLUMNS})
    return data
