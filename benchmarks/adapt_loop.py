"""Adapting to a team's market: a team's photos imported as a collection without labels, rooms corrected by
simulated annotators (who alone read the folder names), in the room queue's order or at random; accuracy on
listings never shown to the annotator, before -> after, per class, and the version's House Rooms and Places365 test
accuracy beside the default model's — for the market head alone, reading also the ImageNet backbone's features, and
with the last stage fine-tuned; then the product's adapt job itself (`retrain-heads --collection`, with
`--imagenet-features` and with `--fine-tune`) on 400 corrections, timed end to end. With 24 test listings,
differences under about 2 points are noise; the listing folds (every listing held out once, corrected photos drawn
from the other folds' listings) score the heads on all 1,682 photos, so orders and heads can be told apart.

python benchmarks/adapt_loop.py [--root ../shared/datasets/listings-es-dev] [--seeds 3]
    [--evaluation both|test-listings|listing-folds] [--folds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomvision.learning.market import fit_gate, fit_market_head, market_inputs  # noqa: E402
from roomvision.learning.queue import RERANK_EVERY, room_queue, room_ranking  # noqa: E402
from roomvision.config import CLASSES, DEFAULT_WEIGHTS, settings  # noqa: E402
from roomvision.data import load_manifest, manifest_roots, resolve_paths  # noqa: E402
from roomvision.learning.finetune import (fine_tune_stage, reference_features, saved_reference,  # noqa: E402
                                          stage_inputs, stage_logits)
from roomvision.inference import Predictor  # noqa: E402
from roomvision.learning.stores import ROOM, LabelStore  # noqa: E402
from roomvision.model import Checkpoint  # noqa: E402
from roomvision.photocache import score_photos  # noqa: E402

BUDGETS = (50, 100, 200, 300, 400, 600, 800)
TARGET = 0.85   # the accuracy whose number of corrections each order is compared by
JOB_CORRECTIONS = 400


def base_photos(per_source: int = 1000) -> pd.DataFrame:
    """The project manifest's test photos (for House Rooms / Places365 accuracy) and a sample of its training
    photos (what the gate learns the market is not)."""
    m = load_manifest(settings().manifest)
    sample = m[m["split"] == "train"].groupby("source").sample(per_source, random_state=0)
    return pd.concat([m[m["split"] == "test"], sample]).reset_index(drop=True)


def sequence(strategy: str, seed: int, x: np.ndarray, truth: np.ndarray, pool: np.ndarray, base_probs: np.ndarray,
             n: int) -> np.ndarray:
    """The first `n` photos a simulated annotator corrects, in the order the strategy asks for them: at random, or
    the room queue's as the Label-issues page gives it (ranked again after every RERANK_EVERY corrections)."""
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.permutation(pool)[:n]
    asked: list[int] = []
    while len(asked) < n:
        probs = room_ranking(x, base_probs, asked, truth[asked])
        left = np.setdiff1d(pool, asked)
        asked += list(room_queue(probs, left, min(RERANK_EVERY, n - len(asked)), seed=seed + len(asked)))
    return np.asarray(asked)


def listing_folds(x: np.ndarray, reference: np.ndarray, truth: np.ndarray, listings: np.ndarray,
                  base_probs: np.ndarray, gate: dict, seeds: int, folds: int) -> pd.DataFrame:
    """Accuracy over every photo of the collection, each scored by heads fitted on corrections of other listings
    only (group k-fold over listings), per order, head and budget; one row per seed."""
    rows = []
    for strategy in ("queue", "random"):
        for seed in range(seeds):
            hits: dict = {}
            for fold, (pool, held) in enumerate(GroupKFold(folds).split(x, groups=listings)):
                order = sequence(strategy, seed * folds + fold, x, truth, pool, base_probs, max(BUDGETS))
                for n in BUDGETS:
                    asked = order[:n]
                    for method, refs in (("head", None), ("head, ImageNet features", reference[asked])):
                        head = fit_market_head("folds", x[asked], truth[asked], gate, reference=refs)
                        probs = head.blend(x[held], base_probs[held], reference=reference[held])
                        hits[method, n] = hits.get((method, n), 0) + int((probs.argmax(1) == truth[held]).sum())
            print(f"listing folds: {strategy} order, seed {seed} done", flush=True)
            rows += [{"method": method, "strategy": strategy, "seed": seed, "corrections": n,
                      "accuracy": hit / len(truth)} for (method, n), hit in hits.items()]
    return pd.DataFrame(rows)


def corrections_to_reach(means: pd.Series) -> str:
    """Per head and order, the fewest corrections (of BUDGETS) whose mean accuracy reaches TARGET."""
    reached = means[means >= TARGET].reset_index().groupby(["method", "strategy"])["corrections"].min()
    pairs = means.reset_index()[["method", "strategy"]].drop_duplicates().itertuples(index=False)
    return "; ".join(f"{m}, {o}: {reached.get((m, o), f'not by {max(BUDGETS)}')}" for m, o in pairs)


