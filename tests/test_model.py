import numpy as np
import pytest
import torch

from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.devices import resolve_device
from roomvision.inference import Predictor
from roomvision.model import Checkpoint, CheckpointError, MarketStage, RoomVisionNet, create_backbone
from roomvision.modelinfo import MARKET_OUTPUT, ONNX_OUTPUTS, read_model_info
from roomvision.preprocess import Preprocess
from roomvision.transforms import eval_transform


def test_forward_shapes():
    model = RoomVisionNet(pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 224, 224))
    assert out["room"].shape == (3, len(CLASSES))
    assert out["quality"].shape == (3,)
    assert out["aesthetic"].shape == (3, 10)


def test_predictions_are_probabilities(tiny_checkpoint, make_room):
    p = Predictor(tiny_checkpoint, device="cpu")
    rows = p.predict_images([make_room(1), make_room(2, (500, 200))])
    for r in rows:
        assert sum(r[f"prob_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= r["quality_prob_good"] <= 1
        assert 1 <= r["aesthetic_score"] <= 10 and r["aesthetic_std"] >= 0
        assert sum(r["aesthetic_distribution"]) == pytest.approx(1.0, abs=1e-3)
        assert r["room"] in CLASSES


def test_checkpoint_describes_itself(tiny_checkpoint):
    ckpt = Checkpoint.load(tiny_checkpoint)
    assert ckpt.classes == list(CLASSES) and ckpt.backbone == "tf_efficientnet_lite0"
    assert ckpt.preprocess.input_size == 224 and ckpt.preprocess.mean == (0.5, 0.5, 0.5)
    assert ckpt.calibration.temperature == 1.5 and ckpt.calibration.quality == 0.4
    assert ckpt.created and ckpt.metrics["validation"]["room_accuracy"] == 0.2


def test_committed_checkpoint_round_trip_keeps_its_outputs(tmp_path, committed_inputs):
    """Save and reload the committed model: every raw output is unchanged (relative tolerance)."""
    ckpt = Checkpoint.load(DEFAULT_WEIGHTS)
    again = tmp_path / "again.pt"
    ckpt.save(again)
    reloaded = Checkpoint.load(again)
    assert reloaded.calibration == ckpt.calibration and reloaded.preprocess == ckpt.preprocess
    x = torch.from_numpy(committed_inputs)
    with torch.no_grad():
        a, b = ckpt.build_model()(x), reloaded.build_model()(x)
    assert a["room"].std() > 0.5  # a trained model: far from the near-uniform outputs of a random one
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-5)


def test_bad_weights_files_give_clear_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        Checkpoint.load(tmp_path / "text.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a roomvision checkpoint"):
        Checkpoint.load(tmp_path / "foreign.pt")
    ckpt = Checkpoint.load(tiny_checkpoint)
    ckpt.backbone = "tf_efficientnet_lite1"
    with pytest.raises(CheckpointError, match="do not match backbone"):
        ckpt.build_model()


def test_cuda_request_without_gpu_is_clear(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Predictor(tiny_checkpoint, device="cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu")
    assert resolve_device("auto") == "cpu"


def test_packaged_imagenet_weights_recognise_a_real_photo():
    """Strict key match plus a sensible ImageNet top-5 on scikit-image's photo of a cat."""
    from skimage import data as skdata
    from PIL import Image
    from torchvision.models import ResNet18_Weights
    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    model = create_backbone("tf_efficientnet_lite0", pretrained=True).eval()
    tf = eval_transform(Preprocess())
    results = {}
    for photo, expected in ((skdata.chelsea(), {"tabby", "tiger cat", "Egyptian cat"}),
                            (skdata.coffee(), {"espresso", "cup", "coffee mug"})):
        with torch.no_grad():
            logits = model(tf(Image.fromarray(photo)).unsqueeze(0))[0]
        top5 = [names[i] for i in logits.topk(5).indices]
        results[tuple(sorted(expected))] = top5
        assert expected & set(top5[:2]), top5


def autograd_gradcam(model, x, c):
    """Reference Grad-CAM: gradients of the room logit with respect to the last feature map."""
    with torch.enable_grad():
        fmap = model.backbone.forward_features(x).detach().requires_grad_(True)
        logit = model.room_head(model.backbone.forward_head(fmap))[0, c]
        (grad,) = torch.autograd.grad(logit, fmap)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1))[0].detach().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_explanation_equals_autograd_gradcam(tiny_checkpoint, make_room, backend):
    pytest.importorskip("onnxruntime")
    p = Predictor(tiny_checkpoint, device="cpu", backend=backend)
    img = make_room(3)
    heat, cls = p.explain(img)
    assert heat.shape == (7, 7) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    row = p.predict_images([img], with_cam=True)[0]
    assert cls == CLASSES.index(row["room"])
    np.testing.assert_allclose(row["room_cam"], heat, atol=1e-6)
    model = Checkpoint.load(tiny_checkpoint).build_model()
    x = torch.from_numpy(p.transform.batch([img]))
    for c in (cls, (cls + 1) % len(CLASSES)):
        heat_c, _ = p.explain(img, class_index=c)
        np.testing.assert_allclose(heat_c, autograd_gradcam(model, x, c), atol=2e-3)
    assert all(param.grad is None for param in model.parameters())


