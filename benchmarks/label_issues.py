"""Does `label-issues` find wrong room labels? Flip a known share of labels in a copy of the manifest and count how
many of the flipped photos land among the most suspect.

Two kinds of mistake: uniform (any other class) and confusable (what people mix up: Bedroom <-> Livingroom,
Dining <-> Livingroom, Kitchen <-> Dining, Bathroom -> Bedroom). Baselines: what a user would otherwise do, sort by
the served model's own probability of the given label (the Mistakes page's view, extended to every split), and the
same linear classifier fitted in-sample on the noisy labels (what a model trained on them sees). Recall is reported
per split: the backbone was fine-tuned on the train split's original labels, which flatters the served model on
that split (a model trained on noisy labels would have learned them), so val and test are the fair figures.

    python benchmarks/label_issues.py [--share 0.05] [--top 0.10] [--seeds 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roomvision.config import CLASSES, settings  # noqa: E402
from roomvision.data import load_manifest  # noqa: E402
from roomvision.features import build_feature_cache, load_feature_cache  # noqa: E402
from roomvision.inference import Predictor, room_probabilities  # noqa: E402
from roomvision.learning.label_issues import find_room_label_issues, in_sample_probabilities  # noqa: E402

CONFUSABLE = {"Bedroom": "Livingroom", "Livingroom": "Dining", "Dining": "Kitchen", "Kitchen": "Dining",
              "Bathroom": "Bedroom"}


def flip(df: pd.DataFrame, share: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Flip `share` of the labels in place; returns the flipped rows' mask."""
    flipped = rng.random(len(df)) < share
    if kind == "uniform":
        new = [rng.choice([c for c in CLASSES if c != old]) for old in df.loc[flipped, "class"]]
    else:
        new = [CONFUSABLE[old] for old in df.loc[flipped, "class"]]
    df.loc[flipped, "class"] = new
    return flipped


def recall_at(ranked_sha: list[str], flipped_sha: set[str], top: float, n: int) -> float:
    head = set(ranked_sha[:int(top * n)])
    return len(head & flipped_sha) / max(1, len(flipped_sha))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--top", type=float, default=0.10)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    manifest = settings().manifest
    predictor = Predictor(device="cpu")
    cache = build_feature_cache(predictor, manifest)
    served = load_feature_cache(cache)
    original = load_manifest(manifest).reset_index(drop=True)
    probs = room_probabilities(np.nan_to_num(served["room"]), predictor.calibration.temperature)
    print(f"{len(original)} photos, {a.share:.0%} of labels flipped, recall of the flipped ones within the most "
          f"suspect {a.top:.0%} (per split: within each split's own top {a.top:.0%}); mean over {a.seeds} seeds\n")
    print("| mistakes | method | recall all | train | val | test | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("uniform", "confusable"):
            results = {"label-issues (cleanlab, out-of-sample)": [], "served model's P(given label)": [],
                       "in-sample classifier's P(given label)": []}
            for seed in range(a.seeds):
                df = original.copy()
                flipped = flip(df, a.share, kind, np.random.default_rng(100 + seed))
                copy = Path(tmp) / f"manifest-{kind}-{seed}.csv"
                df.to_csv(copy, index=False)
                started = time.monotonic()
                issues = find_room_label_issues(copy, cache, predictor, "all", None, seed=seed)
                seconds = time.monotonic() - started
                baseline_score = 1 - probs[np.arange(len(df)), df["class"].map(CLASSES.index).to_numpy()]
                baseline = df.assign(score=baseline_score).sort_values("score", ascending=False)
                labels = df["class"].map(CLASSES.index).to_numpy()
                fitted = in_sample_probabilities(np.nan_to_num(served["features"].astype(np.float32)), labels, seed)
                in_sample = df.assign(score=1 - fitted[np.arange(len(df)), labels]).sort_values("score",
                                                                                                 ascending=False)
                for name, ranked, secs in (("label-issues (cleanlab, out-of-sample)", issues, seconds),
                                           ("served model's P(given label)", baseline, 0.0),
                                           ("in-sample classifier's P(given label)", in_sample, 0.0)):
                    row = []
                    for split in ("all", "train", "val", "test"):
                        part = ranked if split == "all" else ranked[ranked["split"] == split]
                        members = df if split == "all" else df[df["split"] == split]
                        flipped_sha = set(df.loc[flipped & df.index.isin(members.index), "sha256"])
                        row.append(recall_at(list(part["sha256"]), flipped_sha, a.top, len(members)))
                    results[name].append(row + [secs])
            for name, rows in results.items():
                m = np.mean(rows, axis=0)
                secs = f"{m[4]:.1f}" if m[4] else "—"
                print(f"| {kind} | {name} | **{m[0]:.3f}** | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | {secs} |")
    print(f"\ntarget: >= 0.80 of {a.share:.0%} flipped labels within the top {a.top:.0%}")


if __name__ == "__main__":
    main()
