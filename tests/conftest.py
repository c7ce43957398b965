"""Shared fixtures: every test image is generated here, never read from the project tree."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("MPLBACKEND", "Agg")
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def room_like(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A sharp, well-exposed synthetic 'interior': gradients, rectangles and lines."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([80 + 90 * x / w, 90 + 80 * y / h, 110 + 40 * np.sin(x / 17.0)], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(15, 120)), y0 + int(rng.integers(15, 100))
        d.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(20, 235, 3)),
                    outline=tuple(int(v) for v in rng.integers(0, 255, 3)), width=2)
    for _ in range(10):
        d.line([tuple(int(v) for v in rng.integers(0, min(w, h), 2)) for _ in range(2)],
               fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=2)
    return img


@pytest.fixture
def make_room():
    return room_like


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Class folders (with alias names) of generated photos, one unknown folder and one corrupt file."""
    root = tmp_path / "rooms"
    folders = {"bathroom": 0, "Bedroom": 1, "Dinning": 2, "kitchen": 3, "Living room": 4}
    for name, k in folders.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            room_like(k * 100 + i).save(root / name / f"{i}.jpg", quality=92)
    (root / "Garage").mkdir()
    room_like(999).save(root / "Garage" / "x.jpg")
    (root / "kitchen" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Caches (ONNX exports, features, degraded labels) go to a temporary folder, never the project's data/."""
    from roomvision.config import ENV_CACHE_DIR, settings
    os.environ[ENV_CACHE_DIR] = str(tmp_path_factory.mktemp("cache"))
    settings.cache_clear()
    yield


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test reads the environment (as monkeypatched) anew."""
    from roomvision.config import settings
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised Lite0 checkpoint (fast to build, exercises the plumbing, not the numbers)."""
    import torch
    from roomvision.config import CLASSES
    from roomvision.decisions import Calibration
    from roomvision.model import Checkpoint, RoomVisionNet
    from roomvision.preprocess import Preprocess
    torch.manual_seed(0)
    model = RoomVisionNet(pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    Checkpoint(backbone="tf_efficientnet_lite0", classes=list(CLASSES), preprocess=Preprocess(),
               calibration=Calibration(temperature=1.5, quality=0.4), state_dict=model.state_dict(),
               metrics={"validation": {"room_accuracy": 0.2}}, version="tiny").save(path)
    return path


def write_failures(weights: Path, photos, true: list[str], predicted: list[str]) -> Path:
    """A failures CSV as `evaluate` writes it next to `weights`, for `photos` (source and path columns), with the
    true and predicted classes given and confidence / loss falling from row to row."""
    from roomvision.config import CLASSES
    from roomvision.reports import report_paths
    n = len(true)
    out = report_paths(weights)["failures"]
    pd.DataFrame({"path": list(photos["path"]), "source": list(photos["source"]), "true": true,
                  "predicted": predicted, **{f"prob_{c}": 0.2 for c in CLASSES},
                  "confidence": [0.9, 0.5, 0.3][:n], "loss": [2.0, 1.0, 0.5][:n]}).to_csv(out, index=False)
    return out


def needs_shared(sub: str) -> Path:
    """A dataset beside the project; skipped where it is absent, except under CI=true, where that fails."""
    path = SHARED / sub
    if not path.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dataset {path} is missing (CI must have ../shared/datasets beside the project)")
        pytest.skip(f"dataset {path} not present (CI has it beside the project)")
    return path


@pytest.fixture(scope="session")
def committed_inputs() -> np.ndarray:
    """Model inputs for the committed weights: real photos from scikit-image plus generated rooms."""
    from skimage import data as skdata
    from roomvision.modelinfo import read_model_info
    from roomvision.config import DEFAULT_WEIGHTS
    from roomvision.preprocess import EvalPreprocess
    photos = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee()), Image.fromarray(skdata.astronaut()),
              room_like(1), room_like(2, (500, 300))]
    return EvalPreprocess(read_model_info(DEFAULT_WEIGHTS).preprocess).batch(photos)
