"""What to ask people next: every queue of the learning loop.

- `relabel_queue`: the Relabel page's order of photos for a GOOD/BAD decision (informative, random or by file);
- `next_to_label`: its active-learning priority, from a quality head fitted on the decisions so far;
- `active_queue`: that priority's rule (uncertain and spread out, alternating with photos drawn at random);
- `room_queue`: which photos' rooms to ask about (smallest margin between the two likeliest rooms, alternating with
  photos drawn at random), ranked by `room_ranking`: a market head fitted on the collection's corrections so far
  (refitted every RERANK_EVERY corrections), the served model until they name two rooms.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_manifest
from ..decisions import quality_decision
from ..features import cached_pool
from ..inference import room_probabilities
from .heads import fit_human_quality, human_targets
from .market import MIN_CORRECTIONS, corrected_room_probs


def relabel_queue(manifest: pd.DataFrame, p_good: pd.Series | None, threshold: float, decided: set[str],
                  order: str = "informative", include_labelled: bool = False, seed: int = 0,
                  priority: pd.Series | None = None) -> pd.DataFrame:
    """Manifest rows to label next.

    'informative': the active-learning `priority` (rank by sha256, from the human labels so far) first when given;
    then model and proxy disagree, then P(GOOD) nearest the threshold, then at random (so before the model has
    scored anything the queue is a random draw, never one folder after another); 'random'; 'file'.
    `p_good` is indexed by sha256 (missing photos sort last under 'informative').
    """
    q = manifest.copy()
    if not include_labelled:
        q = q[~(q["sha256"].isin(decided) | q["path"].isin(decided))]
    q["p_good"] = q["sha256"].map(p_good) if p_good is not None else np.nan
    if order == "random":
        return q.sample(frac=1, random_state=seed).reset_index(drop=True)
    if order == "file":
        return q.sort_values(["source", "path"]).reset_index(drop=True)
    if order != "informative":
        raise ValueError(f"unknown queue order {order!r}")
    model_label = np.where(q["p_good"].notna(), quality_decision(q["p_good"], threshold), "")
    q["disagree"] = q["p_good"].notna() & (model_label != q["quality_label"])
    q["margin"] = (q["p_good"] - threshold).abs().fillna(np.inf)
    q["priority"] = q["sha256"].map(priority).fillna(np.inf) if priority is not None else np.inf
    q["draw"] = np.random.default_rng(seed).permutation(len(q))  # photos the model cannot rank yet come at random
    return q.sort_values(["priority", "disagree", "margin", "draw"],
                         ascending=[True, False, True, True]).drop(columns="draw").reset_index(drop=True)


EXPLORE = 0.5               # share of each active-learning batch drawn at random


def active_queue(p_good: np.ndarray, threshold: float, features: np.ndarray, candidates: np.ndarray,
                 size: int, seed: int = 0) -> np.ndarray:
    """Indices (from `candidates`) to ask about next: the most uncertain under the human head, spread out,
    alternating with photos drawn at random (EXPLORE of the batch).

    The 5 x uncertain-share photos nearest the decision threshold are narrowed by farthest-point sampling in the
    standardised feature space, so one batch does not ask about ten near-identical photos; the random share keeps
    the labels representative, so a head fitted on them is not misled by asking only about borderline photos.
    """
    size = min(size, len(candidates))
    explore = int(size * EXPLORE)
    size -= explore
    margin = np.abs(np.log(np.clip(p_good[candidates], 1e-6, 1 - 1e-6)) -
                    np.log(np.clip(1 - p_good[candidates], 1e-6, 1))
                    - np.log(threshold / (1 - threshold)))
    shortlist = candidates[np.argsort(margin)[:5 * size]]
    x = features[shortlist]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    chosen = [0]
    dist = np.linalg.norm(x - x[0], axis=1)
    while len(chosen) < size:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    uncertain = shortlist[chosen]
    rest = np.setdiff1d(candidates, uncertain)
    drawn = np.random.default_rng(seed).choice(rest, min(explore, len(rest)), replace=False)
    order = np.empty(len(uncertain) + len(drawn), dtype=candidates.dtype)
    order[:2 * len(drawn):2], order[1:2 * len(drawn):2] = uncertain[:len(drawn)], drawn
    order[2 * len(drawn):] = uncertain[len(drawn):]
    return order


COLD_START = 50  # photos asked about first, before a head can be fitted on human labels


def next_to_label(cache: Path, manifest: Path, relabels: Path, size: int = 300) -> pd.Series | None:
    """Active learning for the Relabel queue: manifest photos ranked (0 first) by how unsure a head fitted on the
    human labels so far is about them, spread over the feature space, alternating with photos drawn at random; until
    the labels hold 3 GOOD and 3 BAD decisions, COLD_START photos drawn at random (measured: as good a start as
    k-means representatives, and far better than the proxy's doubts for a criterion the proxy does not share).
    None without a usable feature cache."""
    df = load_manifest(manifest).reset_index(drop=True)
    try:
        ok, features, pool, data = cached_pool(cache, df)
    except ValueError:
        return None  # a cache of another manifest: the page falls back to the proxy order
    decision, _ = human_targets(df, relabels)
    rooms = room_probabilities(data["room"][ok])  # the head below is fitted and read on these same inputs
    head = fit_human_quality(features, pool, decision[ok], rooms=rooms)
    open_ = np.flatnonzero(decision[ok] < 0)
    if head is None:
        order = np.random.default_rng(0).choice(open_, min(COLD_START, len(open_)), replace=False)
    else:
        order = active_queue(head.p_good(features, pool, rooms), head.threshold, features, open_,
                             min(size, len(open_)))
    return pd.Series(np.arange(len(order)), index=df["sha256"].to_numpy()[ok[order]])


RANDOM_SHARE = 0.5     # the room queue alternates uncertain photos with photos drawn at random
RERANK_EVERY = 25      # decisions between two rankings of a queue (the room queue, label issues, Relabel's order)


def room_ranking(x: np.ndarray, probs: np.ndarray, corrected: np.ndarray, rooms: np.ndarray) -> np.ndarray:
    """The room probabilities the room queue ranks by: a market head's, fitted on the photos corrected so far (rows
    `corrected` of `x`, market_inputs; `rooms` their room indices) once they are MIN_CORRECTIONS photos of two rooms
    or more; the served model's `probs` until then."""
    corrected, rooms = np.asarray(corrected, int), np.asarray(rooms, int)
    if len(rooms) < MIN_CORRECTIONS or len(set(rooms.tolist())) < 2:
        return probs
    return corrected_room_probs(x[corrected], rooms, x, probs.shape[1])


def room_queue(probs: np.ndarray, candidates: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Which candidate photos (indices) to ask about next: the ones the current model is least sure of (smallest
    margin between its two most probable rooms) alternating with photos drawn at random, `size` of them."""
    rng = np.random.default_rng(seed)
    candidates = np.asarray(candidates)
    top2 = np.sort(probs[candidates], axis=1)[:, -2:]
    sources = [iter(candidates[np.argsort(top2[:, 1] - top2[:, 0], kind="stable")]), iter(rng.permutation(candidates))]
    chosen: dict[int, None] = {}  # insertion-ordered set
    while len(chosen) < min(size, len(candidates)):
        first = int(rng.random() < RANDOM_SHARE)
        for source in (sources[first], sources[1 - first]):
            pick = next((int(k) for k in source if int(k) not in chosen), None)
            if pick is not None:
                chosen[pick] = None
                break
    return np.fromiter(chosen, dtype=int, count=len(chosen))
