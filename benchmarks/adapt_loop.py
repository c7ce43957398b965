"""Adapting to a team's market: a team's photos imported as a collection without labels, rooms corrected by
simulated annotators (who alone read the folder names), in the room queue's order or at random; accuracy on
listings never shown to the annotator, before -> after, per class, and the version's House Rooms and Places365 test
accuracy beside the default model's.

python benchmarks/adapt_loop.py [--root ../shared/datasets/listings-es-dev] [--seeds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomvision.adapt import fit_gate, fit_market_head, market_inputs, room_queue  # noqa: E402
from roomvision.config import CLASSES, DEFAULT_WEIGHTS, settings  # noqa: E402
from roomvision.data import load_manifest, manifest_roots, resolve_paths  # noqa: E402
from roomvision.inference import Predictor  # noqa: E402
from roomvision.photocache import score_photos  # noqa: E402

BUDGETS = (50, 100, 200, 400, 800)
FIRST = 20    # corrections before the queue can rank by a head fitted on them (drawn at random)
BATCH = 25    # the queue is re-ranked after every batch of corrections


def base_photos(per_source: int = 1000) -> pd.DataFrame:
    """The project manifest's test photos (for House Rooms / Places365 accuracy) and a sample of its training
    photos (what the gate learns the market is not)."""
    m = load_manifest(settings().manifest)
    sample = m[m["split"] == "train"].groupby("source").sample(per_source, random_state=0)
    return pd.concat([m[m["split"] == "test"], sample]).reset_index(drop=True)


def sequence(strategy: str, seed: int, x: np.ndarray, truth: np.ndarray, pool: np.ndarray, base_probs: np.ndarray,
             gate: dict, n: int) -> np.ndarray:
    """The first `n` photos a simulated annotator corrects, in the order the strategy asks for them."""
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.permutation(pool)[:n]
    asked = list(rng.permutation(pool)[:FIRST])
    while len(asked) < n:
        probs = base_probs
        if len(set(truth[asked])) > 1:
            head = fit_market_head("bench", x[asked], truth[asked], gate)
            probs = head.blend(x, base_probs)
        left = np.setdiff1d(pool, asked)
        asked += list(room_queue(probs, left, min(BATCH, n - len(asked)), seed=seed + len(asked)))
    return np.asarray(asked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "datasets" / "listings-es-dev")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ROOMVISION_COLLECTIONS_DIR", tmp)
        settings.cache_clear()
        from roomvision.collection import get_collection, import_photos
        listing = pd.read_csv(args.root / "manifest.csv", dtype=str)
        groups = Path(tmp) / "groups.csv"
        listing[["file", "listing_group"]].to_csv(groups, index=False)  # listing ids only: no room labels
        started = time.monotonic()
        import_photos([args.root], "bench-market", groups=groups, workers=2)
        collection = get_collection("bench-market")
        photos = collection.photos()
        print(f"imported {len(photos)} photos without labels in {time.monotonic() - started:.1f} s")
        predictor = Predictor(args.weights, device="cpu")
        started = time.monotonic()
        raw = score_photos(predictor, resolve_paths(photos, manifest_roots(collection.manifest)),
                           photos["sha256"].tolist())
        print(f"scored {len(photos)} photos (cached per photo) in {time.monotonic() - started:.1f} s")
        base = base_photos()
        roots = manifest_roots(settings().manifest)
        raw_base = score_photos(predictor, resolve_paths(base, roots), base["sha256"].tolist())
    truth_names = photos["path"].str.split("/").str[0].to_numpy()  # the simulated annotator reads the folder
    truth = np.array([CLASSES.index(c) for c in truth_names])
    x, x_base_all = market_inputs(raw), market_inputs(raw_base)
    base_probs = predictor.scores(raw)["probs"]
    base_probs_b = predictor.scores(raw_base)["probs"]
    held = (photos["split"] == "test").to_numpy()
    pool = np.flatnonzero(~held)
    gate_rows = (base["split"] == "train").to_numpy()
    started = time.monotonic()
    gate = fit_gate(x[pool], x_base_all[gate_rows])
    gate_seconds = time.monotonic() - started
    tests = {name: ((base["source"] == source) & (base["split"] == "test")).to_numpy()
             for name, source in (("House Rooms", "house-rooms"), ("Places365", "places365-rooms"))}
    base_class = np.array([CLASSES.index(c) for c in base["class"]])

    def accuracy(probs, rows, y):
        return float(np.mean(probs[rows].argmax(1) == y[rows]))
    before = accuracy(base_probs, held, truth)
    per_class_before = {c: accuracy(base_probs, held & (truth == k), truth) for k, c in enumerate(CLASSES)
                        if (held & (truth == k)).any()}
    print(f"held-out listings: {held.sum()} photos of {photos['group'][held].nunique()} listings; default model "
          f"{before:.3f} ({', '.join(f'{c} {a:.2f}' for c, a in per_class_before.items())})")
    default_base = {name: accuracy(base_probs_b, rows, base_class) for name, rows in tests.items()}
    rows = []
    for strategy in ("queue", "random"):
        for seed in range(args.seeds):
            order = sequence(strategy, seed, x, truth, pool, base_probs, gate, max(BUDGETS))
            for n in BUDGETS:
                asked = order[:n]
                started = time.monotonic()
                head = fit_market_head("bench", x[asked], truth[asked], gate)
                seconds = time.monotonic() - started + gate_seconds
                probs = head.blend(x, base_probs)
                probs_b = head.blend(x_base_all, base_probs_b)
                rows.append({"strategy": strategy, "seed": seed, "corrections": n, "held-out": accuracy(probs, held, truth),
                             **{c: accuracy(probs, held & (truth == k), truth) for k, c in enumerate(CLASSES)
                                if (held & (truth == k)).any()},
                             **{name: accuracy(probs_b, r, base_class) for name, r in tests.items()},
                             "adapt s": seconds})
    table = pd.DataFrame(rows).groupby(["strategy", "corrections"]).mean(numeric_only=True).drop(columns="seed")
    pd.set_option("display.width", 160)
    print(f"\nmeans over {args.seeds} seeds; default model: held-out {before:.3f}, "
          + ", ".join(f"{k} test {v:.3f}" for k, v in default_base.items()))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
