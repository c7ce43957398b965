"""The out-of-scope decision: fitted on features, stored in the checkpoint, served on every surface."""
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import roc_auc_score

from conftest import needs_shared
from roomvision.api import create_app
from roomvision.cli import main
from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.decisions import OUT_OF_SCOPE, Thresholds, decide
from roomvision.inference import Predictor
from roomvision.modelinfo import read_model_info
from roomvision.learning.scope import (GATE_QUANTILE, GATE_SOFTNESS, LEARNED_C, MAX_FLAGGED_ROOMS, ScopeHead, _pack,
                              fit_scope_head, out_of_scope_split)

EPS = 1e-3


def _clusters(rng, n, centre, spread=0.3):
    return np.abs(centre + rng.normal(0, spread, (n, len(centre)))).astype(np.float32)


def test_fitted_head_separates_known_and_unseen_kinds():
    """Rooms in five clusters, known others in one; an unseen kind far from both is caught by the gate."""
    rng = np.random.default_rng(0)
    dim = 32
    centres = [rng.uniform(0, 2, dim) for _ in range(5)]
    rooms = np.concatenate([_clusters(rng, 120, c) for c in centres])
    val_rooms = np.concatenate([_clusters(rng, 60, c) for c in centres])
    other_centre = rng.uniform(0, 2, dim)
    others = _clusters(rng, 200, other_centre)
    head, threshold = fit_scope_head(rooms, others, val_rooms)
    assert np.mean(head.in_scope_prob(val_rooms) < threshold) == pytest.approx(MAX_FLAGGED_ROOMS, abs=0.01)
    test_rooms = np.concatenate([_clusters(rng, 60, c) for c in centres])
    seen = _clusters(rng, 100, other_centre)
    unseen = _clusters(rng, 100, rng.uniform(0, 2, dim) * (rng.uniform(0, 1, dim) > 0.5))
    for kind in (seen, unseen):
        y = np.r_[np.ones(len(test_rooms)), np.zeros(len(kind))]
        assert roc_auc_score(y, head.in_scope_prob(np.r_[test_rooms, kind])) > 0.95
        assert np.mean(head.in_scope_prob(kind) < threshold) > 0.8
    again = ScopeHead.from_dict(head.to_dict())
    np.testing.assert_allclose(again.in_scope_prob(unseen), head.in_scope_prob(unseen))


