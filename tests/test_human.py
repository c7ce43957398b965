"""Learning from people on generated data: refitted rules, the human head, its threshold, the active queue."""
import numpy as np
import pandas as pd
import pytest

from roomvision.config import QUALITY_THRESHOLDS
from roomvision.learning.queue import active_queue
from roomvision.learning.heads import (MIN_PER_CLASS, MIN_RATINGS, TOO_FEW, _best_threshold, balanced_accuracy,
                              fit_human_aesthetic, fit_human_quality, moved_rules, refit_rules, rules_bad,
                              too_few_to_learn)
from roomvision.modelinfo import DIRECT_FEATURES


def photos(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Quality features and metrics of `n` synthetic photos; the features carry brightness and a colour cast that
    no metric measures."""
    rng = np.random.default_rng(seed)
    m = pd.DataFrame({"sharpness": rng.lognormal(6.5, 0.6, n), "lum_p50": rng.uniform(20, 235, n),
                      "dark_clip": rng.uniform(0, 0.1, n), "bright_clip": rng.uniform(0, 0.1, n), "width": 640,
                      "height": 480, "noise": rng.uniform(0.3, 2, n), "blockiness": rng.uniform(1, 1.6, n),
                      "tilt_deg": rng.uniform(0, 10, n), "cast": rng.normal(0, 1, n)})
    # like real backbone statistics: a few underlying factors (brightness and cast among them) mixed into many
    latent = np.column_stack([m.lum_p50 / 60, m.cast, rng.normal(size=(n, 8))])
    f = latent @ rng.normal(size=(10, DIRECT_FEATURES + 200)) + rng.normal(0, 0.3, (n, DIRECT_FEATURES + 200))
    return f.astype(np.float32), m


def test_refit_moves_only_the_rule_people_contradict():
    _, m = photos(400)
    human_bad = (m.lum_p50 < 85).to_numpy()  # stricter about dark photos than the proxy's 40
    t = refit_rules(m, human_bad)
    assert 80 <= t["dark_p50_max"] <= 90
    assert (rules_bad(m, t) == human_bad).mean() > 0.97
    assert moved_rules(QUALITY_THRESHOLDS, t)[0].startswith("dark_p50_max: 40 -> ")
    assert t["sharpness_min"] == QUALITY_THRESHOLDS["sharpness_min"]  # nobody contradicted it


@pytest.mark.parametrize("criterion", ["dark", "cast"])
def test_the_head_follows_the_people_not_the_proxy(criterion):
    f, m = photos(1200)
    bad = (m.lum_p50 < 85) if criterion == "dark" else (m.cast > 0.8)  # too warm
    human = np.where(bad, 0, 1)
    human[200:] = -1  # people labelled 200 photos; the rest are held out
    head = fit_human_quality(f, m, human)
    held = np.arange(200, 1200)
    decided_good = head.p_good(f[held], m.iloc[held]) >= head.threshold
    truth_good = ~bad.to_numpy()[held]
    balanced = (decided_good[truth_good].mean() + (~decided_good[~truth_good]).mean()) / 2
    assert balanced > 0.85, balanced
    proxy_good = ~rules_bad(m.iloc[held], QUALITY_THRESHOLDS)
    assert (decided_good == truth_good).mean() > (proxy_good == truth_good).mean() + 0.1
    assert 0.0 < head.threshold < 1.0 and head.cv_balanced_accuracy > 0.8
    assert head.uses_rules == (criterion == "dark")  # rules help only where a metric measures the criterion


def test_ignoring_the_labels_would_be_caught():
    """Flipped labels must flip the decisions: the head is driven by what people said."""
    f, m = photos(600)
    human = np.where(m.lum_p50 < 85, 0, 1)
    human[300:] = -1
    a = fit_human_quality(f, m, human)
    flipped = np.where(human >= 0, 1 - human, -1)
    b = fit_human_quality(f, m, flipped)
    held = np.arange(300, 600)
    da, db = a.p_good(f[held], m.iloc[held]) >= a.threshold, b.p_good(f[held], m.iloc[held]) >= b.threshold
    assert (da != db).mean() > 0.8


def test_a_criterion_one_feature_carries_is_learned_by_the_sparse_penalty(monkeypatch):
    """A property one descriptor entry measures among hundreds of unrelated ones (like a colour cast): dense
    penalties alone spread the weight and miss it; cross-validation picks the sparse one."""
    import roomvision.learning.heads as human_module
    rng = np.random.default_rng(3)
    _, m = photos(1500)
    f = rng.normal(size=(1500, DIRECT_FEATURES + 200)).astype(np.float32)
    bad = np.abs(f[:, 30]) > 1.4  # too far either way, about 16% of photos
    human = np.where(bad, 0, 1)
    human[200:] = -1
    held = np.arange(200, 1500)

    def balanced_accuracy() -> float:
        head = fit_human_quality(f, m, human)
        decided_bad = head.p_good(f[held], m.iloc[held]) < head.threshold
        return (decided_bad[bad[held]].mean() + (~decided_bad[~bad[held]]).mean()) / 2

    assert balanced_accuracy() > 0.9
    monkeypatch.setattr(human_module, "PENALTIES", tuple(p for p in human_module.PENALTIES if p[0] == "l2"))
    assert balanced_accuracy() < 0.85


def test_a_head_from_an_older_descriptor_is_a_clear_error():
    f, m = photos(300)
    human = np.where(m.lum_p50 < 85, 0, 1)
    head = fit_human_quality(f, m, human)
    with pytest.raises(ValueError, match="learned on .* photo-quality features but the model computes .*retrain-heads"):
        head.p_good(f[:, :-10], m)


def test_too_few_labels_leave_the_proxy_in_charge():
    f, m = photos(100)
    human = np.full(100, -1)
    human[:10] = 1
    human[10:12] = 0
    assert fit_human_quality(f, m, human) is None


def test_the_head_needs_metrics_when_it_reads_rules():
    f, m = photos(400)
    human = np.where(m.lum_p50 < 85, 0, 1)
    head = fit_human_quality(f, m, human)
    assert head.uses_rules
    with pytest.raises(ValueError, match="quality metrics"):
        head.p_good(f[:3])


def test_aesthetic_head_learns_ratings():
    from scipy.stats import spearmanr
    f, m = photos(800)
    score = np.clip(5 + 2 * m.cast.to_numpy(), 1, 10)
    rated = np.full(800, np.nan)
    rated[:150] = score[:150]
    head = fit_human_aesthetic(f, rated)
    assert spearmanr(head.score(f[150:]), score[150:]).statistic > 0.7
    assert fit_human_aesthetic(f, np.full(800, np.nan)) is None


def test_active_queue_alternates_uncertain_and_random_photos():
    f, _ = photos(500)
    p = np.linspace(0.01, 0.99, 500)
    chosen = active_queue(p, 0.5, f, np.arange(500), 20)
    assert len(set(chosen)) == 20
    assert np.abs(p[chosen[::2]] - 0.5).max() < 0.2  # every other photo is one the head is unsure of
    assert np.abs(p[chosen[1::2]] - 0.5).max() > 0.2  # the rest are drawn from the whole pool


def test_room_head_refit_learns_corrections_and_keeps_the_rest():
    from roomvision.learning.heads import refit_room_head
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 64))
    truth = rng.integers(0, 5, 1500)
    x = (centres[truth] + rng.normal(0, 1.0, (1500, 64))).astype(np.float32)
    weight, bias = (centres * 2).astype(np.float32), np.zeros(5, np.float32)
    unchanged = refit_room_head(x, truth, np.zeros(1500, bool), weight, bias)
    np.testing.assert_allclose(unchanged[0], weight, atol=1e-6)  # nothing corrected: the head stays
    before = (x @ weight.T + bias).argmax(1)
    human = np.zeros(1500, bool)
    human[:15] = True
    labels = before.copy()
    labels[:15] = (before[:15] + 1) % 5  # people say these photos are another room
    w, b = refit_room_head(x, labels, human, weight, bias)
    after = (x @ w.T + b).argmax(1)
    assert (after[:15] == labels[:15]).mean() >= 0.9
    assert (after[15:] == before[15:]).mean() > 0.9


def _balanced(decided_good: np.ndarray, truth_good: np.ndarray) -> float:
    return (decided_good[truth_good].mean() + (~decided_good[~truth_good]).mean()) / 2


def test_a_standard_that_depends_on_the_room_is_learned_from_the_room_probabilities():
    """Kitchens must be bright, other rooms only not black: one threshold cannot say it, a head reading the model's
    room probabilities can."""
    f, m = photos(1600, seed=3)
    room = np.random.default_rng(3).integers(0, 5, len(m))
    rooms = np.full((len(m), 5), 0.05)
    rooms[np.arange(len(m)), room] = 0.8
    bad = np.where(room == 3, m.lum_p50 < 130, m.lum_p50 < 40)
    human = np.where(bad, 0, 1)
    human[400:] = -1
    held = np.arange(400, 1600)
    head = fit_human_quality(f, m, human, rooms=rooms)
    plain = fit_human_quality(f, m, human)
    assert head.uses_rooms and not plain.uses_rooms
    assert np.shape(head.room_weight) == (5, 24) and len(head.room_bias) == 5
    with_rooms = _balanced(head.p_good(f[held], m.iloc[held], rooms[held]) >= head.threshold, ~bad[held])
    without = _balanced(plain.p_good(f[held], m.iloc[held]) >= plain.threshold, ~bad[held])
    assert with_rooms > 0.85 and with_rooms > without + 0.05, (with_rooms, without)
    with pytest.raises(ValueError, match="depends on the room: pass the photos' room probabilities"):
        head.p_good(f[held], m.iloc[held])


def test_room_probabilities_that_do_not_help_are_left_out():
    f, m = photos(800, seed=4)
    rooms = np.random.default_rng(4).dirichlet(np.ones(5), len(m))  # unrelated to the criterion
    human = np.where(m.cast > 0.8, 0, 1)
    human[300:] = -1
    assert not fit_human_quality(f, m, human, rooms=rooms).uses_rooms


def test_balanced_accuracy_weighs_both_classes_equally_row_by_row():
    truth = np.array([True, True, True, False])
    predicted = np.array([[True, True, True, True], [True, False, False, False], [False, False, False, True]])
    assert balanced_accuracy(truth, predicted) == pytest.approx([0.5, (1 / 3 + 1) / 2, 0.0])


@pytest.mark.parametrize("p, good", [([0.2, 0.6], [0, 1]), ([0.3, 0.3, 0.9], [0, 0, 1]), ([0.1, 0.5, 0.5], [0, 1, 1]),
                                     ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])])
def test_the_chosen_threshold_decides_every_photo_rightly_a_photo_at_it_is_good(p, good):
    p, good = np.array(p), np.array(good)
    threshold, score = _best_threshold(p, good)
    assert score == 1.0
    assert ((p >= threshold) == good.astype(bool)).all()   # GOOD from the threshold up, as decisions.quality_label


def test_a_clean_separation_with_room_around_a_half_keeps_the_threshold_at_a_half():
    p = np.r_[np.full(50, 0.1), np.full(51, 0.9)]
    assert _best_threshold(p, p > 0.5) == (0.5, 1.0)


def test_the_threshold_trades_errors_for_the_best_balanced_accuracy():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    good = np.array([0, 1, 0, 0, 1, 1])   # one GOOD photo among the low ones: calling it BAD costs less
    threshold, score = _best_threshold(p, good)
    assert 0.4 < threshold <= 0.8 and score == pytest.approx((2 / 3 + 1) / 2)


def test_learning_starts_at_the_label_minimums_and_not_one_before():
    few = MIN_PER_CLASS - 1
    assert too_few_to_learn(MIN_PER_CLASS, MIN_PER_CLASS, 0, 0) == ""
    assert too_few_to_learn(MIN_PER_CLASS, few, 0, 0).startswith(f"label at least {MIN_PER_CLASS} GOOD")
    assert too_few_to_learn(few, MIN_PER_CLASS, 0, 0) != ""
    assert too_few_to_learn(0, 0, MIN_RATINGS, 0) == ""
    assert too_few_to_learn(0, 0, MIN_RATINGS - 1, 0) != ""
    assert too_few_to_learn(0, 0, 0, 1) == ""
    assert too_few_to_learn(0, 0, 0, 0) == TOO_FEW + " or correct room labels in the Mistakes page"
