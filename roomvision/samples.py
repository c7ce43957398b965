"""Training samples: one per manifest photo plus a deterministic degraded copy, with targets and human overrides."""
from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .config import CLASSES, settings
from .images import load_image
from .learning.heads import human_targets
from .learning.stores import room_corrections
from .modelinfo import file_sha256
from .preprocess import Preprocess, decode_for_model
from .quality import DEGRADATIONS, aesthetic_target, compute_metrics, degrade, quality_label, score_distribution
from .robustness import listing_augment


IGNORE_ROOM = -100  # room target of a photo people called ambiguous or not a room: no room loss


def real_samples(df: pd.DataFrame, paths: list[Path], relabels: Path | None,
                 room_relabels: Path | None = None) -> pd.DataFrame:
    """One sample per manifest row; human labels and ratings from the relabel CSV override proxy targets, and room
    corrections override the room label of training photos (ambiguous and not-a-room ones train no room head).
    Validation and test keep their original labels: `evaluate` reports corrected figures beside them."""
    s = pd.DataFrame({
        "file": [str(p) for p in paths], "path": df["path"].values, "source": df["source"].values,
        "sha256": df["sha256"].values, "split": df["split"].values,
        "class_idx": [CLASSES.index(c) for c in df["class"]],
        "quality": (df["quality_label"] == "GOOD").astype(np.float32).values,
        "aesthetic": df["aesthetic_target"].astype(np.float32).values,
        "human_quality": "", "degrade": "", "seed": [int(h[:8], 16) for h in df["sha256"]],
    })
    decision, score = human_targets(df, relabels)
    decided, rated = decision >= 0, ~np.isnan(score)
    s.loc[decided, "human_quality"] = np.where(decision[decided] == 1, "GOOD", "BAD")
    s.loc[decided, "quality"] = decision[decided].astype(np.float32)
    s.loc[rated, "aesthetic"] = score[rated].astype(np.float32)
    corrected = room_corrections(df, room_relabels).to_numpy()
    train = (df["split"] == "train").to_numpy() & pd.notna(corrected)
    if train.any():
        s.loc[train, "class_idx"] = [CLASSES.index(c) if c in CLASSES else IGNORE_ROOM for c in corrected[train]]
    return s


def degradation_for(seed: int) -> str:
    return DEGRADATIONS[seed % len(DEGRADATIONS)]


def _degraded_metrics(args: tuple[str, str, int]) -> dict:
    file, kind, seed = args
    img = degrade(load_image(file), kind, np.random.default_rng(seed))
    m = compute_metrics(img)
    label, reasons = quality_label(m)
    return {"quality": float(label == "GOOD"), "aesthetic": aesthetic_target(m), "reasons": reasons}


def degraded_cache_path(manifest: Path) -> Path:
    """Where the proxy labels of a manifest's degraded copies are cached."""
    return settings().cache_dir / f"degraded-{file_sha256(manifest)[:12]}.csv"


def degraded_samples(real: pd.DataFrame, cache: Path, workers: int = 2) -> pd.DataFrame:
    """One deterministic degraded copy per real photo, labelled by the same proxy metrics (cached)."""
    d = real.copy()
    d["degrade"] = [degradation_for(s) for s in d["seed"]]
    d["human_quality"] = ""
    key = d["sha256"] + ":" + d["degrade"]
    known = pd.read_csv(cache, keep_default_na=False).set_index("key") if cache.is_file() else pd.DataFrame()
    todo = [i for i, k in enumerate(key) if k not in known.index]
    if todo:
        args = [(d["file"].iat[i], d["degrade"].iat[i], int(d["seed"].iat[i])) for i in todo]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            res = list(tqdm(pool.map(_degraded_metrics, args, chunksize=16), total=len(args),
                            desc="labelling degraded copies", unit="img", file=sys.stderr))
        new = pd.DataFrame(res, index=key.iloc[todo].values).rename_axis("key")
        known = pd.concat([known, new]) if len(known) else new
        cache.parent.mkdir(parents=True, exist_ok=True)
        known.to_csv(cache)
    d["quality"] = known.loc[key, "quality"].astype(np.float32).values
    d["aesthetic"] = known.loc[key, "aesthetic"].astype(np.float32).values
    return d


class SampleDataset(Dataset):
    """Image (degraded, or changed the way listings elsewhere look, when the sample says so) -> (tensor, class,
    quality, aesthetic distribution, weight of the quality and aesthetic targets).

    A listing-style change keeps the room but not the proxy quality and aesthetic targets: their weight is 0.
    """

    def __init__(self, samples: pd.DataFrame, transform, pre: Preprocess):
        self.rows = samples.to_dict("records")
        self.transform, self.pre = transform, pre

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        img = decode_for_model(r["file"], self.pre)
        if r["degrade"]:
            img = degrade(img, r["degrade"], np.random.default_rng(r["seed"]))
        augment_seed = r.get("listing_augment", -1)
        if augment_seed >= 0:
            img, _ = listing_augment(img, np.random.default_rng(augment_seed))
        return (self.transform(img), r["class_idx"], np.float32(r["quality"]),
                torch.from_numpy(score_distribution(r["aesthetic"])), np.float32(augment_seed < 0))
