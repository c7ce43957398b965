"""Hostile and odd inputs: each decodes to RGB or fails with a clear message; serving carries on."""
import io
import re
import time

import numpy as np
import pytest
from PIL import Image

from image_corpus import make_corpus
from roomvision.config import MAX_ASPECT_RATIO, MAX_UPLOAD_BYTES
from roomvision.images import ImageDecodeError, load_image
from roomvision.inference import Predictor

CORPUS = make_corpus(MAX_UPLOAD_BYTES)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 100 and sum(expected is not None for _, _, expected in CORPUS) >= 50


@pytest.mark.parametrize("min_side", [None, 256])
@pytest.mark.parametrize("name,data,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_each_file_decodes_or_fails_with_its_message(name, data, expected, min_side):
    started = time.monotonic()
    if expected is None:
        img = load_image(data, min_side=min_side)
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
        assert max(img.size) <= MAX_ASPECT_RATIO * min(img.size)
    else:
        with pytest.raises(ImageDecodeError, match=re.escape(expected)):
            load_image(data, min_side=min_side)
    assert time.monotonic() - started < 5  # no quadratic frame walks, no huge allocations


def test_exif_orientation_is_applied():
    for orientation, size in ((1, (160, 120)), (6, (120, 160)), (8, (120, 160)), (3, (160, 120))):
        img = load_image(dict((n, d) for n, d, _ in CORPUS)[f"exif_orientation_{orientation}.jpg"], min_side=64)
        assert img.size == size and img.info["original_size"] == size  # stored 160x120, displayed turned


def test_transparency_is_composited_on_white():
    img = np.asarray(load_image(dict((n, d) for n, d, _ in CORPUS)["rgba.png"]))
    assert img[:, 0].mean() > 250  # alpha 0 on the left edge shows white


def test_sixteen_bit_keeps_its_range():
    img = np.asarray(load_image(dict((n, d) for n, d, _ in CORPUS)["i16.png"]))
    assert img.max() > 200 and img.min() < 10


def test_animated_file_uses_first_frame():
    img = np.asarray(load_image(dict((n, d) for n, d, _ in CORPUS)["animated.gif"]))
    assert abs(int(img.mean()) - 30) < 5


def test_messages_name_the_problem():
    data = dict((n, d) for n, d, _ in CORPUS)
    for name, phrase in [("empty.jpg", "empty"), ("bomb.png", "too large"), ("too_big.jpg", "too large"),
                         ("text.jpg", "not an image"), ("truncated.jpg", "truncated")]:
        with pytest.raises(ImageDecodeError, match=phrase):
            load_image(data[name])


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_predictor_serves_every_good_file_after_bad_ones(tiny_checkpoint):
    predictor = Predictor(tiny_checkpoint, device="cpu")
    rows = predictor.predict_named([(name, data) for name, data, _ in CORPUS])
    for (name, _, expected), (row, _) in zip(CORPUS, rows):
        assert row["path"] == name
        if expected is None:
            assert not row.get("error") and abs(sum(v for k, v in row.items() if k.startswith("prob_")) - 1) < 1e-4
        else:
            assert expected in row["error"], (name, row["error"])


def test_large_jpeg_decodes_at_reduced_scale_for_the_model():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(buf, "JPEG")
    full, small = load_image(buf.getvalue()), load_image(buf.getvalue(), min_side=256)
    assert full.size == (2000, 1500)
    assert min(small.size) >= 256 and small.width < 2000 / 2


def test_iphone_heic_photos_decode_like_their_jpeg(make_room, tmp_path):
    """HEIC (what iPhones save) is read through pillow-heif and scores like the same photo as a JPEG."""
    from roomvision.config import DEFAULT_WEIGHTS
    photo = make_room(5, (640, 480))
    heic, jpeg = tmp_path / "room.heic", tmp_path / "room.jpg"
    photo.save(heic, quality=95)
    photo.save(jpeg, quality=95)
    img = load_image(heic)
    assert img.mode == "RGB" and img.size == (640, 480) and img.info["original_size"] == (640, 480)
    a, b = Predictor(DEFAULT_WEIGHTS, device="cpu").predict_paths([heic, jpeg])
    assert not a["error"] and a["room"] == b["room"]
    assert a[f"prob_{a['room']}"] == pytest.approx(b[f"prob_{b['room']}"], abs=0.05)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated|not an image"):
        load_image(heic.read_bytes()[:200])
