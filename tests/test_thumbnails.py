"""Lite2's last stages tuned on the project's photos rendered as grey listing thumbnails."""
import numpy as np
import torch


def test_render_thumbnail_is_a_grey_square_jpeg_of_the_centre(make_room):
    from roomvision.learning.thumbnails import THUMBNAIL_SIZE, render_thumbnail
    wide = make_room(3).resize((400, 200))
    thumb = np.asarray(render_thumbnail(wide, 75), dtype=np.int16)
    assert thumb.shape == (THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
    assert (thumb[..., 0] == thumb[..., 1]).all() and (thumb[..., 1] == thumb[..., 2]).all()
    centre = np.asarray(wide.convert("L").crop((100, 0, 300, 200)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE)), float)
    assert np.abs(thumb[..., 0] - centre).mean() < 8  # the centre square, not the whole (squashed) photo
    squashed = np.asarray(wide.convert("L").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE)), float)
    assert np.abs(thumb[..., 0] - squashed).mean() > np.abs(thumb[..., 0] - centre).mean()


def test_training_tunes_only_the_last_stages_and_saves_a_self_describing_file(tmp_path, make_room):
    from roomvision.config import DEFAULT_WEIGHTS
    from roomvision.learning.thumbnails import save_thumbnail_stages, train_thumbnail_stages
    from roomvision.model import THUMBNAIL_TUNED_PREFIXES, reference_backbone
    from roomvision.modelinfo import read_model_info
    files, labels = [], []
    for k in range(5):
        for i in range(4):
            path = tmp_path / f"{k}-{i}.jpg"
            make_room(k * 10 + i).save(path)
            files.append(path)
            labels.append(k)
    steps = []
    tensors, metrics = train_thumbnail_stages((files, np.array(labels)), (files[:5], np.array(labels[:5])),
                                              read_model_info(DEFAULT_WEIGHTS).preprocess, epochs=2,
                                              on_progress=lambda done, total, message: steps.append(message))
    imagenet = reference_backbone("tf_efficientnet_lite2").state_dict()
    assert tensors and all(k.startswith(THUMBNAIL_TUNED_PREFIXES) for k in tensors)
    assert {k for k in imagenet if k.startswith(THUMBNAIL_TUNED_PREFIXES)} == set(tensors)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert not torch.allclose(tensors["conv_head.weight"].float(), imagenet["conv_head.weight"], atol=1e-4)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert all(0 <= e["val_room_accuracy"] <= 1 for e in metrics["epochs"])
    assert any("epoch 2/2" in m for m in steps) and any("rendering thumbnails" in m for m in steps)
    saved = torch.load(save_thumbnail_stages(tmp_path / "t.pt", tensors, metrics), weights_only=True)
    assert saved["recipe"]["backbone"] == "tf_efficientnet_lite2" and saved["metrics"] == metrics
    assert saved["state_dict"].keys() == tensors.keys()


def test_train_thumbnail_features_command_trains_on_the_manifest_splits(tiny_dataset, tmp_path, capsys):
    """`train-thumbnail-features` reads the manifest's train and val photos and writes the file it is told to."""
    import json
    from roomvision.cli import main
    from roomvision.data import prepare
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    out = tmp_path / "stages.pth"
    assert main(["train-thumbnail-features", "--manifest", str(manifest), "--data-root", str(tiny_dataset),
                 "--epochs", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and len(printed["epochs"]) == 1
    saved = torch.load(out, weights_only=True)
    assert saved["metrics"] == {"epochs": printed["epochs"]} and saved["recipe"]["thumbnail_size"] == 128
