"""Learning from the people who correct the model.

Where people have decided, they are the truth; elsewhere the proxy rules are only a prior they can overrule:
1. the proxy rules' thresholds are refitted to the human decisions ("your labels moved dark from 40 to 83");
2. a quality head (logistic regression on the photo-quality descriptor: photo statistics, a grid of input colour
   statistics, the luminance layout and multi-level backbone statistics) learns from the human labels, with the
   refitted rules' verdict as an extra input when cross-validation on the human labels says that helps;
3. its decision threshold is calibrated on held-out human labels (cross-validated predictions);
4. a ridge regression learns the aesthetic score from human ratings the same way.
The active-learning queue asks next about the photos this head is least sure of, spread over the feature space.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from ..config import QUALITY_THRESHOLDS
from ..modelinfo import DIRECT_FEATURES, PHOTO_STATISTICS
from ..quality import RULES, rule_flags, rule_metric
from .stores import LabelStore, human_lookup

MIN_PER_CLASS = 3            # fewer GOOD or BAD human labels than this: the proxy stays in charge
MIN_RATINGS = 10             # fewer aesthetic ratings than this: the proxy score stays
MIN_RULE_GAIN = 0.01         # a rule's threshold moves only when agreement with people rises at least this much
RULE_INPUT = 3.0             # the refitted rules' verdict enters the head as +-RULE_INPUT (GOOD +, BAD -)
TOO_FEW = (f"label at least {MIN_PER_CLASS} GOOD and {MIN_PER_CLASS} BAD photos (or rate {MIN_RATINGS}) "
           "in the Relabel page first")
PENALTIES = (("l2", 0.002), ("l2", 0.01), ("l2", 0.1),  # (penalty, inverse strength) tried by cross-validation;
             ("l1", 0.05), ("l1", 0.1), ("l1", 0.3))    # l1: criteria a few descriptor entries carry (a colour cast)
COMPONENTS = 96              # principal components of the standardised backbone statistics


@dataclass
class _LinearHead:
    """A linear model on standardised quality features, stored as plain numbers (readable without PyTorch)."""
    mean: list[float]
    scale: list[float]
    weight: list[float]
    bias: float

    def _standardised(self, quality_features: np.ndarray) -> np.ndarray:
        quality_features = np.asarray(quality_features, np.float64)
        if quality_features.shape[-1] != len(self.mean):
            raise ValueError(f"this human head was learned on {len(self.mean)} photo-quality features but the model "
                             f"computes {quality_features.shape[-1]} (an older roomvision): learn it again with "
                             "`python -m roomvision retrain-heads`")
        return (quality_features - np.asarray(self.mean)) / np.asarray(self.scale)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HumanQualityHead(_LinearHead):
    """P(GOOD) under the human criterion: logistic on the expanded standardised features (and optionally the
    refitted rules' verdict), with its calibrated threshold."""
    threshold: float = 0.5
    labels: int = 0
    rule_thresholds: dict = field(default_factory=dict)
    uses_rules: bool = False
    rule_weight: float = 0.0
    cv_balanced_accuracy: float = float("nan")
    room_weight: list = field(default_factory=list)  # per room: weights on the standardised photo statistics
    room_bias: list = field(default_factory=list)    # per room: an offset ("a kitchen must be bright")

    @property
    def uses_rooms(self) -> bool:
        return bool(self.room_bias)

    def p_good(self, quality_features: np.ndarray, metrics: pd.DataFrame | None = None,
               rooms: np.ndarray | None = None) -> np.ndarray:
        """P(GOOD) under the human criterion; `metrics` (photo-quality metrics) are needed when the head uses the
        refitted rules, `rooms` (the model's room probabilities) when its standard depends on the room."""
        z = self._standardised(quality_features)
        logit = expand(z) @ np.asarray(self.weight) + self.bias
        if self.uses_rooms:
            if rooms is None:
                raise ValueError("this head's standard depends on the room: pass the photos' room probabilities")
            logit = logit + room_terms(np.asarray(rooms), z) @ np.r_[np.ravel(self.room_weight), self.room_bias]
        if self.uses_rules:
            if metrics is None:
                raise ValueError("this head also reads the refitted rules: pass the photos' quality metrics")
            logit = logit + self.rule_weight * (1 - 2 * rules_bad(metrics, self.rule_thresholds))
        return expit(logit)


@dataclass
class HumanAestheticHead(_LinearHead):
    """Aesthetic score 1-10 learned from human ratings: ridge regression on standardised quality features."""
    ratings: int = 0

    def score(self, quality_features: np.ndarray) -> np.ndarray:
        return np.clip(self._standardised(quality_features) @ np.asarray(self.weight) + self.bias, 1.0, 10.0)


def too_few_to_learn(good: int, bad: int, rated: int, room_corrections: int) -> str:
    """Why learning from people cannot start yet ('' when it can): too few GOOD and BAD decisions, ratings and room
    corrections alike."""
    if min(good, bad) < MIN_PER_CLASS and rated < MIN_RATINGS and not room_corrections:
        return TOO_FEW + " or correct room labels in the Mistakes page"
    return ""


def rating_to_score(rating: float) -> float:
    """Human 1-5 stars onto the 1-10 aesthetic scale."""
    return 1.0 + (float(rating) - 1.0) * 9.0 / 4.0


def human_targets(manifest: pd.DataFrame, relabels: Path | str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per manifest photo: human decision (1 GOOD, 0 BAD, -1 none) and human score 1-10 (NaN where not rated)."""
    decision, score = np.full(len(manifest), -1), np.full(len(manifest), np.nan)
    if relabels is not None and Path(relabels).is_file():
        found = human_lookup(LabelStore(relabels).merged(), manifest["sha256"], manifest["path"])
        for i, r in enumerate(found):
            if r is not None:
                decision[i] = int(r["human_label"] == "GOOD")
                if not pd.isna(r["rating"]):
                    score[i] = rating_to_score(r["rating"])
    return decision, score


def expand(z: np.ndarray) -> np.ndarray:
    """Standardised features and their centred squares: a linear head on these can also learn two-sided criteria
    ("too warm or too cold", "too dark or too bright")."""
    return np.hstack([z, z * z - 1.0])


def room_terms(rooms: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Inputs of a standard that depends on the room: each room's probability times the standardised photo
    statistics (exposure, sharpness, colour), then the probabilities themselves (a per-room offset)."""
    stats = z[:, :PHOTO_STATISTICS]
    return np.hstack([(rooms[:, :, None] * stats[:, None, :]).reshape(len(z), -1), rooms])


def rules_bad(metrics: pd.DataFrame, thresholds: dict) -> np.ndarray:
    """BAD (True) where any proxy rule fires at `thresholds`."""
    return rule_flags(metrics, thresholds).any(axis=1).to_numpy()


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Balanced accuracy of boolean predictions (last axis: photos) against boolean truth, vectorised."""
    tpr = (predicted & truth).sum(-1) / max(truth.sum(), 1)
    tnr = (~predicted & ~truth).sum(-1) / max((~truth).sum(), 1)
    return (tpr + tnr) / 2


def refit_rules(metrics: pd.DataFrame, human_bad: np.ndarray, start: dict = QUALITY_THRESHOLDS,
                candidates: int = 80, rounds: int = 2) -> dict:
    """Thresholds moved (greedily, the most helpful first) to maximise balanced accuracy against the human decisions.

    `metrics` are the labelled photos' metrics, `human_bad` their human decisions. A threshold moves only when that
    raises agreement, so rules people never contradict stay where they were.
    """
    t = dict(start)
    if human_bad.all() or not human_bad.any():
        return t
    flags = rule_flags(metrics, t).to_numpy().copy()
    best = float(balanced_accuracy(human_bad, flags.any(axis=1)))
    for _ in range(rounds * len(RULES)):  # greedy: the single most helpful move at each step
        moves = []
        for j, (key, metric, side, _) in enumerate(RULES):
            values = np.asarray(rule_metric(metrics, metric), np.float64)
            grid = np.unique(np.quantile(values, np.linspace(0.0, 1.0, candidates)))
            # just beyond each observed value, so that a threshold separates photos rather than sitting on one
            grid = grid + 1e-6 if side == "below" else grid - 1e-6
            fires = values[None, :] < grid[:, None] if side == "below" else values[None, :] > grid[:, None]
            score = balanced_accuracy(human_bad, fires | np.delete(flags, j, axis=1).any(axis=1)[None, :])
            i = int(np.argmax(score))
            moves.append((float(score[i]), j, key, float(grid[i]), fires[i]))
        score, j, key, value, fired = max(moves, key=lambda move: move[0])
        if score < best + MIN_RULE_GAIN:
            break
        best, t[key], flags[:, j] = score, value, fired
    return t


def moved_rules(before: dict, after: dict) -> list[str]:
    """Readable lines for the thresholds that moved, e.g. 'dark_p50_max: 40 -> 83'."""
    return [f"{k}: {before[k]:g} -> {after[k]:.3g}" for k in before if abs(after[k] - before[k]) > 1e-9]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def _best_threshold(p_good: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    """P(GOOD) threshold with the best balanced accuracy (on held-out predictions) and that accuracy."""
    grid = np.unique(np.concatenate([np.quantile(p_good, np.linspace(0, 1, 101)), [0.5]]))
    scores = balanced_accuracy(good.astype(bool), p_good[None, :] >= grid[:, None])
    i = int(np.argmax(scores))
    return float(grid[i]), float(scores[i])


def _classifier(penalty: str, c: float, seed: int) -> LogisticRegression:
    """Class-balanced logistic regression with an L2 (dense) or L1 (sparse) penalty."""
    if penalty == "l1":
        return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", class_weight="balanced", random_state=seed)
    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000)


def fit_human_quality(features: np.ndarray, metrics: pd.DataFrame, human: np.ndarray,
                      seed: int = 0, rooms: np.ndarray | None = None) -> HumanQualityHead | None:
    """Fit the human quality head.

    `features` and `metrics` cover a pool of photos (labelled and not: the pool sets the standardisation and the
    principal components); `human` holds 1 (GOOD), 0 (BAD) or -1 (not labelled) per photo. The inputs (photo
    statistics, input grid and layout; with their squares; with backbone components), whether the refitted rules
    join them, and the penalty (dense L2 or sparse L1) and its strength are chosen by cross-validated ROC-AUC on the
    human labels (rules refitted inside each fold); the threshold is the best balanced accuracy on the same held-out
    predictions. With `rooms` (the model's room probabilities per photo), a standard that depends on the room
    (each room's weights on the photo statistics, and an offset) is tried on top of the best choice and kept when
    its cross-validated ROC-AUC is higher. None when the human labels are too few to learn from (the proxy stays
    in charge).
    """
    labelled = np.flatnonzero(human >= 0)
    good = human[labelled].astype(int)
    if min(good.sum(), (1 - good).sum()) < MIN_PER_CLASS:
        return None
    mean, scale = _standardise(features)
    d = features.shape[1]
    wide = expand((features - mean) / scale)
    # photo statistics and the input grid (and their squares) as they are; backbone statistics through components
    direct = np.r_[0:DIRECT_FEATURES, d:d + DIRECT_FEATURES]
    deep_cols = np.setdiff1d(np.arange(2 * d), direct)
    pca = PCA(n_components=min(COMPONENTS, len(features), len(deep_cols)), svd_solver="randomized",
              random_state=seed).fit(wide[:, deep_cols])
    z_h = np.hstack([wide[labelled][:, direct], pca.transform(wide[labelled][:, deep_cols])])
    m_h = metrics.iloc[labelled]
    folds = list(StratifiedKFold(n_splits=int(min(5, good.sum(), (1 - good).sum())), shuffle=True,
                                 random_state=seed).split(z_h, good))
    fold_rules = [refit_rules(m_h.iloc[train], good[train] == 0) for train, _ in folds]  # rules refitted per fold

    widths = (DIRECT_FEATURES, len(direct), z_h.shape[1])  # photo statistics; and their squares; and the backbone

    by_room = None if rooms is None else room_terms(np.asarray(rooms)[labelled], z_h)

    def design(rows: np.ndarray, rules: dict | None, width: int, with_rooms: bool = False) -> np.ndarray:
        x = [z_h[rows, :width]]
        if rules is not None:
            x.append(RULE_INPUT * (1 - 2 * rules_bad(m_h.iloc[rows], rules))[:, None])
        if with_rooms:
            x.append(by_room[rows])
        return np.hstack(x)

    def cv_probabilities(penalty: tuple[str, float], with_rules: bool, width: int, with_rooms: bool = False):
        out = np.zeros(len(good))  # held-out predictions of human-labelled photos
        for (train, test), rules in zip(folds, fold_rules):
            rules = rules if with_rules else None
            out[test] = _classifier(*penalty, seed).fit(design(train, rules, width, with_rooms),
                                                        good[train]).predict_proba(
                design(test, rules, width, with_rooms))[:, 1]
        return out

    best = None
    for width in widths:  # with few labels, fewer inputs often generalise better
        for with_rules in (False, True):
            for penalty in PENALTIES:
                p = cv_probabilities(penalty, with_rules, width)
                auc = roc_auc_score(good, p)
                if best is None or auc > best[0] + 1e-9:
                    best = (auc, penalty, with_rules, width, False, p)
    if by_room is not None:  # a standard per room, on top of the best choice
        _, _, with_rules, width, _, _ = best
        for penalty in PENALTIES:
            p = cv_probabilities(penalty, with_rules, width, True)
            auc = roc_auc_score(good, p)
            if auc > best[0] + 1e-9:
                best = (auc, penalty, with_rules, width, True, p)
    _, penalty, with_rules, width, with_rooms, p = best
    threshold, score = _best_threshold(p, good)
    rules = refit_rules(m_h, good == 0)
    everyone = np.arange(len(good))
    clf = _classifier(*penalty, seed).fit(design(everyone, rules if with_rules else None, width, with_rooms), good)
    coef = clf.coef_[0]
    n_rooms = np.asarray(rooms).shape[1] if with_rooms else 0
    split = len(coef) - (by_room.shape[1] if with_rooms else 0)
    coef, room_coef = coef[:split], coef[split:]
    weight = np.zeros(2 * d)  # linear in the expanded standardised features
    weight[direct[:min(width, len(direct))]] = coef[:min(width, len(direct))]
    bias = float(clf.intercept_[0])
    if width > len(direct):
        weight[deep_cols] = pca.components_.T @ coef[len(direct):len(direct) + pca.n_components_]
        bias -= float(pca.mean_ @ weight[deep_cols])
    return HumanQualityHead(mean=mean.tolist(), scale=scale.tolist(), weight=weight.tolist(), bias=bias,
                            threshold=threshold, labels=len(good), rule_thresholds=rules, uses_rules=with_rules,
                            rule_weight=float(coef[-1] * RULE_INPUT) if with_rules else 0.0,
                            cv_balanced_accuracy=score,
                            room_weight=room_coef[:n_rooms * PHOTO_STATISTICS].reshape(
                                n_rooms, PHOTO_STATISTICS).tolist(),
                            room_bias=room_coef[n_rooms * PHOTO_STATISTICS:].tolist())


def fit_human_aesthetic(features: np.ndarray, scores: np.ndarray,
                        min_ratings: int = MIN_RATINGS) -> HumanAestheticHead | None:
    """Ridge regression of human scores (1-10; NaN where not rated) on the quality features, strength chosen by
    cross-validation; None when fewer than `min_ratings` photos are rated."""
    from sklearn.linear_model import RidgeCV
    rated = ~np.isnan(scores)
    if rated.sum() < min_ratings:
        return None
    mean, scale = _standardise(features)
    z = (features[rated] - mean) / scale
    model = RidgeCV(alphas=(10.0, 100.0, 1000.0, 10000.0)).fit(z, scores[rated])
    fitted = Ridge(alpha=model.alpha_).fit(z, scores[rated])
    return HumanAestheticHead(mean=mean.tolist(), scale=scale.tolist(), weight=fitted.coef_.tolist(),
                              bias=float(fitted.intercept_), ratings=int(rated.sum()))


ROOM_HUMAN_WEIGHT = 5.0      # a photo people relabelled counts this many times in the room head's refit
ROOM_L2 = 1e-4               # small pull towards the trained head (conditioning)


def refit_room_head(features: np.ndarray, labels: np.ndarray, human: np.ndarray, weight: np.ndarray,
                    bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The room head (logits = features @ weight.T + bias) refitted to the room labels people gave.

    Photos people relabelled (`human`; their `labels`) are targets weighted ROOM_HUMAN_WEIGHT; every other photo's
    target is the trained head's own prediction (self-distillation), so with no corrections the head stays as it
    is and photos nobody corrected keep their predictions as far as the corrections allow. Returns (weight, bias).
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax
    xb = np.c_[np.asarray(features, np.float64), np.ones(len(features))]
    start = np.c_[weight, bias].astype(np.float64)
    target = softmax(xb @ start.T, axis=1)
    target[human] = np.eye(weight.shape[0])[labels[human]]
    w = np.where(human, ROOM_HUMAN_WEIGHT, 1.0)
    w = w / w.sum()

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(start.shape)
        logp = log_softmax(xb @ theta.T, axis=1)
        diff = theta - start
        grad = ((np.exp(logp) - target) * w[:, None]).T @ xb + ROOM_L2 * diff
        return float(-(w * (target * logp).sum(1)).sum() + 0.5 * ROOM_L2 * (diff ** 2).sum()), grad.ravel()

    theta = minimize(loss, start.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 300}).x
    theta = theta.reshape(start.shape)
    return theta[:, :-1].astype(np.float32), theta[:, -1].astype(np.float32)