def test_the_learned_signal_is_a_balanced_logistic_regression_on_standardised_rooms():
    """learned_prob is exactly what its recipe says: rooms standardised by their own mean and spread, class-balanced
    logistic regression with C = LEARNED_C (a fitted head is reproduced with scikit-learn); fitting is repeatable."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(1)
    rooms = _clusters(rng, 150, rng.uniform(1, 3, 12), 0.8) * rng.uniform(0.5, 4, 12)
    others = _clusters(rng, 50, rng.uniform(1, 3, 12), 0.8) * rng.uniform(0.5, 4, 12)
    head, _ = fit_scope_head(rooms, others, rooms[:40])
    mean, scale = rooms.mean(0), rooms.std(0) + 1e-6
    reference = LogisticRegression(C=LEARNED_C, class_weight="balanced", max_iter=3000).fit(
        (np.r_[rooms, others] - mean) / scale, np.r_[np.ones(len(rooms)), np.zeros(len(others))])
    probe = np.r_[rooms[:20], others[:20]]
    expected = reference.predict_proba((probe - mean) / scale)[:, 1]
    np.testing.assert_allclose(head.learned_prob(probe), expected, atol=2e-3)  # float16 packing
    assert np.ptp(expected) > 0.2
    again, _ = fit_scope_head(rooms, others, rooms[:40])
    assert again.to_dict() == head.to_dict()


def test_few_rooms_get_one_prototype_each():
    rng = np.random.default_rng(2)
    rooms = rng.uniform(0.1, 1, (5, 6)).astype(np.float32)
    head, _ = fit_scope_head(rooms, rng.uniform(0.1, 1, (5, 6)), rooms)
    assert head.to_dict()["prototypes"]["shape"] == [5, 6]
    assert (head.similarity(rooms) > 0.98).all()  # each room near a prototype of its own


def test_the_gate_is_a_half_at_its_centre_and_its_width_sets_the_slope():
    """Similarity is the cosine to the nearest prototype (whatever a feature's length); the gate is expit((s - centre)
    / width); a fitted gate sits at the GATE_QUANTILE of validation similarity with width (median - it) /
    GATE_SOFTNESS."""
    prototypes = np.eye(3, dtype=np.float32)
    head = ScopeHead(mean=_pack(np.zeros(3)), scale=_pack(np.ones(3)), weight=_pack(np.zeros(3)), bias=0.0,
                     prototypes=_pack(prototypes), gate_centre=0.6, gate_width=0.1)
    tiny, long = np.array([[1e-3, 0, 0]], np.float32), np.array([[0, 50.0, 0]], np.float32)
    np.testing.assert_allclose(head.similarity(np.r_[tiny, long]), [1.0, 1.0], atol=1e-3)
    at_centre = np.array([[0.6, 0.8, 0.0]], np.float32)   # cosine 0.8 to the second prototype
    head.gate_centre = 0.8
    assert head.gate(at_centre)[0] == pytest.approx(0.5, abs=1e-3)
    head.gate_centre = 0.7
    assert head.gate(at_centre)[0] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=2e-3)   # one width above
    rng = np.random.default_rng(3)
    rooms = rng.uniform(0.1, 1, (300, 8)).astype(np.float32)
    val = rng.uniform(0.1, 1, (200, 8)).astype(np.float32)
    fitted, _ = fit_scope_head(rooms, rng.uniform(0.1, 1, (50, 8)), val)
    low, median = np.quantile(fitted.similarity(val), [GATE_QUANTILE, 0.5])
    assert fitted.gate_centre == pytest.approx(low) and fitted.gate_width == pytest.approx((median - low) / GATE_SOFTNESS)
    assert fitted.gate_width > 1e-4 / GATE_SOFTNESS


def test_out_of_scope_split_is_fixed_by_content():
    splits = [out_of_scope_split(f"{i:08x}" + "0" * 56) for i in range(0, 0xFFFFFFFF, 0x1000000)]
    assert set(splits) == {"train", "val", "test"} and splits.count("train") > splits.count("test")


@pytest.mark.parametrize("fraction, below, above", [(0.70, "train", "val"), (0.85, "val", "test")])
def test_out_of_scope_split_changes_exactly_at_its_fractions(fraction, below, above):
    """The first 32 bits of the hash as a fraction of 2**32: the last prefix under each boundary and the first one
    over it fall on either side."""
    first_over = int(np.ceil(fraction * 2**32))
    assert out_of_scope_split(f"{first_over - 1:08x}" + "f" * 56) == below
    assert out_of_scope_split(f"{first_over:08x}" + "0" * 56) == above


def test_committed_model_carries_the_head_and_its_threshold():
    info = read_model_info(DEFAULT_WEIGHTS)
    assert info.scope and 0.05 < info.calibration.in_scope < 0.95
    assert Predictor(DEFAULT_WEIGHTS, device="cpu").thresholds.min_in_scope == info.calibration.in_scope


@pytest.fixture(scope="module")
def coffee(tmp_path_factory):
    from PIL import Image
    from skimage import data as skdata
    path = tmp_path_factory.mktemp("photo") / "coffee.jpg"
    Image.fromarray(skdata.coffee()).save(path, quality=95)
    (row,) = Predictor(DEFAULT_WEIGHTS, device="cpu").predict_paths([path])
    return path, row


@pytest.mark.parametrize("delta,expected", [(-EPS, False), (EPS, True)])
def test_cli_api_and_results_frame_decide_out_of_scope_alike(coffee, tmp_path, delta, expected):
    path, row = coffee
    threshold = f"{row['in_scope_prob'] + delta:.6f}"
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--out", str(out), "--quiet", "--min-in-scope", threshold,
                 "--min-room-confidence", "0"]) == 0
    cli = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert str(cli["out_of_scope"]) == str(expected)
    assert (cli["room_decision"] == OUT_OF_SCOPE) == expected
    assert cli["in_scope_prob"] == pytest.approx(row["in_scope_prob"], abs=1e-4)
    with TestClient(create_app(DEFAULT_WEIGHTS, device="cpu")) as client:
        body = client.post("/v1/predict", files=[("files", ("c.jpg", path.read_bytes(), "image/jpeg"))],
                           data={"min_in_scope": threshold, "min_room_confidence": "0"}).json()
    result = body["results"][0]
    assert result["out_of_scope"] is expected and (result["room_decision"] == OUT_OF_SCOPE) == expected
    assert result["in_scope_prob"] == pytest.approx(row["in_scope_prob"], abs=1e-6)
    assert body["thresholds"]["min_in_scope"] == pytest.approx(float(threshold))
    d = decide(row, Thresholds(min_in_scope=float(threshold), min_room_confidence=0), CLASSES)
    assert d["out_of_scope"] is expected


def test_entrance_halls_score_below_rooms_on_the_committed_model():
    """Held-out (test-split) entrance halls against test-split room photos, through the predictor."""
    from roomvision.data import load_out_of_scope
    root = needs_shared("out-of-scope")
    needs_shared("house-rooms")
    halls = load_out_of_scope(root)
    halls = halls[halls["split"] == "test"].head(40)
    manifest = pd.read_csv("data/manifest.csv", keep_default_na=False)
    rooms = manifest[(manifest["split"] == "test") & (manifest["source"] == "house-rooms")].head(40)
    predictor = Predictor(DEFAULT_WEIGHTS, device="cpu")
    p_halls = [r["in_scope_prob"] for r in predictor.predict_paths(list(halls["path"]))]
    p_rooms = [r["in_scope_prob"] for r in predictor.predict_paths(
        [needs_shared("house-rooms") / p for p in rooms["path"]])]
    assert roc_auc_score(np.r_[np.ones(40), np.zeros(40)], np.r_[p_rooms, p_halls]) > 0.9
