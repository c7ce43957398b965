"""End to end through `python -m roomvision` on a tiny generated dataset."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from roomvision.cli import build_parser, main
from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.model import Checkpoint


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "predict"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_prepare_train_evaluate_predict(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("roomvision.config.CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr("roomvision.train.CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr("roomvision.evaluate.CACHE_DIR", tmp_path / "cache")
    manifest = tmp_path / "manifest.csv"
    assert main(["prepare", str(tiny_dataset), "--out", str(manifest), "--workers", "1"]) == 0
    weights = tmp_path / "w" / "model.pt"
    assert main(["train", "--manifest", str(manifest), "--data-root", str(tiny_dataset), "--out", str(weights),
                 "--run-dir", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8", "--no-pretrained",
                 "--max-steps-per-epoch", "2", "--device", "cpu", "--workers", "0"]) == 0
    ckpt = Checkpoint.load(weights)
    assert ckpt.metrics["validation"]["epochs_run"] == 2
    assert ckpt.manifest_sha256 and 0.02 <= ckpt.thresholds.quality <= 0.98
    assert (tmp_path / "run" / "last.pt").is_file()
    assert any((tmp_path / "run" / "tb").iterdir())

    assert main(["train", "--manifest", str(manifest), "--data-root", str(tiny_dataset), "--out", str(weights),
                 "--run-dir", str(tmp_path / "run"), "--epochs", "3", "--batch-size", "8", "--no-pretrained",
                 "--max-steps-per-epoch", "2", "--device", "cpu", "--workers", "0", "--resume"]) == 0
    assert Checkpoint.load(weights).metrics["validation"]["epochs_run"] == 3

    assert main(["evaluate", "--weights", str(weights), "--manifest", str(manifest), "--data-root",
                 str(tiny_dataset), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "w" / "model.test.metrics.json").read_text())
    assert 0 <= metrics["room"]["accuracy"] <= 1 and "roc_auc" in metrics["quality_vs_proxy"]
    assert (tmp_path / "w" / "model.test.confusion.png").stat().st_size > 1000
    failures = pd.read_csv(tmp_path / "w" / "model.test.failures.csv")
    test_paths = set(pd.read_csv(manifest).query("split == 'test'")["path"])
    assert set(failures["path"]) <= test_paths
    assert {"true", "predicted", "loss", *[f"prob_{c}" for c in CLASSES]} <= set(failures.columns)

    assert main(["evaluate", "--weights", str(weights), "--folder", str(tiny_dataset), "--device", "cpu",
                 "--out-dir", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "model.folder-rooms.metrics.json").is_file()

    out = tmp_path / "pred.json"
    code = main(["predict", str(tiny_dataset / "kitchen"), "--weights", str(weights), "--out", str(out),
                 "--device", "cpu", "--quiet"])
    rows = json.loads(out.read_text())
    assert code == 1  # the folder holds one broken file: exit code tells
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg")
    good = [r for r in rows if not r["error"]]
    assert len(good) == 8 and all(abs(sum(r[f"prob_{c}"] for c in CLASSES) - 1) < 1e-4 for r in good)


def test_predict_csv_from_a_subprocess(tiny_dataset, tmp_path, tiny_checkpoint):
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "roomvision", "predict", str(tiny_dataset / "bathroom"),
                           "--weights", str(tiny_checkpoint), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["path", "room", *[f"prob_{c}" for c in CLASSES], "quality_prob_good",
                                "quality_label", "aesthetic_score", "aesthetic_std", "error"]
    assert len(df) == 8 and (df["error"] == "").all()


def test_missing_weights_is_a_clear_cli_error(tmp_path, make_room, capsys):
    make_room(1).save(tmp_path / "a.jpg")
    assert main(["predict", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "none.pt")]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_committed_default_weights_load_and_predict(make_room):
    ckpt = Checkpoint.load(DEFAULT_WEIGHTS)
    assert ckpt.classes == list(CLASSES) and DEFAULT_WEIGHTS.stat().st_size < 25e6
    from roomvision.inference import Predictor
    (row,) = Predictor(DEFAULT_WEIGHTS, device="cpu").predict_images([make_room(5)])
    assert row["room"] in CLASSES and abs(sum(row[f"prob_{c}"] for c in CLASSES) - 1) < 1e-5
