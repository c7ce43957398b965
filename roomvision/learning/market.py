"""Adapting the room decision to a team's market: a head learned from the team's corrections of its own photos,
used only where a photo looks like that market.

- market head: class-balanced logistic regression on what the serving graph already computes for every photo
  (pooled features and the photo-quality descriptor, standardised), fitted on the collection's corrected photos;
  it predicts only the rooms the team's corrections contain (a market without dining rooms never gets one);
- gate: logistic regression separating the collection's photos (all of them, labelled or not) from a sample of
  the training photos; P(market) blends the two: probs = g * market + (1 - g) * base. Photos unlike the market
  keep the default model's answer, so the version does not forget House Rooms or Places365.
- market stage (optional, `retrain-heads --collection NAME --fine-tune`): the backbone's last stage fine-tuned on
  the corrected photos (model.MarketStage, finetune.py), run beside the default one; where a version has it, its
  room probabilities are averaged with the market head's (measured better than either alone on the collection's
  validation listings, with 100 corrections by 1.3 points over the head and 2.7 over the stage).
- ImageNet features (optional, `retrain-heads --collection NAME --imagenet-features`): the head also reads the
  pooled features of EfficientNet-Lite2 (modelinfo.REFERENCE_BACKBONE; model.ThumbnailReference) as ImageNet left
  it and with its last stages tuned on the training photos rendered as grey thumbnails, run beside the served
  backbone on the same input. Fine-tuning on the training rooms narrows the served features; a market unlike those
  photos gains from general ones (listing folds over the market's non-test listings, 400 random corrections: served
  features 0.818, with Lite0's ImageNet features 0.822, with Lite2's 0.835, with Lite2's and the tuned stages'
  0.849). The gate reads the served inputs.
Stored in the checkpoint header as plain numbers (readable without PyTorch), like the out-of-scope head; a market
stage's weights are tensors of the version's checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression

from ..modelinfo import REFERENCE_BACKBONE
from .scope import _pack, _unpack

MARKET_C = 0.01   # inverse regularisation of the market head (inputs standardised); chosen on the collection's val
REFERENCE_C = 0.001  # and of a head that also reads the ImageNet features (twice the inputs; chosen the same way)
GATE_C = 1.0      # and of the gate (market and training photos differ plainly: a sharp gate)
MIN_CORRECTIONS = 10   # fewer corrected photos than this (or a single room): nothing to adapt to yet


def market_inputs(raw: dict) -> np.ndarray:
    """What the market head and the gate read: pooled features and the quality descriptor of each photo."""
    return np.hstack([np.asarray(raw["features"], np.float32), np.asarray(raw["quality_features"], np.float32)])


def _head_inputs(x: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """What the market head reads: `x` (market_inputs), then the ImageNet features where it reads them."""
    return x if reference is None else np.hstack([x, np.asarray(reference, np.float32)])


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), x.std(0) + 1e-6


@dataclass
class MarketHead:
    """Room probabilities for one market, blended with the base model's by P(market)."""
    name: str
    classes: list[int]      # indices into the model's classes that the head can predict
    mean: dict
    scale: dict
    weight: dict            # (len(classes), inputs)
    bias: list[float]
    gate_mean: dict
    gate_scale: dict
    gate_weight: dict
    gate_bias: float
    stage: bool = False      # a fine-tuned market stage gives the market's room probabilities (MARKET_OUTPUT)
    base_tensors: str = ""   # with a stage or ImageNet features: the digest of the tensors of the model it was
    #                          adapted from (the outputs they share are cached under it)
    reference: str = ""     # the ImageNet backbone whose pooled features the head also reads (REFERENCE_OUTPUT)

    @classmethod
    def from_dict(cls, d: dict) -> "MarketHead":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def market_share(self, x: np.ndarray) -> np.ndarray:
        """P(the photo is from this market)."""
        z = (x - _unpack(self.gate_mean)) / _unpack(self.gate_scale)
        return expit(z @ _unpack(self.gate_weight) + self.gate_bias)

    def market_probs(self, x: np.ndarray, n_classes: int, stage_logits: np.ndarray | None = None,
                     reference: np.ndarray | None = None) -> np.ndarray:
        """The market's own room probabilities (zero for rooms it never saw corrected): the market head's (on `x`,
        and the ImageNet features `reference` where the head reads them), averaged with the market stage's where
        the version has one."""
        if self.reference and reference is None:
            raise ValueError(f"the {self.name!r} version's room probabilities need the ImageNet features")
        x = _head_inputs(x, reference if self.reference else None)
        logits = (x - _unpack(self.mean)) / _unpack(self.scale) @ _unpack(self.weight).T + np.asarray(self.bias)
        market = softmax(logits, axis=1)
        if self.stage:
            if stage_logits is None:
                raise ValueError(f"the {self.name!r} version's room probabilities need its market stage's outputs")
            market = (market + softmax(stage_logits, axis=1)) / 2
        probs = np.zeros((len(x), n_classes))
        probs[:, self.classes] = market
        return probs

    def blend(self, x: np.ndarray, base_probs: np.ndarray, base_in_scope: np.ndarray | None = None,
              stage_logits: np.ndarray | None = None, reference: np.ndarray | None = None):
        """Room probabilities blended by P(market); with `base_in_scope`, also P(in scope): the market's photos
        count as rooms (its people corrected them as rooms), others keep the base model's signal."""
        g = self.market_share(x)
        probs = (g[:, None] * self.market_probs(x, base_probs.shape[1], stage_logits, reference)
                 + (1 - g[:, None]) * base_probs)
        if base_in_scope is None:
            return probs
        return probs, np.where(np.isnan(base_in_scope), np.nan, g + (1 - g) * base_in_scope)