def test_fused_batchnorm_gives_the_same_outputs(tiny_checkpoint):
    from roomvision.model import fuse_batchnorm
    torch.manual_seed(0)
    model = Checkpoint.load(tiny_checkpoint).build_model()
    for m in model.modules():  # non-trivial statistics so the fold has something to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        fused = fuse_batchnorm(model)
        got = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for k in expected:
        assert torch.allclose(expected[k], got[k], atol=1e-4, rtol=1e-4), k


def test_a_market_stage_copied_from_the_model_repeats_its_room_logits_in_both_backends(committed_inputs, tmp_path,
                                                                                       monkeypatch):
    """An untouched copy of the last stage with the room head's rows of its rooms answers exactly the committed
    model's room logits of those rooms: the stage reads the right input, in PyTorch and in the version's own
    exported graph."""
    from roomvision.learning.market import fit_gate, fit_market_head
    from roomvision.config import settings
    from roomvision.learning.retraining import save_market_version
    monkeypatch.setenv("ROOMVISION_CACHE_DIR", str(tmp_path / "cache"))
    settings.cache_clear()
    model = Checkpoint.load(DEFAULT_WEIGHTS).build_model()
    classes = [0, 1, 3, 4]
    stage = MarketStage(model.backbone, len(classes)).eval()
    with torch.no_grad():
        stage.head.weight.copy_(model.room_head.weight[classes])
        stage.head.bias.copy_(model.room_head.bias[classes])
    rng = np.random.default_rng(0)
    head = fit_market_head("copy", rng.normal(size=(20, 3)), np.repeat(classes, 5), fit_gate(rng.normal(size=(9, 3)),
                                                                                             rng.normal(size=(9, 3))))
    out = save_market_version(DEFAULT_WEIGHTS, tmp_path / "copy.pt", {**head.to_dict(), "stage": True}, {}, stage)
    onnx, eager = Predictor(out, backend="onnx"), Predictor(out, backend="torch")
    assert MARKET_OUTPUT in onnx.head_outputs and onnx.graph.path.parent == tmp_path / "cache" / "onnx"
    a, b = (p.run(committed_inputs, ("room", MARKET_OUTPUT)) for p in (onnx, eager))
    for raw in (a, b):
        np.testing.assert_allclose(raw[MARKET_OUTPUT], raw["room"][:, classes], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(a[MARKET_OUTPUT], b[MARKET_OUTPUT], rtol=1e-3, atol=2e-3)
    assert np.abs(a[MARKET_OUTPUT]).max() > 1


def test_a_version_with_imagenet_features_computes_the_packaged_backbone_in_both_backends(committed_inputs, tmp_path,
                                                                                         monkeypatch):
    """A version's reference features are the packaged ImageNet backbone's (EfficientNet-Lite2) pooled features
    beside those of its last stages tuned on thumbnails (the committed file; the header names both), on the same
    input, in its own exported graph and in PyTorch, and what `saved_reference` computes at fitting time."""
    from roomvision.config import settings
    from roomvision.learning.finetune import saved_reference
    from roomvision.learning.market import fit_gate, fit_market_head
    from roomvision.learning.retraining import save_market_version
    from roomvision.model import reference_backbone
    from roomvision.modelinfo import IMAGENET_REFERENCE, REFERENCE_BACKBONE, REFERENCE_OUTPUT
    monkeypatch.setenv("ROOMVISION_CACHE_DIR", str(tmp_path / "cache"))
    settings.cache_clear()
    rng = np.random.default_rng(0)
    gate = fit_gate(rng.normal(size=(9, 3)), rng.normal(size=(9, 3)))
    head = fit_market_head("ref", rng.normal(size=(20, 3)), np.repeat([0, 3], 10), gate,
                           reference=rng.normal(size=(20, 2)))
    reference = saved_reference()
    out = save_market_version(DEFAULT_WEIGHTS, tmp_path / "ref.pt", head.to_dict(), {}, reference=reference)
    assert read_model_info(out).market["reference"] == REFERENCE_BACKBONE == "tf_efficientnet_lite2+thumbnails"
    onnx, eager = Predictor(out, backend="onnx"), Predictor(out, backend="torch")
    assert REFERENCE_OUTPUT in onnx.head_outputs and onnx.graph.path.parent == tmp_path / "cache" / "onnx"
    a, b = (p.run(committed_inputs, (REFERENCE_OUTPUT,))[REFERENCE_OUTPUT] for p in (onnx, eager))
    with torch.inference_mode():
        packaged = reference_backbone()(torch.from_numpy(committed_inputs)).numpy()
        fitted_on = reference(torch.from_numpy(committed_inputs)).numpy()
        imagenet = reference_backbone(IMAGENET_REFERENCE)(torch.from_numpy(committed_inputs)).numpy()
    assert a.shape == (len(committed_inputs), 2 * imagenet.shape[1])
    for got in (a, b, fitted_on):
        np.testing.assert_allclose(got, packaged, rtol=1e-2, atol=5e-2)  # float16 weights
    np.testing.assert_allclose(a, fitted_on, rtol=1e-3, atol=2e-3)
    width = imagenet.shape[1]
    np.testing.assert_allclose(a[:, :width], imagenet, rtol=1e-2, atol=5e-2)  # ImageNet's, then the tuned stages'
    assert np.abs(a[:, width:] - imagenet).mean() > 10 * np.abs(a[:, :width] - imagenet).mean()
    base = Predictor(DEFAULT_WEIGHTS, backend="onnx").run(committed_inputs, ("features",))["features"]
    assert np.abs(a[:, :width] - base).mean() > 10 * np.abs(a - packaged).mean()  # not the served features


def test_a_missing_or_foreign_thumbnail_stages_file_is_a_clear_error(tmp_path, monkeypatch):
    """Building the thumbnail reference without its committed tensors names the file and the command that makes it;
    a version (its tensors in its checkpoint) is built without the file."""
    from roomvision.model import RoomVisionNet, reference_backbone
    from roomvision.modelinfo import CheckpointError, THUMBNAIL_REFERENCE
    monkeypatch.setattr("roomvision.model.THUMBNAIL_STAGES", tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="none.pt is missing: make it with `python -m roomvision "
                                              "train-thumbnail-features"):
        reference_backbone(THUMBNAIL_REFERENCE)
    assert RoomVisionNet(pretrained=False, reference=THUMBNAIL_REFERENCE).reference is not None
    torch.save({"state_dict": {"conv_head.weight": torch.zeros(1)}}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="holds other tensors than Lite2's stages from 5 on"):
        reference_backbone(THUMBNAIL_REFERENCE)


def test_onnx_backend_matches_pytorch_on_the_committed_model(committed_inputs):
    """Raw logits, pooled features and activation maps of the committed weights, ONNX Runtime vs PyTorch."""
    pytest.importorskip("onnxruntime")
    onnx = Predictor(DEFAULT_WEIGHTS, device="cpu", backend="onnx")
    eager = Predictor(DEFAULT_WEIGHTS, device="cpu", backend="torch")
    assert onnx.backend == "onnx" and eager.backend == "torch"
    a, b = onnx.run(committed_inputs, ONNX_OUTPUTS), eager.run(committed_inputs, ONNX_OUTPUTS)
    for k in ONNX_OUTPUTS:
        scale = np.abs(b[k]).max()
        assert scale > 0.1, k
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-4 * scale, err_msg=k)
    assert (a["room"].argmax(1) == b["room"].argmax(1)).all()


