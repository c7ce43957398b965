import cv2
import numpy as np
import pytest
from PIL import Image

from roomvision.config import QUALITY_THRESHOLDS
from roomvision.quality import (DEGRADATIONS, RULES, aesthetic_target, compute_metrics, crop_borders, degrade,
                                quality_label, quality_reasons, rule_flags, score_distribution, sharpness)


def test_sharpness_falls_monotonically_with_blur(make_room):
    gray = cv2.cvtColor(np.asarray(make_room(1)), cv2.COLOR_RGB2GRAY)
    values = [sharpness(cv2.GaussianBlur(gray, (0, 0), s) if s else gray) for s in (0, 0.8, 1.6, 3.2, 6.4)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_sharpness_does_not_depend_on_image_size(make_room):
    small = np.asarray(make_room(2, (320, 240)))
    big = cv2.resize(small, (1280, 960), interpolation=cv2.INTER_CUBIC)
    s_small = sharpness(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    s_big = sharpness(cv2.cvtColor(big, cv2.COLOR_RGB2GRAY))
    assert s_big == pytest.approx(s_small, rel=0.35)


def test_clean_photo_is_good(make_room):
    label, reasons = quality_label(compute_metrics(make_room(3, (640, 480))))
    assert label == "GOOD", reasons


@pytest.mark.parametrize("kind,expected", [("defocus", "blurry"), ("dark", "too dark"), ("bright", "overexposed"),
                                           ("downscale", "blurry"), ("jpeg", "compression"), ("noise", "noisy")])
def test_degradations_fire_the_matching_rule(make_room, kind, expected):
    img = degrade(make_room(4, (640, 480)), kind, np.random.default_rng(0))
    reasons = quality_reasons(compute_metrics(img))
    assert any(r.startswith(expected) for r in reasons), reasons


def test_exposure_rules_from_luminance():
    dark = Image.fromarray(np.full((300, 300, 3), 20, np.uint8))
    bright = Image.fromarray(np.full((300, 300, 3), 245, np.uint8))
    assert any("too dark" in r for r in quality_reasons(compute_metrics(dark)))
    assert any("overexposed" in r for r in quality_reasons(compute_metrics(bright)))


def test_reason_is_human_readable(make_room):
    img = degrade(make_room(5, (640, 480)), "defocus", np.random.default_rng(1))
    (reason,) = [r for r in quality_reasons(compute_metrics(img)) if r.startswith("blurry")]
    assert f"< {QUALITY_THRESHOLDS['sharpness_min']:g}" in reason and "sharpness" in reason


def test_low_resolution_uses_original_size(make_room):
    m = compute_metrics(make_room(6, (160, 120)))
    assert any(r.startswith("low resolution") for r in quality_reasons(m))


def test_white_letterbox_is_cropped_before_measuring(make_room):
    photo = np.asarray(make_room(7, (416, 300)))
    boxed = np.full((416, 416, 3), 255, np.uint8)
    boxed[58:358] = photo
    assert crop_borders(boxed).shape == photo.shape
    m_photo, m_boxed = compute_metrics(photo), compute_metrics(boxed)
    assert m_boxed["bright_clip"] == pytest.approx(m_photo["bright_clip"], abs=0.01)
    assert m_boxed["lum_p50"] == pytest.approx(m_photo["lum_p50"], abs=2)
    assert m_boxed["border_frac"] == pytest.approx(1 - 300 / 416, abs=0.01)
    assert quality_label(m_boxed)[0] == "GOOD"


def test_blank_image_is_not_cropped_away():
    blank = np.full((100, 100, 3), 255, np.uint8)
    assert crop_borders(blank).shape == blank.shape


def test_aesthetic_target_prefers_good_photos(make_room):
    good = aesthetic_target(compute_metrics(make_room(8, (640, 480))))
    for kind in DEGRADATIONS[:4]:
        bad = aesthetic_target(compute_metrics(degrade(make_room(8, (640, 480)), kind, np.random.default_rng(2))))
        assert 1 <= bad < good <= 10, (kind, bad, good)


def test_score_distribution_is_a_distribution_centred_on_the_score():
    p = score_distribution(6.3)
    assert p.shape == (10,) and p.sum() == pytest.approx(1, abs=1e-6)
    assert float(p @ np.arange(1, 11)) == pytest.approx(6.3, abs=0.05)


def test_unknown_degradation_is_a_clear_error(make_room):
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(make_room(9), "sepia", np.random.default_rng(0))


def _neutral_metrics() -> dict:
    """Metrics of a photo no rule fires on."""
    t = QUALITY_THRESHOLDS
    return {"sharpness": t["sharpness_min"] * 2, "lum_p50": (t["dark_p50_max"] + t["bright_p50_min"]) / 2,
            "dark_clip": 0.0, "bright_clip": 0.0, "width": t["resolution_min"] * 3, "height": t["resolution_min"] * 2,
            "noise": 0.0, "blockiness": 0.0, "tilt_deg": 0.0}


@pytest.mark.parametrize("rule", [r[0] for r in RULES])
@pytest.mark.parametrize("offset", [-1e-3, 0.0, 1e-3])
def test_each_rule_fires_just_past_its_threshold_and_flags_agree_with_reasons(rule, offset):
    """At the threshold a rule does not fire; just past it (below for a minimum, above for a maximum) it does, and
    the per-photo flags, the reasons and the proxy label say the same."""
    import pandas as pd
    key, metric, side, _ = next(r for r in RULES if r[0] == rule)
    m = _neutral_metrics()
    value = QUALITY_THRESHOLDS[key] + offset
    if metric == "short_side":
        m["width"], m["height"] = value + 1000, value
    else:
        m[metric] = value
    fires = (offset < 0) if side == "below" else (offset > 0)
    flags = rule_flags(pd.DataFrame([m])).iloc[0]
    assert bool(flags[key]) is fires and flags.drop(key).sum() == 0
    assert len(quality_reasons(m)) == int(fires)
    assert quality_label(m) == (("BAD", quality_reasons(m)[0]) if fires else ("GOOD", ""))


def test_rule_flags_keep_the_rows_of_the_metrics_they_were_given():
    import pandas as pd
    frame = pd.DataFrame([_neutral_metrics(), _neutral_metrics()], index=[10, 11])
    frame.loc[11, "sharpness"] = QUALITY_THRESHOLDS["sharpness_min"] - 1
    flags = rule_flags(frame)
    assert list(flags.index) == [10, 11] and flags.loc[11, "sharpness_min"] and not flags.loc[10].any()


def test_every_reason_is_given_one_after_another():
    m = _neutral_metrics()
    m["sharpness"], m["noise"] = QUALITY_THRESHOLDS["sharpness_min"] - 1, QUALITY_THRESHOLDS["noise_max"] + 1
    label, reasons = quality_label(m)
    assert label == "BAD" and reasons == "; ".join(quality_reasons(m)) and reasons.count("; ") == 1
