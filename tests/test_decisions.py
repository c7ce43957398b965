"""Each decision is one pure function; every surface (results frame, CLI, API) gives the same answer at thresholds
just above and just below the probability the committed model returns."""
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from roomvision.api import create_app
from roomvision.cli import main
from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.decisions import (DECISION_COLUMNS, OUT_OF_SCOPE, UNCERTAIN, Calibration, Thresholds, decide,
                                  decide_frame, is_good, listing_ready, out_of_scope, quality_decision, room_decision)
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


AT = 0.4035  # a probability as the committed model gives them, not a round number


@pytest.mark.parametrize("threshold,expected", [(AT - EPS, "GOOD"), (AT, "GOOD"), (AT + EPS, "BAD")])
def test_quality_decision_below_at_and_above_the_threshold(threshold, expected):
    assert quality_decision([AT], threshold).tolist() == [expected]
    assert is_good(np.array([AT, np.nan]), threshold).tolist() == [expected == "GOOD", False]  # NaN is never GOOD


@pytest.mark.parametrize("threshold,expected", [(AT - EPS, "Kitchen"), (AT, "Kitchen"), (AT + EPS, UNCERTAIN)])
def test_room_decision_below_at_and_above_its_confidence(threshold, expected):
    rooms, confidence = room_decision([[AT, 1 - AT - 0.3, 0.3]], ["Kitchen", "Dining", "Bedroom"], threshold)
    assert rooms.tolist() == [expected] and confidence.tolist() == [AT]


@pytest.mark.parametrize("minimum,expected", [(AT - EPS, False), (AT, False), (AT + EPS, True)])
def test_out_of_scope_below_at_and_above_the_threshold(minimum, expected):
    assert out_of_scope([AT, np.nan], minimum).tolist() == [expected, False]  # NaN: a model without the signal
    rooms, _ = room_decision([[0.9, 0.1]], ["Kitchen", "Dining"], 0.5, [AT], minimum)
    assert rooms.tolist() == [OUT_OF_SCOPE if expected else "Kitchen"]


@pytest.mark.parametrize("minimum,expected", [(6.0 - EPS, True), (6.0, True), (6.0 + EPS, False)])
def test_listing_ready_below_at_and_above_the_aesthetic_minimum(minimum, expected):
    ready, reason = listing_ready(["GOOD"], ["Kitchen"], [6.0], minimum)
    assert ready.tolist() == [expected] and (reason[0] == "") == expected


def test_listing_ready_says_why_not():
    ready, reason = listing_ready(["GOOD", "BAD", "GOOD"], ["Kitchen", UNCERTAIN, OUT_OF_SCOPE], [6.0, 6.0, 7.0],
                                  6.0 + EPS)
    assert ready.tolist() == [False, False, False]
    assert reason.tolist() == ["aesthetic 6.000 < 6.001", "quality BAD; room uncertain; aesthetic 6.000 < 6.001",
                               OUT_OF_SCOPE]


def test_decide_frame_is_the_vectorised_decide():
    """Many rows at once equal one row at a time; an error row gets no decision."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 200)
    frame = pd.DataFrame({**{f"prob_{c}": probs[:, j] for j, c in enumerate(CLASSES)},
                          "in_scope_prob": rng.random(200), "quality_prob_good": rng.random(200),
                          "aesthetic_score": rng.uniform(1, 10, 200), "error": [""] * 199 + ["unreadable"]})
    t = Thresholds(quality=0.5, min_room_confidence=0.35, listing_ready_min_aesthetic=5.0, min_in_scope=0.2)
    many = decide_frame(frame, t, list(CLASSES))
    assert list(many.columns) == list(DECISION_COLUMNS)
    one = pd.DataFrame([decide(r, t, list(CLASSES)) for r in frame.to_dict("records")])
    pd.testing.assert_frame_equal(many[:-1].reset_index(drop=True), one[:-1], check_dtype=False)
    assert many.iloc[-1].tolist() == ["", None, None, "", False, ""]  # an unreadable photo gets no decision
    shifted = decide_frame(frame.set_axis(frame.index + 1000)[:-1].drop(columns="error"), t, list(CLASSES))
    assert list(shifted.index) == list(range(1000, 1199))  # rows keep their index; no error column: all decided
    assert (shifted["room_decision"] != "").all() and shifted["quality_decision"].isin(["GOOD", "BAD"]).all()
    assert decide({"error": "unreadable"}, t, list(CLASSES)) == dict(zip(DECISION_COLUMNS, ["", None, None, "", False,
                                                                                          ""]))
    assert set(many["room_decision"][:-1]) >= {UNCERTAIN, OUT_OF_SCOPE}


def test_no_threshold_comparison_outside_the_decisions_module():
    """Code that decides GOOD/BAD, uncertain, out of scope or listing-ready calls roomvision.decisions."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"(?<![-=])[<>]=?\s*(\w+\.)*(thresholds?\b|threshold\.|quality_threshold|min_in_scope|"
                         r"min_room_confidence|listing_ready_min_aesthetic|\.quality\b)")
    offenders = [f"{f.relative_to(root)}:{i}: {line.strip()}"
                 for folder in ("roomvision", "pages", "benchmarks") for f in sorted((root / folder).rglob("*.py"))
                 if f.name != "decisions.py"
                 for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "\n".join(offenders)


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
    assert body["results"][0]["quality_decision"] == expected
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
    ready, reason = listing_ready(["GOOD"], ["Kitchen"], [score], threshold)
    assert reason.tolist() == [shown] and not ready[0]