def test_quality_descriptor_layout_sees_dark_corners():
    """The luminance layout in the photo-quality descriptor: a vignetted copy of a photo has darker corner cells
    relative to its centre, an evenly lit one does not."""
    from roomvision.modelinfo import DIRECT_FEATURES, LAYOUT_GRID
    model = RoomVisionNet(pretrained=False).eval()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    even = torch.full((1, 3, 224, 224), 0.2)
    vignetted = even - 0.8 * (yy ** 2 + xx ** 2) / 2
    with torch.no_grad():
        d = {name: model.forward_with_quality_features(x)[2][0] for name, x in
             (("even", even), ("vignetted", vignetted))}
    cells = LAYOUT_GRID ** 2
    for name, descriptor in d.items():
        layout = descriptor[DIRECT_FEATURES - cells:DIRECT_FEATURES].reshape(LAYOUT_GRID, LAYOUT_GRID)
        corners_vs_centre = layout[[0, 0, -1, -1], [0, -1, 0, -1]].mean() - layout[3:5, 3:5].mean()
        assert abs(float(layout.mean())) < 1e-5  # relative to the photo's mean luminance
        if name == "even":
            assert abs(float(corners_vs_centre)) < 1e-5
        else:
            assert float(corners_vs_centre) < -0.5


def test_photo_statistics_see_saturation_and_contrast():
    """The colour spread and luminance spread entries of the photo statistics: a vivid photo has more chroma and
    opponent-colour spread than its grey copy; a flat photo less luminance spread than a contrasty one."""
    from roomvision.model import photo_statistics
    from roomvision.modelinfo import PHOTO_STATISTICS
    torch.manual_seed(0)
    vivid = torch.rand(1, 3, 64, 64) * 2 - 1
    grey = vivid.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    flat = 0.1 * grey
    stats = {name: photo_statistics(x)[0, PHOTO_STATISTICS - 4:].tolist() for name, x in
             (("vivid", vivid), ("grey", grey), ("flat", flat))}
    rg, yb, chroma, contrast = range(4)
    for k in (rg, yb, chroma):
        assert stats["vivid"][k] > 0.5 and stats["grey"][k] < 0.01
    assert stats["flat"][contrast] == pytest.approx(0.1 * stats["grey"][contrast], rel=0.05)


