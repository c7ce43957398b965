"""Is the photo one of the five rooms? The out-of-scope signal, calculated from the model's pooled features.

Two signals, multiplied into `in_scope_prob`:
- learned: logistic regression separating the training rooms from photos known to be none of them (entrance halls
  and corridors), with equal class weight;
- training-free: cosine similarity to the nearest of a few hundred prototypes (k-means centres) of the training
  rooms' features, turned into a gate that stays near 1 for photos as typical as the validation rooms and falls
  towards 0 beyond them. The gate is what catches kinds of photo nobody trained on (exteriors, floor plans,
  documents, close-ups): they sit far from every room prototype.
Stored in the checkpoint as plain numbers and bytes, readable without PyTorch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression

PROTOTYPES = 256          # k-means centres of the training rooms' normalised features
GATE_QUANTILE = 0.01      # the gate is 0.5 at this quantile of the validation rooms' similarity...
GATE_SOFTNESS = 8         # ...and its width is (median - that quantile) / GATE_SOFTNESS
MAX_FLAGGED_ROOMS = 0.05  # the default threshold flags at most this share of validation room photos
LEARNED_C = 0.01          # inverse regularisation of the learned signal (features standardised)
SPLIT_FRACTIONS = (0.70, 0.85)  # out-of-scope photos by sha256: train below 0.70, val below 0.85, then test


def _pack(array: np.ndarray) -> dict:
    array = np.asarray(array, np.float16)
    return {"shape": list(array.shape), "float16": array.tobytes()}


def _unpack(packed: dict) -> np.ndarray:
    return np.frombuffer(packed["float16"], np.float16).reshape(packed["shape"]).astype(np.float32)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_cosine(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each feature vector to the nearest of the (normalised) prototypes."""
    return (_normalised(features) @ prototypes.T).max(axis=1)


def out_of_scope_split(sha256: str) -> str:
    """The split of an out-of-scope photo, fixed by its content hash."""
    u = int(sha256[:8], 16) / 0x100000000
    return "train" if u < SPLIT_FRACTIONS[0] else "val" if u < SPLIT_FRACTIONS[1] else "test"


@dataclass
class ScopeHead:
    """P(one of the five rooms) from pooled backbone features."""
    mean: dict
    scale: dict
    weight: dict
    bias: float
    prototypes: dict
    gate_centre: float
    gate_width: float

    @classmethod
    def from_dict(cls, d: dict) -> "ScopeHead":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def learned_prob(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float32) - _unpack(self.mean)) / _unpack(self.scale)
        return expit(z @ _unpack(self.weight) + self.bias)

    def similarity(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity to the nearest training-room prototype."""
        return nearest_cosine(features, _unpack(self.prototypes))

    def gate(self, features: np.ndarray) -> np.ndarray:
        return expit((self.similarity(features) - self.gate_centre) / self.gate_width)

    def in_scope_prob(self, features: np.ndarray) -> np.ndarray:
        """Probability (equal prior) that each photo shows one of the five rooms."""
        return self.learned_prob(features) * self.gate(features)


def fit_scope_head(rooms: np.ndarray, others: np.ndarray, val_rooms: np.ndarray,
                   seed: int = 0) -> tuple[ScopeHead, float]:
    """Fit on training room features and known non-room features. The gate and the default threshold come from
    the validation rooms: the threshold (returned with the head) flags MAX_FLAGGED_ROOMS of them."""
    rooms, others = np.asarray(rooms, np.float32), np.asarray(others, np.float32)
    mean, scale = rooms.mean(0), rooms.std(0) + 1e-6
    x = (np.r_[rooms, others] - mean) / scale
    y = np.r_[np.ones(len(rooms)), np.zeros(len(others))]
    learned = LogisticRegression(C=LEARNED_C, class_weight="balanced", max_iter=3000).fit(x, y)
    kmeans = MiniBatchKMeans(min(PROTOTYPES, len(rooms)), random_state=seed, n_init=3).fit(_normalised(rooms))
    prototypes = _pack(_normalised(kmeans.cluster_centers_))
    low, median = np.quantile(nearest_cosine(val_rooms, _unpack(prototypes)), [GATE_QUANTILE, 0.5])
    head = ScopeHead(mean=_pack(mean), scale=_pack(scale), weight=_pack(learned.coef_[0]),
                     bias=float(learned.intercept_[0]), prototypes=prototypes, gate_centre=float(low),
                     gate_width=float(max(median - low, 1e-4) / GATE_SOFTNESS))
    return head, float(np.quantile(head.in_scope_prob(val_rooms), MAX_FLAGGED_ROOMS))
