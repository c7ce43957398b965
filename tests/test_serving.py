"""Serving without PyTorch: shared NumPy preprocessing, checkpoint headers, and a torch-free predictor process."""
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from roomvision.config import DEFAULT_WEIGHTS
from roomvision.model import Checkpoint
from roomvision.modelinfo import CheckpointError, read_model_info
from roomvision.preprocess import EvalPreprocess, Preprocess


@pytest.mark.parametrize("size", [(416, 416), (640, 427), (300, 500), (224, 224), (120, 90), (257, 1000)])
@pytest.mark.parametrize("pre", [Preprocess(), Preprocess(resize_size=224), Preprocess(240, 274, "bilinear")])
def test_numpy_preprocessing_equals_torchvision(make_room, size, pre):
    img = make_room(5, size)
    reference = T.Compose([T.Resize(pre.resize_size, interpolation=T.InterpolationMode(pre.interpolation)),
                           T.CenterCrop(pre.input_size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])(img)
    got = EvalPreprocess(pre)(img)
    assert got.shape == (3, pre.input_size, pre.input_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference.numpy(), atol=1e-6)


def test_header_reader_matches_the_full_loader(tiny_checkpoint):
    info, full = read_model_info(tiny_checkpoint), Checkpoint.load(tiny_checkpoint)
    for name in ("backbone", "classes", "preprocess", "calibration", "metrics", "version", "created"):
        assert getattr(info, name) == getattr(full, name), name


def test_header_reader_rejects_foreign_and_malicious_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"format": "roomvision-checkpoint", "x": Evil()}))
    for path, message in ((text, "not a readable"), (plain, "not a roomvision checkpoint"),
                          (evil, "not a readable"), (tmp_path / "missing.pt", "not found")):
        with pytest.raises(CheckpointError, match=message):
            read_model_info(path)


def test_serving_process_never_imports_torch(tiny_checkpoint, make_room, tmp_path):
    pytest.importorskip("onnxruntime")
    image = tmp_path / "room.jpg"
    make_room(8).save(image)
    code = f"""
import sys
import roomvision.webapp
import roomvision.learning.retraining  # the Relabel page's active-learning order and the Model page read it
from roomvision.inference import Predictor
from roomvision.images import load_image
p = Predictor({str(tiny_checkpoint)!r}, device="auto")
rows = p.predict_paths([{str(image)!r}, "missing.jpg"])
heat, cls = p.explain(load_image({str(image)!r}))
assert p.backend == "onnx" and rows[0]["error"] == "" and rows[1]["error"], rows
assert heat.shape == (7, 7)
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """Checkpoints written before 'calibration' carried their temperature and threshold under 'thresholds'."""
    import torch
    raw = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    cal = raw.pop("calibration", None) or raw["thresholds"]
    raw.update(format_version=1, thresholds={**cal, "min_room_confidence": 0.5, "listing_ready_min_aesthetic": 5.5})
    old = tmp_path / "v1.pt"
    torch.save(raw, old)
    info = read_model_info(old)
    assert (info.calibration.temperature, info.calibration.quality) == (cal["temperature"], cal["quality"])
    assert Checkpoint.load(old).calibration == info.calibration


def _damage(src, dst, value=float("nan")):
    """A copy of a checkpoint with one weight tensor overwritten, its header (and saved digest) left as it was."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    key = "room_head.weight"
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], value)
    torch.save(payload, dst)
    return dst


@pytest.mark.parametrize("value", [float("nan"), 0.5])
def test_a_damaged_version_is_refused_everywhere_it_could_be_used(tiny_checkpoint, tmp_path, value):
    """One tensor overwritten (NaN, or plausible numbers) under an intact header: listed as damaged, never loaded,
    never served."""
    from fastapi.testclient import TestClient
    from roomvision.api import create_app
    from roomvision.inference import Predictor
    from roomvision.versions import versions_table

    def serve():
        with TestClient(create_app(bad, device="cpu")):
            pass
    assert read_model_info(tiny_checkpoint, verify=True).weights_digest  # saved with every checkpoint
    bad = _damage(tiny_checkpoint, tmp_path / "tiny-people-1.pt", value)
    assert read_model_info(bad).version == "tiny"  # the header alone looks fine
    for load in (lambda: read_model_info(bad, verify=True), lambda: Checkpoint.load(bad),
                 lambda: Predictor(bad, device="cpu"), serve):
        with pytest.raises(CheckpointError, match="is damaged: its weights do not match the checksum"):
            load()
    listed = versions_table([tiny_checkpoint, bad]).set_index("file")
    assert listed.loc[tiny_checkpoint.name, "error"] == ""
    assert "is damaged" in listed.loc["tiny-people-1.pt", "error"]


def test_non_finite_weights_without_a_digest_are_refused(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    payload.pop("weights_digest")
    torch.save(payload, tmp_path / "old.pt")
    Checkpoint.load(tmp_path / "old.pt")  # an older checkpoint without a digest still loads
    payload = torch.load(_damage(tmp_path / "old.pt", tmp_path / "old-nan.pt"), map_location="cpu", weights_only=True)
    with pytest.raises(CheckpointError, match="is damaged: non-finite weights in room_head.weight"):
        Checkpoint.load(tmp_path / "old-nan.pt")


def test_non_finite_outputs_are_an_error_row_never_a_prediction(make_room):
    from roomvision.inference import NON_FINITE, Predictor
    predictor = Predictor(DEFAULT_WEIGHTS, device="cpu")
    real = predictor.run

    def poisoned(x, outputs):
        raw = real(x, outputs)
        raw["room"][1] = np.nan
        return raw
    predictor.run = poisoned
    rows = predictor.predict_images([make_room(1), make_room(2), make_room(3)])
    assert [r["error"] for r in rows] == ["", NON_FINITE, ""] and "room" not in rows[1]
