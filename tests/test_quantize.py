"""The INT8 fast profile: fake quantisation as ONNX Runtime runs it, the shipped model's agreement with fp32 on real
photos, how a predictor finds the INT8 model, and a resumable fine-tune."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from roomvision.config import DEFAULT_WEIGHTS
from roomvision.inference import Predictor, int8_onnx
from roomvision.model import Checkpoint
from roomvision.quantize import (PerChannelWeightQuant, QATConfig, compare_profiles, export_int8, integer_kernels,
                                 load_qat, prepare_qat, quantisable_convs, run_qat, set_observers)
from tests.conftest import needs_shared

SHIPPED_INT8 = DEFAULT_WEIGHTS.with_suffix(".int8.onnx")


def test_weight_quantisation_is_symmetric_int8_per_output_channel():
    w = torch.randn(8, 4, 3, 3) * torch.arange(1, 9).view(8, 1, 1, 1)
    q = PerChannelWeightQuant()(w)
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    steps = q / scale.view(8, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # on each channel's own grid
    assert steps.abs().max() <= 127 + 1e-4 and torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_every_convolution_becomes_an_integer_kernel(tiny_checkpoint, tmp_path):
    model = prepare_qat(Checkpoint.load(tiny_checkpoint).build_model())
    with torch.no_grad():
        model.backbone(torch.randn(4, 3, 224, 224))
    set_observers(model, False)
    out = export_int8(model, tiny_checkpoint, tmp_path / "tiny.int8.onnx", QATConfig(weights=str(tiny_checkpoint)))
    kernels = integer_kernels(out)
    assert kernels["QLinearConv"] == len(quantisable_convs(model)) == 49
    assert kernels["QLinearAdd"] == 9  # every residual sum


def test_convolutions_left_in_fp32_are_named_and_checked(tiny_checkpoint):
    model = prepare_qat(Checkpoint.load(tiny_checkpoint).build_model(), keep_fp32=("conv_stem",))
    assert "conv_stem" not in model.quant_points and "conv_head" in model.quant_points
    with pytest.raises(ValueError, match="no convolution named conv_nope; known: conv_stem"):
        prepare_qat(Checkpoint.load(tiny_checkpoint).build_model(), keep_fp32=("conv_nope",))


def test_shipped_int8_model_runs_integer_kernels_only():
    assert int8_onnx(DEFAULT_WEIGHTS) == SHIPPED_INT8
    assert integer_kernels(SHIPPED_INT8)["QLinearConv"] == 49


def test_fast_profile_keeps_the_decisions_on_real_photos():
    """The README's targets on the committed weights: rooms, GOOD/BAD and out-of-scope decisions unchanged, test
    accuracy no more than half a point lower, on 256 test photos of each set."""
    needs_shared("house-rooms")
    needs_shared("places365-rooms")
    table = compare_profiles(DEFAULT_WEIGHTS, per_source=256).set_index("source")
    assert list(table["photos"]) == [256, 256]
    assert (table["rooms_unchanged"] >= 0.985).all(), table
    assert (table["good_bad_unchanged"] >= 0.99).all(), table
    assert (table["scope_unchanged"] >= 0.98).all(), table
    assert (table["accuracy_int8"] >= table["accuracy_fp32"] - 0.005).all(), table


def test_fast_predictions_say_they_are_int8(committed_inputs):
    fast, default = Predictor(DEFAULT_WEIGHTS, profile="fast"), Predictor(DEFAULT_WEIGHTS)
    assert fast.version == default.version + "+int8"
    a = default.scores(default.run(committed_inputs, default.head_outputs))
    b = fast.scores(fast.run(committed_inputs, fast.head_outputs))
    assert np.array_equal(a["probs"].argmax(1), b["probs"].argmax(1))
    assert np.abs(a["probs"] - b["probs"]).max() < 0.1 and not np.array_equal(a["probs"], b["probs"])


def test_a_version_that_only_adds_heads_is_served_by_the_shipped_int8(tmp_path):
    copy = tmp_path / "market.pt"
    shutil.copy(DEFAULT_WEIGHTS, copy)
    assert int8_onnx(copy) == SHIPPED_INT8


def test_a_version_with_other_tensors_names_the_command(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"no INT8 model for tiny.pt .*python -m roomvision quantize --weights"):
        Predictor(tiny_checkpoint, profile="fast")


@pytest.mark.parametrize("kwargs, message", [({"profile": "turbo"}, "profile must be default or fast, not 'turbo'"),
                                             ({"profile": "fast", "backend": "torch"}, "fast profile runs the INT8"),
                                             ({"profile": "fast", "device": "cuda"}, "fast profile runs the INT8")])
def test_profile_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor(DEFAULT_WEIGHTS, **kwargs)


def test_fine_tune_resumes_from_its_saved_state(tiny_checkpoint, tmp_path, monkeypatch, make_room):
    """Two steps, stopped after the first save, resumed: the run ends at its last step with the ranges frozen."""
    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.jpg")
        make_room(i).save(files[-1])
    rng = np.random.default_rng(0)
    targets = (files, rng.random((8, 1280), np.float32), rng.normal(size=(8, 5)).astype(np.float32))
    monkeypatch.setattr("roomvision.quantize.training_photos", lambda weights, limit: targets)
    cfg = dict(weights=str(tiny_checkpoint), run_dir=str(tmp_path / "run"), batch_size=4, save_every=1)
    first = run_qat(QATConfig(**cfg, epochs=0.5))  # one of two steps per epoch
    assert torch.load(first, weights_only=False)["step"] == 1
    state = run_qat(QATConfig(**cfg, epochs=1.0), resume=True)
    saved = torch.load(state, weights_only=False)
    assert saved["step"] == 2 and [h["step"] for h in saved["config"]["history"]] == [1, 2]
    model, run = load_qat(state)
    assert run.epochs == 1.0 and not any(m.observer_enabled[0] for ms in model.quant_points.values()
                                         for m in ms if hasattr(m, "observer_enabled"))


def test_sidecar_records_what_the_int8_model_was_made_from():
    meta = json.loads(SHIPPED_INT8.with_suffix(".onnx.json").read_text())
    assert {"tensors_sha256", "graph", "int8_graph_version", "qat"} <= set(meta)
    assert meta["qat"]["steps"] > 0  # fine-tuned, not only calibrated


@pytest.fixture
def photos(tmp_path, make_room):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_room(i).save(folder / f"{i}.jpg")
    return folder


def test_batch_scoring_serves_int8_by_default_and_fp32_on_request(photos, tmp_path, capsys):
    import pandas as pd
    from roomvision.cli import main
    fast, exact = tmp_path / "fast.csv", tmp_path / "exact.csv"
    assert main(["score", str(photos), "--out", str(fast), "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu"]) == 0
    assert "scoring with the INT8 model (fast profile; --fp32 for the fp32 model)" in capsys.readouterr().err
    assert main(["score", str(photos), "--out", str(exact), "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu",
                 "--fp32"]) == 0
    version = Predictor(DEFAULT_WEIGHTS).version
    assert set(pd.read_csv(fast)["model_version"]) == {version + "+int8"}
    assert set(pd.read_csv(exact)["model_version"]) == {version}
    assert main(["score", str(photos), "--out", str(exact), "--fast", "--fp32"]) == 2
    assert "choose --fast or --fp32, not both" in capsys.readouterr().err


def test_predict_fast_without_an_int8_model_says_how_to_make_one(photos, tiny_checkpoint, capsys):
    from roomvision.cli import main
    assert main(["predict", str(photos), "--weights", str(tiny_checkpoint), "--fast"]) == 2
    assert "no INT8 model for tiny.pt" in capsys.readouterr().err


def test_api_serves_the_fast_profile(photos):
    from fastapi.testclient import TestClient
    from roomvision.api import create_app
    with TestClient(create_app(DEFAULT_WEIGHTS, device="cpu", profile="fast")) as client:
        health = client.get("/health").json()
        assert health["profile"] == "fast" and health["model_version"].endswith("+int8")
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(photos.iterdir())]
        results = client.post("/v1/predict", files=files).json()["results"]
        assert len(results) == 3 and all(r["model_version"] == health["model_version"] for r in results)


def test_serve_fast_starts_the_api_on_the_int8_model(monkeypatch):
    from fastapi.testclient import TestClient
    from roomvision.cli import main
    started = {}
    monkeypatch.setattr("roomvision.api.serve", lambda app, host, port: started.update(app=app))
    assert main(["serve", "--fast", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu"]) == 0
    with TestClient(started["app"]) as client:
        assert client.get("/health").json()["profile"] == "fast"


def test_pruned_graphs_are_made_once_and_answer_like_the_full_graph(committed_inputs):
    from roomvision.inference import ensure_onnx, onnx_session, pruned_graph
    from roomvision.modelinfo import HEAD_OUTPUTS, ONNX_OUTPUTS
    full = ensure_onnx(DEFAULT_WEIGHTS)
    pruned = pruned_graph(full, HEAD_OUTPUTS)
    made = pruned.stat().st_mtime_ns
    assert pruned_graph(full, HEAD_OUTPUTS) == pruned and pruned.stat().st_mtime_ns == made  # kept, not remade
    assert pruned.stat().st_size < full.stat().st_size
    a = onnx_session(full, None).run(list(ONNX_OUTPUTS), {"x": committed_inputs})
    b = onnx_session(pruned, None).run(list(HEAD_OUTPUTS), {"x": committed_inputs})
    for name, value in zip(HEAD_OUTPUTS, b):
        np.testing.assert_allclose(value, a[ONNX_OUTPUTS.index(name)], rtol=1e-4, atol=1e-5)
