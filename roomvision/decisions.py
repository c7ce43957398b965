"""Every decision roomvision makes, each defined once as a pure vectorised function of probabilities and thresholds
(arrays in, arrays out; one photo is the one-element case).

The model produces probabilities; calibration (what training measured) supplies the default thresholds; the user
may move them. The CLI, the API, the app, every CSV and Parquet file, retraining and the benchmarks call these
functions and nothing else, and `decide_frame` gives every surface the same decision columns.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .config import (DEFAULT_IN_SCOPE_THRESHOLD, DEFAULT_QUALITY_THRESHOLD, LISTING_READY_MIN_AESTHETIC,
                     MIN_ROOM_CONFIDENCE)

UNCERTAIN = "uncertain"
OUT_OF_SCOPE = "not one of the five rooms"


@dataclass(frozen=True)
class Calibration:
    """What training measured on validation: softmax temperature, the calibrated P(GOOD) threshold and the
    in-scope threshold."""
    temperature: float = 1.0
    quality: float = DEFAULT_QUALITY_THRESHOLD
    in_scope: float = DEFAULT_IN_SCOPE_THRESHOLD


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds a user can move; `for_model` gives the calibrated defaults."""
    quality: float = DEFAULT_QUALITY_THRESHOLD
    min_room_confidence: float = MIN_ROOM_CONFIDENCE
    listing_ready_min_aesthetic: float = LISTING_READY_MIN_AESTHETIC
    min_in_scope: float = DEFAULT_IN_SCOPE_THRESHOLD

    @classmethod
    def for_model(cls, calibration: Calibration) -> "Thresholds":
        return cls(quality=calibration.quality, min_in_scope=calibration.in_scope)

    def with_values(self, **values: float | None) -> "Thresholds":
        """A copy with the given thresholds replaced (None keeps the current value)."""
        return replace(self, **{k: float(v) for k, v in values.items() if v is not None})


def is_good(p_good, threshold: float) -> np.ndarray:
    """GOOD where P(GOOD) is at or above the threshold (NaN is never GOOD). Arrays in, a bool array out."""
    return np.asarray(p_good, dtype=float) >= threshold


def quality_decision(p_good, threshold: float) -> np.ndarray:
    """'GOOD' where P(GOOD) is at or above the threshold, else 'BAD'."""
    return np.where(is_good(p_good, threshold), "GOOD", "BAD")


def rule_fires(value, side: str, threshold: float):
    """A proxy quality rule (quality.RULES) fires: the metric is 'below' (or 'above') its threshold."""
    return value < threshold if side == "below" else value > threshold


def out_of_scope(in_scope_prob, min_in_scope: float) -> np.ndarray:
    """Not one of the five rooms: P(in scope) below the threshold (NaN: a model without the signal never says so)."""
    p = np.asarray(in_scope_prob, dtype=float)
    return ~np.isnan(p) & (p < min_in_scope)


def room_decision(probs, classes, min_confidence: float, in_scope_prob=None,
                  min_in_scope: float = DEFAULT_IN_SCOPE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `probs` (n × classes): the most probable room and its probability; 'not one of the five rooms'
    when out of scope, 'uncertain' when the probability is below `min_confidence`."""
    probs = np.atleast_2d(np.asarray(probs, dtype=float))
    confidence = probs.max(axis=1)
    room = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    room = np.where(confidence >= min_confidence, room, UNCERTAIN)
    scope = np.full(len(probs), np.nan) if in_scope_prob is None else in_scope_prob
    return np.where(out_of_scope(scope, min_in_scope), OUT_OF_SCOPE, room).astype(object), confidence


def distinct_digits(value: float, threshold: float, least: int = 1, most: int = 6) -> tuple[str, str]:
    """Both numbers with the fewest decimals (at least `least`) that tell them apart, so that a printed comparison
    never reads '5.5 < 5.5'."""
    for digits in range(least, most + 1):
        shown = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1]:
            return shown
    return shown


def listing_ready(quality, room, aesthetic_score, min_aesthetic: float) -> tuple[np.ndarray, np.ndarray]:
    """Ready for a listing where GOOD, the room is known and the aesthetic score is high enough; else why not."""
    quality, room = np.atleast_1d(np.asarray(quality, dtype=object)), np.atleast_1d(np.asarray(room, dtype=object))
    aesthetic = np.atleast_1d(np.asarray(aesthetic_score, dtype=float))
    low = aesthetic < min_aesthetic
    reasons = np.empty(len(quality), dtype=object)
    for i in range(len(quality)):
        why = ([OUT_OF_SCOPE] if room[i] == OUT_OF_SCOPE else []) + (["quality BAD"] if quality[i] != "GOOD" else []) \
            + (["room uncertain"] if room[i] == UNCERTAIN else []) \
            + (["aesthetic {} < {}".format(*distinct_digits(aesthetic[i], min_aesthetic))] if low[i] else [])
        reasons[i] = "; ".join(why)
    return reasons == "", reasons


DECISION_COLUMNS = ("room_decision", "room_confidence", "out_of_scope", "quality_decision", "listing_ready",
                    "listing_reason")


def decide_frame(frame: pd.DataFrame, thresholds: Thresholds, classes: list[str]) -> pd.DataFrame:
    """Every decision for prediction rows (columns prob_<class>, in_scope_prob, quality_prob_good,
    aesthetic_score, error) at `thresholds`: the DECISION_COLUMNS, one row per input row. Rows with an error get
    no decision."""
    frame = frame.reindex(columns=[*[f"prob_{c}" for c in classes], "in_scope_prob", "quality_prob_good",
                                   "aesthetic_score", "error"])
    errors = frame["error"].fillna("").astype(bool).to_numpy()
    room, confidence = room_decision(np.nan_to_num(frame[[f"prob_{c}" for c in classes]].to_numpy(float), nan=0.0),
                                     classes, thresholds.min_room_confidence, frame["in_scope_prob"].to_numpy(float),
                                     thresholds.min_in_scope)
    quality = quality_decision(frame["quality_prob_good"], thresholds.quality)
    ready, reason = listing_ready(quality, room, frame["aesthetic_score"], thresholds.listing_ready_min_aesthetic)
    out = pd.DataFrame({"room_decision": room, "room_confidence": confidence,
                        "out_of_scope": room == OUT_OF_SCOPE, "quality_decision": quality,
                        "listing_ready": ready, "listing_reason": reason}, index=frame.index)
    out = out.astype({"room_decision": object, "quality_decision": object, "listing_reason": object,
                      "room_confidence": object, "out_of_scope": object})
    out.loc[errors, :] = ["", None, None, "", False, ""]
    return out


def decide(row: dict, thresholds: Thresholds, classes: list[str]) -> dict:
    """Every decision for one prediction row: the one-row case of `decide_frame`."""
    return decide_frame(pd.DataFrame([row]), thresholds, classes).iloc[0].to_dict()
