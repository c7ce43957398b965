"""Every decision roomvision makes, each defined once as a pure function of probabilities and thresholds.

The model produces probabilities; calibration (what training measured) supplies the default thresholds; the user
may move them. The CLI, the API, the app and every CSV call these functions and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import math

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


def quality_decision(p_good: float, threshold: float) -> str:
    """GOOD when P(GOOD) is at or above the threshold, else BAD."""
    return "GOOD" if p_good >= threshold else "BAD"


def out_of_scope(in_scope_prob: float | None, min_in_scope: float) -> bool:
    """Not one of the five rooms: P(in scope) below the threshold (a model without the signal never says so)."""
    return in_scope_prob is not None and not math.isnan(in_scope_prob) and in_scope_prob < min_in_scope


def room_decision(probs: dict[str, float], min_confidence: float, in_scope_prob: float | None = None,
                  min_in_scope: float = DEFAULT_IN_SCOPE_THRESHOLD) -> tuple[str, float]:
    """The most probable room and its probability; 'not one of the five rooms' when out of scope, 'uncertain'
    when the probability is below `min_confidence`."""
    room = max(probs, key=probs.get)
    confidence = probs[room]
    if out_of_scope(in_scope_prob, min_in_scope):
        return OUT_OF_SCOPE, confidence
    return (room if confidence >= min_confidence else UNCERTAIN), confidence


def distinct_digits(value: float, threshold: float, least: int = 1, most: int = 6) -> tuple[str, str]:
    """Both numbers with the fewest decimals (at least `least`) that tell them apart, so that a printed comparison
    never reads '5.5 < 5.5'."""
    for digits in range(least, most + 1):
        shown = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1]:
            return shown
    return shown


def listing_ready(quality: str, room: str, aesthetic_score: float, min_aesthetic: float) -> tuple[bool, str]:
    """Ready for a listing when GOOD, the room is known and the aesthetic score is high enough; else why not."""
    reasons = []
    if room == OUT_OF_SCOPE:
        reasons.append(OUT_OF_SCOPE)
    if quality != "GOOD":
        reasons.append("quality BAD")
    if room == UNCERTAIN:
        reasons.append("room uncertain")
    if aesthetic_score < min_aesthetic:
        reasons.append("aesthetic {} < {}".format(*distinct_digits(aesthetic_score, min_aesthetic)))
    return not reasons, "; ".join(reasons)


def decide(row: dict, thresholds: Thresholds, classes: list[str]) -> dict:
    """Every decision for one prediction row (prob_<class>, quality_prob_good, aesthetic_score) at `thresholds`."""
    if row.get("error"):
        return {"room_decision": "", "room_confidence": None, "out_of_scope": None, "quality_decision": "",
                "listing_ready": False, "listing_reason": ""}
    room, confidence = room_decision({c: row[f"prob_{c}"] for c in classes}, thresholds.min_room_confidence,
                                     row.get("in_scope_prob"), thresholds.min_in_scope)
    quality = quality_decision(row["quality_prob_good"], thresholds.quality)
    ready, reason = listing_ready(quality, room, row["aesthetic_score"], thresholds.listing_ready_min_aesthetic)
    return {"room_decision": room, "room_confidence": confidence, "out_of_scope": room == OUT_OF_SCOPE,
            "quality_decision": quality,
            "listing_ready": ready, "listing_reason": reason}
