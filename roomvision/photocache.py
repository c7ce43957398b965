"""Model outputs cached per photo: keyed by the photo's sha256 and by what produced them (the serving graph's
version and a digest of the weights' tensors, so a version that only adds heads read from the features — learned
from people, adapted to a market — shares its base model's cache). Importing 500 photos scores those 500; a new
model scores into a cache of its own, resumably: every batch is saved as it finishes.

Layout: `<cache_dir>/photos/<model key>/part-*.npz`, each part holding `sha256` and one array per output.
"""
from __future__ import annotations

import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from .config import settings
from .images import ImageDecodeError
from .inference import ONNX_GRAPH_VERSION, Predictor
from .modelinfo import storage_digest

OUTPUTS = ("room", "quality", "aesthetic", "quality_features", "features")
HALF = ("quality_features", "features")  # stored as float16


def model_key(weights: Path) -> str:
    """What the cached outputs depend on: the graph version and the weights' tensors (not the header)."""
    with zipfile.ZipFile(weights) as archive:
        return f"g{ONNX_GRAPH_VERSION}-{storage_digest(archive)[:16]}"


class PhotoCache:
    """Raw outputs of one model for any photos, by sha256."""

    def __init__(self, weights: Path):
        self.dir = settings().cache_dir / "photos" / model_key(Path(weights))

    def load(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """(sha256 -> row, arrays) of everything cached; unreadable photos are cached as NaN rows."""
        parts = sorted(self.dir.glob("part-*.npz")) if self.dir.is_dir() else []
        loaded = []
        for part in parts:
            try:
                with np.load(part, allow_pickle=False) as z:
                    loaded.append({k: z[k] for k in z.files})
            except (OSError, ValueError, zipfile.BadZipFile):
                continue  # a part cut short by a crash: its photos are scored again
        if not loaded:
            return {}, {}
        arrays = {k: np.concatenate([p[k] for p in loaded]) for k in loaded[0]}
        return {h: i for i, h in enumerate(arrays.pop("sha256"))}, arrays

    def add(self, shas: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Save one batch as a part of its own (atomic: a reader never sees half a part)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{os.getpid()}-{threading.get_ident()}"
        tmp = self.dir / f"{name}.tmp.npz"
        np.savez(tmp, sha256=np.asarray(shas, dtype=str), **arrays)
        tmp.replace(self.dir / f"{name}.npz")


def score_photos(predictor: Predictor, files: list[Path], shas: list[str], batch_size: int = 64,
                 on_progress=None, cancel=None) -> dict[str, np.ndarray]:
    """Raw outputs for `files` (with their sha256), one row each in order: cached photos are read back, the others
    run through the predictor in batches that are cached as they finish (NaN rows for unreadable files).
    `on_progress(done, total, message)` counts the photos to score; `cancel()` True stops after a batch."""
    cache = PhotoCache(predictor.weights)
    index, cached = cache.load()
    todo = [i for i, h in enumerate(shas) if h not in index]
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        raw = run_files(predictor, [files[i] for i in batch])
        cache.add([shas[i] for i in batch], raw)
        if on_progress is not None:
            on_progress(min(start + batch_size, len(todo)), len(todo), f"scoring new photos: "
                        f"{min(start + batch_size, len(todo))}/{len(todo)}")
        if cancel is not None and cancel():
            raise InterruptedError("scoring cancelled; the photos scored so far are kept")
    if todo:
        index, cached = cache.load()
    rows = np.array([index[h] for h in shas], dtype=int)
    return {k: cached[k][rows] for k in OUTPUTS} if len(rows) else {k: np.zeros((0,)) for k in OUTPUTS}


def run_files(predictor: Predictor, files: list[Path], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Raw outputs of each file, in order (NaN rows for files that cannot be decoded), decoded and run one batch at
    a time (memory bounded by the batch, whatever the number of files)."""
    parts = [_run_batch(predictor, files[i:i + batch_size]) for i in range(0, len(files), batch_size)]
    if not parts:
        return _run_batch(predictor, [])
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}


def _run_batch(predictor: Predictor, files: list[Path]) -> dict[str, np.ndarray]:
    arrays, ok = [], []
    for f in files:
        try:
            arrays.append(predictor.transform(predictor.decode(f)))
            ok.append(True)
        except ImageDecodeError:
            ok.append(False)
    size = predictor.info.preprocess.input_size
    out = predictor.run(np.stack(arrays) if arrays else np.zeros((1, 3, size, size), np.float32), OUTPUTS)
    result = {}
    for k in OUTPUTS:
        full = np.full((len(files), *out[k].shape[1:]), np.nan, np.float32)
        if arrays:
            full[np.asarray(ok)] = out[k]
        result[k] = full.astype(np.float16) if k in HALF else full
    return result
