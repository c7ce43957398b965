"""Each decision is one pure function; every surface (results frame, CLI, API) gives the same answer at thresholds
just above and just below the probability the committed model returns."""
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from roomvision.api import create_app
from roomvision.cli import main
from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.decisions import Calibration, Thresholds, decide, listing_ready, quality_decision, room_decision
from roomvision.inference import Predictor, results_frame

EPS = 1e-3


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A real photo (scikit-image's coffee cup) scored by the committed model."""
    from PIL import Image
    from skimage import data as skdata
    path = tmp_path_factory.mktemp("photo") / "coffee.jpg"
    Image.fromarray(skdata.coffee()).save(path, quality=95)
    predictor = Predictor(DEFAULT_WEIGHTS, device="cpu")
    (row,) = predictor.predict_paths([path])
    return predictor, path, row


def test_quality_decision_at_the_boundary():
    assert quality_decision(0.4, 0.4) == "GOOD"
    assert quality_decision(0.4, 0.4 + EPS) == "BAD"
    assert quality_decision(0.4, 0.4 - EPS) == "GOOD"


def test_room_decision_just_above_and_below_its_confidence():
    probs = {"Kitchen": 0.61, "Dining": 0.39}
    assert room_decision(probs, 0.61 - EPS) == ("Kitchen", 0.61)
    assert room_decision(probs, 0.61 + EPS) == ("uncertain", 0.61)


def test_listing_ready_says_why_not():
    assert listing_ready("GOOD", "Kitchen", 6.0, 6.0 - EPS) == (True, "")
    ready, reason = listing_ready("BAD", "uncertain", 6.0, 6.0 + EPS)
    assert not ready and reason == "quality BAD; room uncertain; aesthetic 6.000 < 6.001"


def test_calibration_gives_the_default_thresholds():
    t = Thresholds.for_model(Calibration(temperature=0.8, quality=0.37))
    assert t.quality == 0.37 and t.with_values(quality=None, min_room_confidence=0.9).min_room_confidence == 0.9


def test_results_frame_decides_at_the_thresholds_it_is_given(scored):
    predictor, _, row = scored
    p, conf = row["quality_prob_good"], max(row[f"prob_{c}"] for c in CLASSES)
    assert 0.01 < p < 0.99 and 0.2 < conf < 0.99  # a real probability, not a saturated one
    below = Thresholds(quality=p - EPS, min_room_confidence=conf - EPS, listing_ready_min_aesthetic=1.0, min_in_scope=0)
    above = Thresholds(quality=p + EPS, min_room_confidence=conf + EPS, listing_ready_min_aesthetic=1.0, min_in_scope=0)
    a, b = (results_frame([row], predictor.classes, t).iloc[0] for t in (below, above))
    assert (a["quality_decision"], a["room_decision"], bool(a["listing_ready"])) == ("GOOD", row["room"], True)
    assert (b["quality_decision"], b["room_decision"], bool(b["listing_ready"])) == ("BAD", "uncertain", False)
    assert b["quality_threshold"] == pytest.approx(p + EPS, abs=1e-4)
    assert decide(row, above, predictor.classes)["listing_reason"].startswith("quality BAD; room uncertain")


@pytest.mark.parametrize("delta,expected", [(-EPS, "GOOD"), (EPS, "BAD")])
def test_cli_and_api_decide_alike(scored, tmp_path, delta, expected):
    predictor, path, row = scored
    threshold = f"{row['quality_prob_good'] + delta:.6f}"
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--out", str(out), "--quiet", "--quality-threshold", threshold]) == 0
    cli = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert cli["quality_decision"] == expected and cli["quality_threshold"] == pytest.approx(float(threshold), abs=1e-4)
    with TestClient(create_app(DEFAULT_WEIGHTS, device="cpu")) as client:
        body = client.post("/v1/predict", files=[("files", ("c.jpg", path.read_bytes(), "image/jpeg"))],
                           data={"quality_threshold": threshold}).json()
    assert body["results"][0]["quality_label"] == expected
    assert body["thresholds"]["quality"] == pytest.approx(float(threshold))


def test_one_decode_policy_for_every_entry_point(tmp_path):
    """A 4032x3024 phone-sized JPEG scores identically through the CLI/score path, the API/Ray path and the Predict
    page's path, on the committed model (all decode through the predictor's one policy)."""
    from PIL import Image
    from skimage import data as skdata
    from roomvision.webapp import score_upload
    import hashlib
    path = tmp_path / "phone.jpg"
    Image.fromarray(skdata.astronaut()).resize((4032, 3024), Image.Resampling.BICUBIC).save(path, quality=90)
    data = path.read_bytes()
    predictor = Predictor(DEFAULT_WEIGHTS, device="cpu")
    (cli,) = predictor.predict_paths([path])
    (api, img), = predictor.predict_named([("phone.jpg", data)])
    page = score_upload(predictor.version, hashlib.sha256(data).hexdigest(), predictor, data)
    assert img.size[0] < 1100 and img.info["original_size"] == (4032, 3024)  # decoded at a reduced scale
    assert page["metrics"]["width"] == 4032  # resolution rule still sees the file's size
    for key in ("quality_prob_good", "aesthetic_score", *[f"prob_{c}" for c in CLASSES]):
        assert cli[key] == api[key] == page[key], key


@pytest.mark.parametrize("score,threshold,shown", [(5.4695, 5.5, "aesthetic 5.47 < 5.50"), (4.2, 5.5, "aesthetic 4.2 < 5.5"),
                                                   (5.49999, 5.5, "aesthetic 5.49999 < 5.50000")])
def test_a_listing_reason_never_contradicts_itself(score, threshold, shown):
    from roomvision.decisions import listing_ready
    ready, reason = listing_ready("GOOD", "Kitchen", score, threshold)
    assert not ready and reason == shown
