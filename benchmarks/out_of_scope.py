"""Does the model know when a photo is none of the five rooms? Measured on kinds of photo it never trained on.

In-scope: the test-split room photos of the manifest. Out of scope: the test split of the entrance halls and
corridors (the one kind the learned signal trains on) and kinds nobody trained on (tests/unseen_kinds.py: photos
installed with scikit-image and scikit-learn, whole and as random crops, and synthesised floor plans, documents,
charts and blank frames). Every photo goes through the same decode path as an upload.

Rows compare what a user would otherwise pick (the top room probability, i.e. the app's "uncertain" line; the
energy score of the room logits) with the training-free gate alone, the learned signal alone and the combination
the model serves. "flagged" is the share called out of scope at the model's calibrated threshold (for the
baselines: at the value that flags the same share of in-scope test photos).

    python benchmarks/out_of_scope.py [--weights W] [--per-kind 40]
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from roomvision.config import settings  # noqa: E402
from roomvision.data import load_manifest, load_out_of_scope, manifest_roots, resolve_paths  # noqa: E402
from roomvision.decisions import out_of_scope  # noqa: E402
from roomvision.photocache import run_files  # noqa: E402
from roomvision.inference import Predictor, room_probabilities  # noqa: E402
from unseen_kinds import unseen_kinds, whole_package_photos  # noqa: E402


def outputs_of_images(predictor: Predictor, images) -> dict:
    """Raw outputs of PIL images sent through the upload decode path (JPEG bytes)."""
    blobs = []
    for img in images:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    decoded = [predictor.decode(b) for b in blobs]
    return predictor.run(predictor.transform.batch(decoded), ("features", "room"))


def scores(predictor: Predictor, raw: dict) -> dict[str, np.ndarray]:
    """Higher = more in scope, for each method."""
    head, feats = predictor.scope, raw["features"].astype(np.float32)
    return {"top room probability": room_probabilities(raw["room"], predictor.calibration.temperature).max(1),
            "energy of room logits": logsumexp(raw["room"], axis=1),
            "training-free gate": head.gate(feats), "learned signal": head.learned_prob(feats),
            "served: in_scope_prob": head.in_scope_prob(feats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--per-kind", type=int, default=40)
    a = ap.parse_args()
    predictor = Predictor(a.weights, device="cpu")
    if predictor.scope is None:
        sys.exit(f"{predictor.weights} has no out-of-scope head: run `python -m roomvision fit-scope` first")
    manifest = settings().manifest
    df = load_manifest(manifest)
    test = df[df["split"] == "test"]
    rooms = run_files(predictor, resolve_paths(test, manifest_roots(manifest)))
    others = load_out_of_scope(settings().out_of_scope_root)
    halls = run_files(predictor, list(others.loc[others["split"] == "test", "path"]))
    kinds = {"entrance halls (trained on; test split)": halls}
    for kind, images in {**whole_package_photos(), **unseen_kinds(a.per_kind, seed=1)}.items():
        kinds[kind] = outputs_of_images(predictor, images)
    ok = ~np.isnan(rooms["room"][:, 0])
    room_scores = scores(predictor, {k: v[ok] for k, v in rooms.items()})
    kind_scores = {k: scores(predictor, v) for k, v in kinds.items()}
    threshold = predictor.thresholds.min_in_scope
    flagged_rooms = float(np.mean(out_of_scope(room_scores["served: in_scope_prob"], threshold)))
    print(f"model {predictor.version}: threshold {threshold:.3f} flags {flagged_rooms:.1%} of {ok.sum()} in-scope "
          "test photos (baselines: thresholds flagging the same share)\n")
    methods = list(room_scores)
    print("| kind | n | " + " | ".join(f"AUROC {m}" for m in methods) + " | flagged (served) | flagged (top prob) |")
    print("|" + " --- |" * (len(methods) + 4))
    pooled = {m: [] for m in methods}
    for kind, s in kind_scores.items():
        unseen = not kind.startswith("entrance")
        aucs = []
        for m in methods:
            y = np.r_[np.ones(len(room_scores[m])), np.zeros(len(s[m]))]
            aucs.append(roc_auc_score(y, np.r_[room_scores[m], s[m]]))
            if unseen:
                pooled[m].append(s[m])
        base_cut = np.quantile(room_scores["top room probability"], flagged_rooms)
        print(f"| {kind} | {len(s[methods[0]])} | " + " | ".join(f"{v:.3f}" for v in aucs)
              + f" | {np.mean(out_of_scope(s['served: in_scope_prob'], threshold)):.0%}"
              + f" | {np.mean(s['top room probability'] < base_cut):.0%} |")
    all_unseen = {m: np.concatenate(v) for m, v in pooled.items()}
    aucs = [roc_auc_score(np.r_[np.ones(len(room_scores[m])), np.zeros(len(all_unseen[m]))],
                          np.r_[room_scores[m], all_unseen[m]]) for m in methods]
    base_cut = np.quantile(room_scores["top room probability"], flagged_rooms)
    print(f"| **all unseen kinds** | {len(all_unseen[methods[0]])} | " + " | ".join(f"**{v:.3f}**" for v in aucs)
          + f" | **{np.mean(out_of_scope(all_unseen['served: in_scope_prob'], threshold)):.0%}**"
          + f" | {np.mean(all_unseen['top room probability'] < base_cut):.0%} |")
    print("\ntargets: AUROC >= 0.95 on unseen kinds; >= 80% of them flagged while <= 5% of in-scope test photos are")


if __name__ == "__main__":
    main()
