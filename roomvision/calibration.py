"""Calibration on validation: softmax temperature, the P(GOOD) threshold, and how well probabilities are calibrated.

NumPy, SciPy and scikit-learn only (no PyTorch).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import f1_score

QUALITY_GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


def room_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true rooms under softmax(logits / temperature)."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising validation NLL (searched on log scale, 0.05-20)."""
    res = minimize_scalar(lambda log_t: room_nll(logits, labels, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def best_quality_threshold(p_good: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    """P(GOOD) threshold maximising macro-F1 of GOOD/BAD over QUALITY_GRID, and that F1."""
    scores = [f1_score(good, p_good >= t, average="macro", zero_division=0) for t in QUALITY_GRID]
    i = int(np.argmax(scores))
    return float(QUALITY_GRID[i]), float(scores[i])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    which = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return float(sum((which == b).mean() * abs(correct[which == b].mean() - conf[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Accuracy against top-class confidence (scikit-learn's calibration curve), with the count per bin."""
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(int)
    accuracy, confidence = calibration_curve(correct, conf, n_bins=bins, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, bins + 1))[0]
    return {"confidence": confidence.tolist(), "accuracy": accuracy.tolist(), "count": counts[counts > 0].tolist()}