def test_quality_descriptor_widths_are_the_declared_ones():
    """modelinfo declares the descriptor's parts; the model computes exactly those widths, then two statistics per
    channel of every backbone stage."""
    from roomvision.model import photo_statistics
    from roomvision.modelinfo import DIRECT_FEATURES, PHOTO_STATISTICS, QUALITY_DESCRIPTOR
    model = RoomVisionNet(pretrained=False).eval()
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        *_, descriptor = model.forward_with_quality_features(x)
    stage_channels = sum(stage[-1].conv_pwl.out_channels if hasattr(stage[-1], "conv_pwl")
                         else stage[-1].conv_pw.out_channels for stage in model.backbone.blocks)
    assert photo_statistics(x).shape[1] == PHOTO_STATISTICS == 24
    assert descriptor.shape[1] == DIRECT_FEATURES + 2 * stage_channels
    assert sum(width for _, width in QUALITY_DESCRIPTOR if isinstance(width, int)) == DIRECT_FEATURES


def test_exports_and_caches_are_keyed_by_the_graph_declaration(tmp_path, monkeypatch):
    """The ONNX export, the per-photo cache and the feature cache carry the hash of the graph's declaration, and the
    shipped export's sidecar records the current one (a changed declaration makes new exports and caches)."""
    import hashlib
    import json

    from roomvision import features, inference, modelinfo, photocache
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n")
    key = modelinfo.GRAPH_KEY
    assert key == hashlib.sha256(json.dumps([modelinfo.ONNX_OUTPUTS, modelinfo.MARKET_OUTPUTS, modelinfo.HEAD_OUTPUTS,
                                             modelinfo.QUALITY_DESCRIPTOR]).encode()).hexdigest()[:12]
    assert json.loads(DEFAULT_WEIGHTS.with_suffix(".onnx.json").read_text())["graph"] == key
    places = (inference.onnx_path(DEFAULT_WEIGHTS).name, photocache.PhotoCache(DEFAULT_WEIGHTS).dir.name,
              features.cache_path(DEFAULT_WEIGHTS, manifest).name)
    assert all(key in place for place in places), places
    for module in (inference, photocache):
        monkeypatch.setattr(module, "GRAPH_KEY", "changed0000")
    moved = (inference.onnx_path(DEFAULT_WEIGHTS).name, photocache.PhotoCache(DEFAULT_WEIGHTS).dir.name,
             features.cache_path(DEFAULT_WEIGHTS, manifest).name)
    assert all("changed0000" in place and key not in place for place in moved), moved
