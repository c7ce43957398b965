"""Does cleaning the training labels help? Drop, down-weight or relabel the training photos `label-issues` flags,
refit the room head on the cached features, and compare validation accuracy and macro-F1 (original labels).

A cheap stand-in for retraining the network: the backbone stays as trained (on the uncleaned labels); only the
linear room head is refitted, the same way for every variant (multinomial logistic regression on standardised
pooled features), so the differences come from the labels alone.

    python benchmarks/label_cleaning.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roomvision.config import CLASSES, settings  # noqa: E402
from roomvision.data import load_manifest  # noqa: E402
from roomvision.features import build_feature_cache, load_feature_cache  # noqa: E402
from roomvision.inference import Predictor  # noqa: E402
from roomvision.learning.label_issues import find_room_label_issues  # noqa: E402

DOWN_WEIGHT = 0.2


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help explains
    manifest = settings().manifest
    predictor = Predictor(device="cpu")
    cache = build_feature_cache(predictor, manifest)
    df = load_manifest(manifest).reset_index(drop=True)
    data = load_feature_cache(cache)
    issues = find_room_label_issues(manifest, cache, predictor, "train")
    flagged = issues[issues["issue"]].set_index("sha256")["suggested"]
    ok = ~np.isnan(data["features"][:, 0].astype(np.float32))
    features = data["features"].astype(np.float32)
    train, val = ok & (df["split"] == "train").to_numpy(), ok & (df["split"] == "val").to_numpy()
    given = df["class"].map(CLASSES.index).to_numpy()
    is_flagged = df["sha256"].isin(flagged.index).to_numpy()
    suggested = df["sha256"].map(flagged).map(lambda c: CLASSES.index(c) if isinstance(c, str) else -1).to_numpy()
    variants = {
        "labels as given": (train, given, np.ones(len(df))),
        f"drop the {int((train & is_flagged).sum())} flagged": (train & ~is_flagged, given, np.ones(len(df))),
        f"down-weight flagged to {DOWN_WEIGHT}": (train, given, np.where(is_flagged, DOWN_WEIGHT, 1.0)),
        "relabel flagged to the suggested class": (train, np.where(is_flagged, suggested, given), np.ones(len(df))),
    }
    print(f"{int(train.sum())} training photos, {int((train & is_flagged).sum())} flagged by label-issues; "
          f"validation: {int(val.sum())} photos (original labels)\n")
    print("| training labels | val accuracy | val macro-F1 | House Rooms val acc. | Places365 val acc. |")
    print("| --- | --- | --- | --- | --- |")
    house = (df["source"] == "house-rooms").to_numpy()
    for name, (rows, labels, weight) in variants.items():
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000))
        head.fit(features[rows], labels[rows], logisticregression__sample_weight=weight[rows])
        pred = head.predict(features[val])
        y = given[val]
        per_source = [accuracy_score(y[m], pred[m]) for m in (house[val], ~house[val])]
        print(f"| {name} | {accuracy_score(y, pred):.4f} | {f1_score(y, pred, average='macro'):.4f} | "
              f"{per_source[0]:.4f} | {per_source[1]:.4f} |")


if __name__ == "__main__":
    main()