def print_listing_folds(folds: pd.DataFrame, default_accuracy: float, n_folds: int) -> None:
    """The listing folds' means (and the seeds' range) per head, order and budget."""
    means = folds.groupby(["method", "strategy", "corrections"])["accuracy"].agg(["mean", "min", "max"])
    print(f"\nlisting folds ({n_folds}; every photo scored by heads fitted on other listings' corrections), "
          f"{folds['seed'].nunique()} seeds: default model {default_accuracy:.3f}")
    print(means.round(3).to_string())
    print(f"corrections to reach {TARGET}: {corrections_to_reach(means['mean'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "datasets" / "listings-es-dev",
                        help="the listings-es-dev folder (its manifest.csv gives listing ids and, to the simulated "
                             "annotator only, rooms)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="the model to adapt")
    parser.add_argument("--seeds", type=int, default=3,
                        help="repeats with other random draws (the random order, the queue's random picks)")
    parser.add_argument("--evaluation", choices=("both", "test-listings", "listing-folds"), default="both",
                        help="the 24 test listings nobody corrects, every listing held out once, or both")
    parser.add_argument("--folds", type=int, default=5, help="listing folds (each held out once)")
    args = parser.parse_args()
    if not (args.root / "manifest.csv").is_file():
        parser.error(f"{args.root / 'manifest.csv'} not found: --root is the listings-es-dev folder")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ROOMVISION_COLLECTIONS_DIR", tmp)
        os.environ.setdefault("ROOMVISION_VERSIONS_DIR", tmp)
        settings.cache_clear()
        from roomvision.learning.collection import get_collection, import_photos
        from roomvision.learning.retraining import adapt_to_collection
        listing = pd.read_csv(args.root / "manifest.csv", dtype=str)
        groups = Path(tmp) / "groups.csv"
        listing[["file", "listing_group"]].to_csv(groups, index=False)  # listing ids only: no room labels
        started = time.monotonic()
        import_photos([args.root], "bench-market", groups=groups, workers=2)
        collection = get_collection("bench-market")
        photos = collection.photos()
        print(f"imported {len(photos)} photos without labels in {time.monotonic() - started:.1f} s")
        predictor = Predictor(args.weights, device="cpu")
        files = resolve_paths(photos, manifest_roots(collection.manifest))
        started = time.monotonic()
        raw = score_photos(predictor, files, photos["sha256"].tolist())
        print(f"scored {len(photos)} photos (cached per photo) in {time.monotonic() - started:.1f} s")
        base = base_photos()
        base_files = resolve_paths(base, manifest_roots(settings().manifest))
        raw_base = score_photos(predictor, base_files, base["sha256"].tolist())
        truth_names = photos["path"].str.split("/").str[0].to_numpy()  # the simulated annotator reads the folder
        truth = np.array([CLASSES.index(c) for c in truth_names])
        x, x_base_all = market_inputs(raw), market_inputs(raw_base)
        base_probs = predictor.scores(raw)["probs"]
        base_probs_b = predictor.scores(raw_base)["probs"]
        gate_rows = (base["split"] == "train").to_numpy()
        reference = saved_reference()
        started = time.monotonic()
        ref = reference_features(reference, files, predictor.info.preprocess)
        ref_per_photo = (time.monotonic() - started) / len(files)
        print(f"ImageNet features: {ref_per_photo * 1000:.0f} ms per photo")
        if args.evaluation != "test-listings":
            folds = listing_folds(x, ref, truth, photos["group"].to_numpy(), base_probs,
                                  fit_gate(x, x_base_all[gate_rows]), args.seeds, args.folds)
            print_listing_folds(folds, np.mean(base_probs.argmax(1) == truth), args.folds)
            if args.evaluation == "listing-folds":
                return
        held = (photos["split"] == "test").to_numpy()
        pool = np.flatnonzero(~held)
        started = time.monotonic()
        gate = fit_gate(x[pool], x_base_all[gate_rows])
        gate_seconds = time.monotonic() - started
        test_rows = (base["split"] == "test").to_numpy()
        tests = {name: (base["source"][test_rows] == source).to_numpy()
                 for name, source in (("House Rooms", "house-rooms"), ("Places365", "places365-rooms"))}
        base_class = np.array([CLASSES.index(c) for c in base["class"][test_rows]])
        model = Checkpoint.load(args.weights).build_model()
        started = time.monotonic()
        inputs, mirrored = stage_inputs(model, files, predictor.info.preprocess)
        per_photo = (time.monotonic() - started) / len(files)  # what fine-tuning pays per corrected photo
        held_inputs = inputs[np.flatnonzero(held)]
        base_inputs, _ = stage_inputs(model, [f for f, t in zip(base_files, test_rows) if t],
                                      predictor.info.preprocess, mirror=False)
        print(f"last-stage inputs: {per_photo * 1000:.0f} ms per photo (and its mirror image)")
        ref_b = reference_features(reference, [f for f, t in zip(base_files, test_rows) if t],
                                   predictor.info.preprocess)

        def accuracy(probs, y, rows=None):
            rows = np.ones(len(y), bool) if rows is None else rows
            return float(np.mean(probs[rows].argmax(1) == y[rows]))
        y_held = truth[held]
        before = accuracy(base_probs[held], y_held)
        per_class_before = {c: accuracy(base_probs[held], y_held, y_held == k) for k, c in enumerate(CLASSES)
                            if (y_held == k).any()}
        print(f"held-out listings: {held.sum()} photos of {photos['group'][held].nunique()} listings; default "
              f"model {before:.3f} ({', '.join(f'{c} {a:.2f}' for c, a in per_class_before.items())})")
        default_base = {name: accuracy(base_probs_b[test_rows], base_class, r) for name, r in tests.items()}
        rows, orders = [], {}
        for strategy in ("queue", "random"):
            for seed in range(args.seeds):
                order = orders[strategy, seed] = sequence(strategy, seed, x, truth, pool, base_probs, max(BUDGETS))
                for n in BUDGETS:
                    asked = order[:n]
                    started = time.monotonic()
                    head = fit_market_head("bench", x[asked], truth[asked], gate)
                    head_seconds = time.monotonic() - started + gate_seconds
                    started = time.monotonic()
                    with_reference = fit_market_head("bench", x[asked], truth[asked], gate, reference=ref[asked])
                    reference_seconds = time.monotonic() - started + gate_seconds + n * ref_per_photo
                    started = time.monotonic()
                    stage = fine_tune_stage(model, inputs[asked], mirrored[asked],
                                            np.searchsorted(head.classes, truth[asked]), head.classes, seed=seed)
                    stage_seconds = time.monotonic() - started + head_seconds + n * per_photo
                    fine_tuned = replace(head, stage=True)
                    for method, version, seconds, logits, logits_b in (
                            ("head", head, head_seconds, None, None),
                            ("head, ImageNet features", with_reference, reference_seconds, None, None),
                            ("fine-tuned stage", fine_tuned, stage_seconds, stage_logits(stage, held_inputs),
                             stage_logits(stage, base_inputs))):
                        probs = version.blend(x[held], base_probs[held], stage_logits=logits, reference=ref[held])
                        probs_b = version.blend(x_base_all[test_rows], base_probs_b[test_rows], stage_logits=logits_b,
                                                reference=ref_b)
                        rows.append({"method": method, "strategy": strategy, "seed": seed, "corrections": n,
                                     "held-out": accuracy(probs, y_held),
                                     **{c: accuracy(probs, y_held, y_held == k) for k, c in enumerate(CLASSES)
                                        if (y_held == k).any()},
                                     **{name: accuracy(probs_b, base_class, r) for name, r in tests.items()},
                                     "adapt s": seconds})
        table = (pd.DataFrame(rows).groupby(["method", "strategy", "corrections"]).mean(numeric_only=True)
                 .drop(columns="seed"))
        pd.set_option("display.width", 180)
        print(f"\nmeans over {args.seeds} seeds; default model: held-out {before:.3f}, "
              + ", ".join(f"{k} test {v:.3f}" for k, v in default_base.items()))
        print(table.round(3).to_string())
        print(f"corrections to reach {TARGET} on the held-out listings: {corrections_to_reach(table['held-out'])}")

        store = LabelStore(collection.room_relabels, ROOM)  # the product's job on the queue's first corrections
        for i in [*orders["queue", 0][:JOB_CORRECTIONS], *np.flatnonzero(held)]:  # test listings: measured only
            store.append(photos["path"].iloc[i], CLASSES[truth[i]], sha256=photos["sha256"].iloc[i],
                         annotator="simulated")
        for flag, options in (("--imagenet-features", {"imagenet_features": True}),
                              ("--fine-tune", {"fine_tune": True})):
            result = adapt_to_collection("bench-market", args.weights, **options)
            print(f"\nadapt job (retrain-heads --collection {flag}, {result['corrections_used']} corrections, photos "
                  f"already scored): {result['seconds']:.0f} s; held-out {result['held_out_accuracy_before']:.3f} -> "
                  f"{result['held_out_accuracy_after']:.3f}; House Rooms test "
                  f"{result['house_rooms_test_accuracy_default']:.3f} -> "
                  f"{result['house_rooms_test_accuracy_version']:.3f}; Places365 test "
                  f"{result['places365_test_accuracy_default']:.3f} -> {result['places365_test_accuracy_version']:.3f}")


if __name__ == "__main__":
    main()