def corrected_room_probs(x_corrected: np.ndarray, rooms: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    """The room probabilities of photos `x` of a collection by a market head fitted on its corrected photos (what the
    room queue ranks by; the photos are the market's own, so no gate is fitted or read)."""
    width = np.shape(x_corrected)[1]
    unread_gate = {"gate_mean": _pack(np.zeros(width)), "gate_scale": _pack(np.ones(width)),
                   "gate_weight": _pack(np.zeros(width)), "gate_bias": 0.0}
    return fit_market_head("corrections", x_corrected, rooms, unread_gate).market_probs(
        np.asarray(x, np.float32), n_classes)


def fit_gate(x_market: np.ndarray, x_base: np.ndarray) -> dict:
    """The gate's parameters: the market's photos (labelled or not) against the base training photos."""
    x_market, x_base = np.asarray(x_market, np.float32), np.asarray(x_base, np.float32)
    both = np.r_[x_market, x_base]
    mean, scale = _standardiser(both)
    gate = LogisticRegression(C=GATE_C, class_weight="balanced", max_iter=3000).fit(
        (both - mean) / scale, np.r_[np.ones(len(x_market)), np.zeros(len(x_base))])
    return {"gate_mean": _pack(mean), "gate_scale": _pack(scale), "gate_weight": _pack(gate.coef_[0]),
            "gate_bias": float(gate.intercept_[0])}


def fit_market_head(name: str, x_labelled: np.ndarray, y: np.ndarray, gate: dict, c: float | None = None,
                    reference: np.ndarray | None = None) -> MarketHead:
    """Fit the head on corrected photos (`y`: class indices), reading also their ImageNet features (of
    REFERENCE_BACKBONE) where `reference` gives them; `gate` from `fit_gate`; `c` by default MARKET_C, or
    REFERENCE_C with `reference`."""
    x_labelled = _head_inputs(np.asarray(x_labelled, np.float32), reference)
    c = c if c is not None else REFERENCE_C if reference is not None else MARKET_C
    classes = sorted(set(int(v) for v in y))
    if len(y) < MIN_CORRECTIONS or len(classes) < 2:
        raise ValueError(f"too few corrections to adapt to: {len(y)} photos in {len(classes)} room(s); correct at "
                         f"least {MIN_CORRECTIONS} photos of two rooms or more")
    mean, scale = _standardiser(x_labelled)
    head = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit((x_labelled - mean) / scale, y)
    weight = head.coef_ if len(classes) > 2 else np.vstack([-head.coef_[0] / 2, head.coef_[0] / 2])
    bias = head.intercept_ if len(classes) > 2 else np.array([-head.intercept_[0] / 2, head.intercept_[0] / 2])
    return MarketHead(name=name, classes=[int(k) for k in head.classes_], mean=_pack(mean), scale=_pack(scale),
                      weight=_pack(weight), bias=[float(b) for b in bias],
                      reference=REFERENCE_BACKBONE if reference is not None else "", **gate)
