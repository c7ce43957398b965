"""Listing-style changes (training augmentation and the robustness report)."""
import json

import numpy as np
import pytest
from PIL import Image

from roomvision.cli import main
from roomvision.data import prepare
from roomvision.robustness import REPORT_TRANSFORMS, TRAIN_AUGMENTATIONS, listing_augment


@pytest.mark.parametrize("name", sorted({**TRAIN_AUGMENTATIONS, **REPORT_TRANSFORMS}))
def test_each_change_gives_a_valid_different_photo(name, make_room):
    img = make_room(3, (320, 240))
    change = {**TRAIN_AUGMENTATIONS, **REPORT_TRANSFORMS}[name]
    out = change(img, np.random.default_rng(0))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and min(out.size) >= 1
    assert out.size != img.size or np.abs(np.asarray(out, float) - np.asarray(img, float)).mean() > 1.0


def test_training_augmentation_is_reproducible_from_its_seed(make_room):
    img = make_room(4)
    a, names = listing_augment(img, np.random.default_rng(7))
    b, _ = listing_augment(img, np.random.default_rng(7))
    assert names and np.array_equal(np.asarray(a), np.asarray(b))


def test_robustness_report_compares_models(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    prepare([tiny_dataset], manifest, workers=1)
    out = tmp_path / "reports"
    assert main(["evaluate", "--robustness", "--weights", str(tiny_checkpoint), "--compare", str(tiny_checkpoint),
                 "--manifest", str(manifest), "--data-root", str(tiny_dataset), "--split", "train",
                 "--out-dir", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "grayscale 128 px" in printed and "largest drop in points" in printed
    rows = json.loads((out / "tiny.train-robustness.metrics.json").read_text())
    assert {r["condition"] for r in rows} == {"as is", *REPORT_TRANSFORMS}
    assert all(0 <= r["accuracy"] <= 1 for r in rows) and len(rows) == 2 * (1 + len(REPORT_TRANSFORMS))
