"""Model outputs cached per photo: keyed by the photo's sha256 and by what produced them (the key of the serving
graph's declaration and a digest of the weights' tensors, so a version that only adds heads read from the features —
learned from people, adapted to a market — shares its base model's cache). Importing 500 photos scores those 500; a new
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
from .inference import Predictor
from .modelinfo import GRAPH_KEY, REFERENCE_OUTPUT, market_outputs, outputs_tensors, read_model_info, tensors_digest

OUTPUTS = ("room", "quality", "aesthetic", "quality_features", "features")
HALF = ("quality_features", "features", REFERENCE_OUTPUT)  # stored as float16


def model_key(weights: Path) -> str:
    """What the cached OUTPUTS depend on: the graph's key (modelinfo.GRAPH_KEY) and the tensors that compute them
    (not the header; a version with a refitted room head or a market stage shares its base model's, and
    `Predictor.room_logits` recomputes the room logits of a refitted head from the cached features)."""
    return f"g{GRAPH_KEY}-{outputs_tensors(weights)[:16]}"


class PhotoCache:
    """Raw outputs of one model for any photos, by sha256: OUTPUTS, or with `market` the outputs only a version
    adapted to a market computes (`modelinfo.market_outputs`; keyed by the version's own tensors)."""

    def __init__(self, weights: Path, market: bool = False):
        key = f"g{GRAPH_KEY}-{tensors_digest(weights)[:16]}-market" if market else model_key(Path(weights))
        self.dir = settings().cache_dir / "photos" / key
        self.outputs = market_outputs(read_model_info(weights).market) if market else OUTPUTS

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
    caches = [PhotoCache(predictor.weights)] + ([PhotoCache(predictor.weights, market=True)]
                                                if predictor.market_outputs else [])
    loaded = [cache.load() for cache in caches]
    todo = [i for i, h in enumerate(shas) if any(h not in index for index, _ in loaded)]
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        # each cache gets only the photos it lacks, and the graph runs only for the outputs of those caches
        missing = [[j for j, i in enumerate(batch) if shas[i] not in index] for index, _ in loaded]
        outputs = tuple(k for cache, rows in zip(caches, missing) if rows for k in cache.outputs)
        raw = run_files(predictor, [files[i] for i in batch], outputs=outputs)
        for cache, rows in zip(caches, missing):
            if rows:
                cache.add([shas[batch[j]] for j in rows], {k: raw[k][rows] for k in cache.outputs})
        if on_progress is not None:
            on_progress(min(start + batch_size, len(todo)), len(todo), f"scoring new photos: "
                        f"{min(start + batch_size, len(todo))}/{len(todo)}")
        if cancel is not None and cancel():
            raise InterruptedError("scoring cancelled; the photos scored so far are kept")
    if todo:
        loaded = [cache.load() for cache in caches]
    result = {}
    for cache, (index, cached) in zip(caches, loaded):
        rows = np.array([index[h] for h in shas], dtype=int)
        result.update({k: cached[k][rows] if len(rows) else np.zeros((0,)) for k in cache.outputs})
    return result


def run_files(predictor: Predictor, files: list[Path], batch_size: int = 64,
              outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Raw `outputs` (default: OUTPUTS, and the outputs only a market version computes where it is one) of each
    file, in order (NaN rows for files that cannot be decoded), decoded and run one batch at a time (memory bounded
    by the batch, whatever the number of files)."""
    outputs = outputs or OUTPUTS + predictor.market_outputs
    parts = [_run_batch(predictor, files[i:i + batch_size], outputs) for i in range(0, len(files), batch_size)]
    if not parts:
        return _run_batch(predictor, [], outputs)
    return {k: np.concatenate([p[k] for p in parts]) for k in outputs}


def _run_batch(predictor: Predictor, files: list[Path], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays, ok = [], []
    for f in files:
        try:
            arrays.append(predictor.transform(predictor.decode(f)))
            ok.append(True)
        except ImageDecodeError:
            ok.append(False)
    size = predictor.info.preprocess.input_size
    out = predictor.run(np.stack(arrays) if arrays else np.zeros((1, 3, size, size), np.float32), outputs)
    result = {}
    for k in outputs:
        full = np.full((len(files), *out[k].shape[1:]), np.nan, np.float32)
        if arrays:
            full[np.asarray(ok)] = out[k]
        result[k] = full.astype(np.float16) if k in HALF else full
    return result
