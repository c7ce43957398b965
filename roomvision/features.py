"""Cache of the model's pooled features, photo-quality descriptor and raw outputs over every manifest photo.

The relabel queue ranks photos from it, learning from people fits its heads on it and label-issue search fits
its out-of-fold classifiers on it, so none of them runs the model again. Built by the serving predictor (ONNX
Runtime on the CPU: no PyTorch), resumable in parts.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from .config import settings
from .data import load_manifest, manifest_roots, resolve_paths
from .inference import Predictor, room_probabilities
from .modelinfo import file_sha256
from .photocache import model_key, run_files

PART = 512  # photos per saved part: an interrupted build resumes from the last finished part


def cache_path(weights: Path, manifest: Path) -> Path:
    """Keyed by what produced the outputs (the graph's key and the weights' tensors: a version that only adds heads
    learned from people shares its base model's cache) and by the manifest."""
    return settings().cache_dir / f"features-{model_key(weights)}-{file_sha256(manifest)[:12]}.npz"


def build_feature_cache(predictor: Predictor, manifest: Path, data_roots: list[Path] | None = None,
                        batch_size: int = 64, on_batch=None, progress: bool = True, cancel=None) -> Path:
    """The feature cache of this model and manifest, built first when missing: the model runs once over every
    manifest photo and its pooled features, quality features and raw outputs are saved (one row per photo, in
    manifest order; unreadable photos get NaN). `on_batch(done, total)` reports progress; `cancel()` returning
    True stops after the current part (finished parts are kept and reused next time)."""
    out = cache_path(predictor.weights, manifest)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # one builder per cache: a second one waits, then finds it built
        if not out.is_file():
            _build(predictor, manifest, data_roots, out, batch_size, on_batch, progress, cancel)
    return out


def _build(predictor: Predictor, manifest: Path, data_roots, out: Path, batch_size: int, on_batch, progress: bool,
           cancel) -> None:
    df = load_manifest(manifest).reset_index(drop=True)
    files = resolve_paths(df, manifest_roots(manifest, data_roots))
    parts_dir = out.with_suffix(".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(files), desc="caching features", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), PART):
            part = parts_dir / f"{start:07d}.npz"
            if not part.is_file():
                raw = run_files(predictor, files[start:start + PART], batch_size)
                tmp = part.with_name(f"{part.stem}.{os.getpid()}.tmp.npz")
                np.savez(tmp, **raw)
                tmp.replace(part)
            bar.update(min(PART, len(files) - start))
            if on_batch is not None:
                on_batch(min(start + PART, len(files)), len(files))
            if cancel is not None and cancel():
                raise InterruptedError("feature caching cancelled; finished parts are kept")
    parts = [np.load(parts_dir / f"{s:07d}.npz") for s in range(0, len(files), PART)]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, sha256=df["sha256"].to_numpy(str), **merged)
    tmp.replace(out)
    shutil.rmtree(parts_dir)


def load_feature_cache(path: Path, manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Arrays of a feature cache (sha256, quality, aesthetic, room, quality_features, features), one row per
    manifest photo; with `manifest`, a ValueError unless the cache holds exactly its photos in its order."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if manifest is not None and list(data["sha256"]) != list(manifest["sha256"]):
        raise ValueError(f"feature cache {path} does not match the manifest; delete it and retry")
    return data


def cached_scores(path: Path, predictor: Predictor, manifest: pd.DataFrame) -> pd.DataFrame:
    """P(GOOD) of each cached photo under the predictor's current quality head (human-trained when it has one);
    the manifest (the cache's rows, in order) supplies the quality metrics such a head may read."""
    data = load_feature_cache(path)
    ok = ~np.isnan(data["quality"])
    p_good = np.full(len(ok), np.nan)
    rooms = room_probabilities(predictor.room_logits({k: data[k][ok] for k in ("room", "features")}),
                               predictor.calibration.temperature)
    p_good[ok] = predictor.p_good(data["quality"][ok], data["quality_features"][ok].astype(np.float32),
                                  manifest[ok].reset_index(drop=True), rooms)
    return pd.DataFrame({"p_good": p_good}, index=data["sha256"])


def cached_pool(cache: Path, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, dict]:
    """From a feature cache matching `manifest`: the rows the model could read, their quality features and
    manifest rows (the pool human heads are fitted on), and the cache's arrays."""
    data = load_feature_cache(cache, manifest)
    ok = np.flatnonzero(~np.isnan(data["quality"]))
    return ok, data["quality_features"][ok].astype(np.float32), manifest.iloc[ok].reset_index(drop=True), data
