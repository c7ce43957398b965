"""Which room labels are probably wrong: confident learning on out-of-sample probabilities.

Every photo gets probabilities from a model that never learned its label: for photos of the model's training split,
a linear classifier (standardise -> PCA -> logistic regression) fitted K times on the cached pooled features, each
time without the photo's fold; for the other splits, the served model's own calibrated probabilities (it never
trained on them, and it is the stronger classifier). cleanlab ranks the photos by self-confidence (the probability
of the given label: low = suspect) and flags the ones confident learning counts as issues. Seconds once the feature
cache exists.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..config import CLASSES, settings
from ..data import load_manifest
from ..features import load_feature_cache
from ..inference import Predictor, room_probabilities
from ..photocache import OUTPUTS
from .stores import room_corrections

FOLDS = 5
COMPONENTS = 128
C = 0.1
SPLITS = ("train", "val", "test", "all")


def _classifier(features: np.ndarray, seed: int):
    fitted_rows = len(features) * (FOLDS - 1) // FOLDS
    return make_pipeline(StandardScaler(), PCA(min(COMPONENTS, features.shape[1], fitted_rows - 1), random_state=seed),
                         LogisticRegression(C=C, max_iter=500))


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, seed: int = 0,
                              on_progress=None) -> np.ndarray:
    """Class probabilities of each row from a classifier fitted without that row's fold; `on_progress(done, total,
    message)` after each fold."""
    counts = np.bincount(labels, minlength=len(CLASSES))
    if counts.min() < FOLDS:
        raise ValueError(f"finding label issues needs at least {FOLDS} photos of each class "
                         f"({', '.join(f'{c} {n}' for c, n in zip(CLASSES, counts))})")
    probabilities = np.zeros((len(labels), len(CLASSES)))
    for k, (fit, held) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(features, labels)):
        probabilities[held] = _classifier(features, seed).fit(features[fit], labels[fit]).predict_proba(features[held])
        if on_progress is not None:
            on_progress(k + 1, FOLDS, f"fitting classifier {k + 1} of {FOLDS} on the cached features")
    return probabilities


def in_sample_probabilities(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same classifier fitted on every row, labels included: what a model trained on them believes."""
    return _classifier(features, seed).fit(features, labels).predict_proba(features)


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, issue): score = 1 - self-confidence (higher = more suspect); issue = confident learning's verdict."""
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    issue = find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    return 1.0 - quality, issue


def find_room_label_issues(manifest: Path, cache: Path, predictor, split: str = "all",
                           room_relabels: Path | None = None, seed: int = 0, on_progress=None) -> pd.DataFrame:
    """Manifest photos of `split`, most suspect room label first, with the suggested class and its probabilities.

    `predictor` is the served model (its room head and calibration give the probabilities of photos outside the
    training split). The K-fold classifier learns from every readable photo with its current label (people's
    corrections applied); photos people already marked ambiguous or not a room are left out, and photos they
    corrected are not listed. The ranking is kept on disk per feature cache, model version and corrections: asking
    again is instant.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    df = load_manifest(manifest).reset_index(drop=True)
    corrected = room_corrections(df, room_relabels)
    temperature = predictor.calibration.temperature
    key = hashlib.sha256("|".join([Path(cache).name, predictor.version, f"{temperature:.6f}", str(seed),
                                   corrected.fillna("").str.cat(sep=",")]).encode()).hexdigest()[:24]
    stored = settings().cache_dir / "label-issues" / f"{key}.parquet"
    if stored.is_file():
        out = pd.read_parquet(stored)
    else:
        data = load_feature_cache(cache, df)
        out = _rank(df, {**data, "room": predictor.room_logits(data)}, corrected, temperature, seed, on_progress)
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_name(f"{stored.stem}.{os.getpid()}.tmp")
        out.to_parquet(tmp, index=False)
        tmp.replace(stored)
    if split != "all":
        out = out[out["split"] == split]
    return out.reset_index(drop=True)


def _rank(df: pd.DataFrame, data: dict, corrected: pd.Series, temperature: float, seed: int,
          on_progress) -> pd.DataFrame:
    given = corrected.fillna(df["class"])
    use = ~np.isnan(data["features"][:, 0].astype(np.float32)) & given.isin(CLASSES).to_numpy()
    labels = given[use].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probabilities = out_of_fold_probabilities(data["features"][use].astype(np.float32), labels, seed,
                                              on_progress).astype(float)
    unseen = (df.loc[use, "split"] != "train").to_numpy()
    probabilities[unseen] = room_probabilities(data["room"][use][unseen], temperature)
    score, issue = rank_label_issues(labels, probabilities)
    out = df.loc[use, ["source", "path", "split"]].assign(
        given=given[use].to_numpy(), suggested=np.asarray(CLASSES)[probabilities.argmax(1)], score=score,
        issue=issue, **{f"prob_{c}": probabilities[:, i] for i, c in enumerate(CLASSES)},
        sha256=df.loc[use, "sha256"].to_numpy())
    out = out[corrected[use].isna().to_numpy()]
    return out.sort_values("score", ascending=False).reset_index(drop=True).round(4)


def rooms_to_confirm(manifest: Path, cache: Path, predictor: Predictor, room_relabels: Path | None = None,
                     seed: int = 0) -> pd.DataFrame:
    """For photos without a room label (a team's own photos): the model's room as the starting point ('given' and
    'suggested', from the `predictor`'s probabilities of the cached outputs), in the room queue's order: least sure
    first, alternating with photos drawn at random, ranked by a head fitted on the corrections in `room_relabels`
    so far once they name two rooms (queue.room_ranking; 'score' is its unsureness). Photos people already
    corrected are not listed."""
    from .market import market_inputs
    from .queue import room_queue, room_ranking
    df = load_manifest(manifest).reset_index(drop=True)
    data = load_feature_cache(cache, df)
    corrections = room_corrections(df, room_relabels)
    readable = ~np.isnan(data["room"][:, 0])
    rows = np.flatnonzero(readable)
    probabilities = np.full((len(df), len(predictor.classes)), 1.0 / len(predictor.classes))
    probabilities[rows] = predictor.scores({k: data[k][rows].astype(np.float32) for k in OUTPUTS})["probs"]
    rooms = corrections.map({c: i for i, c in enumerate(CLASSES)})
    taught = np.flatnonzero(readable & rooms.notna().to_numpy())
    ranking = probabilities.copy()
    ranking[rows] = room_ranking(market_inputs(data)[rows], ranking[rows], np.searchsorted(rows, taught),
                                 rooms[taught].to_numpy(int))
    candidates = np.flatnonzero(readable & corrections.isna().to_numpy())
    order = room_queue(ranking, candidates, len(candidates), seed)
    top2 = np.sort(ranking, axis=1)[:, -2:]
    suggested = np.asarray(CLASSES)[probabilities.argmax(1)]
    known = df["class"].isin(CLASSES).to_numpy()
    out = df.loc[order, ["source", "path", "split"]].assign(
        given=np.where(known, df["class"], suggested)[order], suggested=suggested[order],
        score=(1 - (top2[:, 1] - top2[:, 0]))[order], issue=True,
        **{f"prob_{c}": probabilities[order, i] for i, c in enumerate(CLASSES)}, sha256=df.loc[order, "sha256"])
    return out.reset_index(drop=True).round(4)
