"""Checks against the real photo sets beside the project (CI has them; skipped elsewhere)."""
import hashlib

import numpy as np
import pytest

from conftest import needs_shared
from roomvision.config import CLASSES, DEFAULT_MANIFEST, DEFAULT_WEIGHTS
from roomvision.data import load_manifest, manifest_roots, resolve_paths, scan_root
from roomvision.inference import Predictor


def test_house_rooms_scan_finds_every_class():
    items, unknown = scan_root(needs_shared("house-rooms"))
    assert {c for _, c in items} == set(CLASSES) and not unknown
    assert len(items) == 5192


def test_committed_manifest_matches_the_files():
    needs_shared("house-rooms")
    df = load_manifest(DEFAULT_MANIFEST)
    sample = df.sample(40, random_state=0)
    for path, sha in zip(resolve_paths(sample, manifest_roots(DEFAULT_MANIFEST)), sample["sha256"]):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


# floors: the full test-split accuracy (0.906, 0.845) less three standard errors of a 400-photo sample
@pytest.mark.parametrize("source,floor", [("house-rooms", 0.86), ("places365-rooms", 0.79)])
def test_default_model_on_a_test_sample(source, floor):
    needs_shared(source)
    df = load_manifest(DEFAULT_MANIFEST)
    test = df[(df["source"] == source) & (df["split"] == "test")].sample(400, random_state=1)
    predictor = Predictor(DEFAULT_WEIGHTS, device="cpu")
    rows = predictor.predict_paths(resolve_paths(test, manifest_roots(DEFAULT_MANIFEST)), batch_size=50)
    accuracy = np.mean([r["room"] == c for r, c in zip(rows, test["class"])])
    assert accuracy >= floor, accuracy


def test_letterboxed_house_rooms_photos_are_not_overexposed_by_their_borders():
    needs_shared("house-rooms")
    df = load_manifest(DEFAULT_MANIFEST)
    boxed = df[(df["source"] == "house-rooms") & (df["border_frac"] > 0.1)]
    assert len(boxed) > 1000  # about 31% of the set is letterboxed
    assert (boxed["quality_reasons"].str.contains("overexposed")).mean() < 0.01
