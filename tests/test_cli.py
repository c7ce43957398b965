"""End to end through `python -m roomvision` on a tiny generated dataset."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from roomvision.cli import build_parser, main
from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.model import Checkpoint


SUBCOMMANDS = list(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_the_subcommand_list_is_complete():
    assert {"prepare", "train", "evaluate", "predict", "export-onnx", "retrain-heads"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not undocumented, f"{command}: options without help text: {undocumented}"


def test_an_output_format_that_cannot_be_written_is_refused_before_scoring(tmp_path, make_room, capsys):
    make_room(1).save(tmp_path / "a.jpg")
    out = tmp_path / "results.xlsx"
    assert main(["predict", str(tmp_path / "a.jpg"), "--out", str(out)]) == 2
    assert "cannot write results.xlsx: --out must end in .csv, .json, .parquet" in capsys.readouterr().err
    assert not out.exists()


def test_prepare_train_evaluate_predict(tiny_dataset, tmp_path, monkeypatch):
    manifest = tmp_path / "manifest.csv"
    assert main(["prepare", str(tiny_dataset), "--out", str(manifest), "--workers", "1"]) == 0
    weights = tmp_path / "w" / "model.pt"
    train_args = ["train", "--manifest", str(manifest), "--data-root", str(tiny_dataset), "--out", str(weights),
                  "--run-dir", str(tmp_path / "run"), "--epochs", "3", "--batch-size", "8", "--no-pretrained",
                  "--max-steps-per-epoch", "2", "--device", "cpu", "--workers", "0"]
    import roomvision.train as train_module
    real_metrics = train_module.validation_metrics
    calls = []

    def crash_in_second_validation(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_metrics(*args)

    monkeypatch.setattr(train_module, "validation_metrics", crash_in_second_validation)
    with pytest.raises(KeyboardInterrupt):
        main(train_args)
    assert (tmp_path / "run" / "last.pt").is_file() and not weights.exists()
    monkeypatch.setattr(train_module, "validation_metrics", real_metrics)
    assert main([("4" if a == "3" else a) for a in train_args] + ["--resume"]) == 2  # schedule mismatch
    assert main([*train_args, "--resume"]) == 0
    ckpt = Checkpoint.load(weights)
    assert ckpt.metrics["validation"]["epochs_run"] == 3 and len(ckpt.metrics["history"]) == 3
    assert ckpt.manifest_sha256 and 0.02 <= ckpt.calibration.quality <= 0.98
    assert any((tmp_path / "run" / "tb").iterdir())

    assert main(["evaluate", "--weights", str(weights), "--manifest", str(manifest), "--data-root",
                 str(tiny_dataset), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "w" / "model.test.metrics.json").read_text())
    assert 0 <= metrics["room"]["accuracy"] <= 1 and "roc_auc" in metrics["quality_vs_proxy"]
    assert (tmp_path / "w" / "model.test.confusion_image.png").stat().st_size > 1000
    failures = pd.read_csv(tmp_path / "w" / "model.test.failures.csv")
    test_paths = set(pd.read_csv(manifest).query("split == 'test'")["path"])
    assert set(failures["path"]) <= test_paths
    assert {"true", "predicted", "loss", *[f"prob_{c}" for c in CLASSES]} <= set(failures.columns)

    assert main(["evaluate", "--weights", str(weights), "--folder", str(tiny_dataset), "--device", "cpu",
                 "--out-dir", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "model.folder-rooms.metrics.json").is_file()

    assert main(["cache-features", "--weights", str(weights), "--manifest", str(manifest), "--data-root",
                 str(tiny_dataset), "--device", "cpu"]) == 0
    from roomvision.learning.stores import LabelStore
    from roomvision.inference import Predictor
    relabels = tmp_path / "relabels.csv"
    rows = pd.read_csv(manifest).sort_values("path").reset_index(drop=True)
    darkest = set(rows.nsmallest(len(rows) // 3, "lum_p50")["path"])  # a stricter taste than any proxy rule
    assert (rows["quality_label"] == "GOOD").all()
    human = {p: ("BAD" if p in darkest else "GOOD") for p in rows["path"]}
    for path, sha in zip(rows["path"], rows["sha256"]):
        LabelStore(relabels).append(path, human[path], sha256=sha, rating=2 if human[path] == "BAD" else 4)
    retrained = tmp_path / "w" / "model-people-test.pt"
    before = DEFAULT_WEIGHTS.stat().st_mtime_ns, sorted(DEFAULT_WEIGHTS.parent.iterdir())
    assert main(["retrain-heads", "--weights", str(weights), "--manifest", str(manifest), "--relabels",
                 str(relabels), "--out", str(retrained), "--data-root", str(tiny_dataset)]) == 0
    info = Checkpoint.load(retrained)
    assert info.metrics["learned_from_people"]["human_labels"] == len(rows) and set(info.human) == {"quality", "aesthetic"}
    assert info.calibration.quality == pytest.approx(info.human["quality"]["threshold"])
    files = [tiny_dataset / p for p in rows["path"]]
    decided = [r["quality_prob_good"] >= t for r, t in zip(Predictor(retrained, device="cpu").predict_paths(files),
                                                           [info.calibration.quality] * len(files))]
    agreement = np.mean([d == (human[p] == "GOOD") for d, p in zip(decided, rows["path"])])
    assert agreement >= 0.8, agreement  # the retrained model decides the way the people did
    from roomvision.learning.retraining import retrain_heads
    with pytest.raises(ValueError, match="refusing to overwrite the default"):
        retrain_heads(weights, manifest, relabels, [tiny_dataset], DEFAULT_WEIGHTS)
    assert (DEFAULT_WEIGHTS.stat().st_mtime_ns, sorted(DEFAULT_WEIGHTS.parent.iterdir())) == before

    out = tmp_path / "pred.json"
    code = main(["predict", str(tiny_dataset / "kitchen"), "--weights", str(weights), "--out", str(out),
                 "--device", "cpu", "--quiet"])
    rows = json.loads(out.read_text())
    assert code == 1  # the folder holds one broken file: exit code tells
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg")
    good = [r for r in rows if not r["error"]]
    assert len(good) == 8 and all(abs(sum(r[f"prob_{c}"] for c in CLASSES) - 1) < 5e-4 for r in good)  # 4 decimals


def test_predict_csv_from_a_subprocess(tiny_dataset, tmp_path, tiny_checkpoint):
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "roomvision", "predict", str(tiny_dataset / "bathroom"),
                           "--weights", str(tiny_checkpoint), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["path", "model_version", "room_decision", "room_confidence", *[f"prob_{c}" for c in CLASSES],
                                "in_scope_prob", "out_of_scope", "quality_prob_good", "quality_decision",
                                "aesthetic_score", "aesthetic_std", "listing_ready", "listing_reason",
                                "quality_threshold", "min_room_confidence", "min_in_scope",
                                "listing_ready_min_aesthetic", "error"]
    assert (df["in_scope_prob"] == "").all() and not df["out_of_scope"].any()  # a model without the head
    assert (df["model_version"] == "tiny").all()
    assert (df["quality_threshold"] == 0.4).all()  # the checkpoint's calibrated threshold
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


def test_room_corrections_reach_training_retraining_and_evaluation(tiny_dataset, tiny_checkpoint, tmp_path):
    """Corrected training photos get the corrected label from a retrained model; ambiguous ones train no room
    head; evaluation reports corrected-label metrics beside the original ones."""
    import json
    from roomvision.inference import Predictor
    from roomvision.learning.stores import AMBIGUOUS, ROOM, LabelStore
    from roomvision.samples import IGNORE_ROOM, real_samples
    manifest = tmp_path / "manifest.csv"
    assert main(["prepare", str(tiny_dataset), "--out", str(manifest), "--workers", "1"]) == 0
    df = pd.read_csv(manifest, keep_default_na=False)
    predictor = Predictor(tiny_checkpoint, device="cpu")
    train = df[df["split"] == "train"].head(3)
    files = [tiny_dataset / p for p in train["path"]]
    before = [r["room"] for r in predictor.predict_paths(files)]
    wanted = [CLASSES[(CLASSES.index(b) + 2) % 5] for b in before]
    store = LabelStore(tmp_path / "room.csv", ROOM)
    for (_, row), label in zip(train.iterrows(), wanted):
        store.append(row["path"], label, sha256=row["sha256"], given_label=row["class"], annotator="ana")
    other = df[df["split"] == "train"].iloc[3]
    store.append(other["path"], AMBIGUOUS, sha256=other["sha256"], given_label=other["class"])
    test = df[df["split"] == "test"].iloc[0]
    fixed = CLASSES[(CLASSES.index(test["class"]) + 1) % 5]
    store.append(test["path"], fixed, sha256=test["sha256"], given_label=test["class"])

    samples = real_samples(df, [tiny_dataset / p for p in df["path"]], None, store.path)
    assert [CLASSES[i] for i in samples.loc[train.index, "class_idx"]] == wanted
    assert samples.loc[other.name, "class_idx"] == IGNORE_ROOM
    assert samples.loc[test.name, "class_idx"] == CLASSES.index(test["class"])  # test labels never change silently

    out = tmp_path / "people.pt"
    assert main(["retrain-heads", "--weights", str(tiny_checkpoint), "--manifest", str(manifest), "--data-root",
                 str(tiny_dataset), "--room-relabels", str(store.path), "--out", str(out)]) == 0
    version = Predictor(out, device="cpu")
    live = version.predict_paths(files)
    assert [r["room"] for r in live] == wanted
    # the version shares its base model's cached outputs and reads its own room head from the cached features
    from roomvision.features import build_feature_cache, cache_path, load_feature_cache
    assert cache_path(out, manifest) == cache_path(tiny_checkpoint, manifest)
    cached = load_feature_cache(build_feature_cache(predictor, manifest, [tiny_dataset], progress=False))
    raw = {k: cached[k][train.index.to_numpy()] for k in version.head_outputs}
    served = version.scores(raw)["probs"]
    np.testing.assert_allclose(served, [[r[f"prob_{c}"] for c in CLASSES] for r in live], atol=2e-3)
    assert not np.allclose(predictor.scores(raw)["probs"], served, atol=0.05)  # not the base model's room head
    room = Checkpoint.load(out).metrics["learned_from_people"]["room"]
    assert room["room_corrections_used"] == 3 and room["room_corrections"][AMBIGUOUS] == 1
    assert {"val_accuracy_before", "val_accuracy_after"} <= set(room)

    out_dir = tmp_path / "eval"
    assert main(["evaluate", "--weights", str(tiny_checkpoint), "--manifest", str(manifest), "--data-root",
                 str(tiny_dataset), "--device", "cpu", "--room-relabels", str(store.path), "--out-dir",
                 str(out_dir)]) == 0
    metrics = json.loads(next(out_dir.glob("*test.metrics.json")).read_text())
    corrected = metrics["room_corrected_labels"]
    assert corrected["photos_corrected"] == 1 and corrected["n"] == metrics["room"]["n"]
    right_before = metrics["room"]["accuracy"] * metrics["room"]["n"]
    assert abs(corrected["accuracy"] * corrected["n"] - right_before) <= 1  # one label moved, one photo at most


def test_training_can_leave_flagged_label_issues_out_of_the_room_head(tiny_dataset, tmp_path):
    from roomvision.samples import real_samples
    from roomvision.train import flagged_label_issues
    manifest = tmp_path / "manifest.csv"
    assert main(["prepare", str(tiny_dataset), "--out", str(manifest), "--workers", "1"]) == 0
    df = pd.read_csv(manifest, keep_default_na=False)
    samples = real_samples(df, [tiny_dataset / p for p in df["path"]], None)
    train, test = df[df["split"] == "train"].iloc[0], df[df["split"] == "test"].iloc[0]
    issues = tmp_path / "issues.csv"
    pd.DataFrame({"source": [train["source"], test["source"], train["source"]],
                  "path": [train["path"], test["path"], df[df["split"] == "train"].iloc[1]["path"]],
                  "issue": [True, True, False]}).to_csv(issues, index=False)
    flagged = flagged_label_issues(samples, issues)
    assert flagged.sum() == 1 and flagged[train.name]  # test photos and unflagged rows keep their labels
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.jpg\n")
    with pytest.raises(ValueError, match="not a label-issues CSV"):
        flagged_label_issues(samples, bad)


def test_relabel_queue_starts_at_random_then_asks_what_the_head_is_unsure_of(tiny_dataset, tmp_path, tiny_checkpoint):
    from roomvision.data import prepare
    from roomvision.features import build_feature_cache, load_feature_cache
    from roomvision.learning.heads import fit_human_quality, human_targets
    from roomvision.inference import Predictor
    from roomvision.learning.stores import LabelStore
    from roomvision.learning.queue import COLD_START, next_to_label
    manifest, relabels = tmp_path / "manifest.csv", tmp_path / "relabels.csv"
    prepare([tiny_dataset], manifest, workers=1)
    cache = build_feature_cache(Predictor(tiny_checkpoint, device="cpu"), manifest, [tiny_dataset], progress=False)
    rows = pd.read_csv(manifest)
    start = next_to_label(cache, manifest, relabels)
    assert len(start) == min(COLD_START, len(rows)) and list(start) == list(range(len(start)))
    assert start.index.equals(next_to_label(cache, manifest, relabels).index)  # the same start on every call
    assert start.index.isin(rows["sha256"]).all()

    by_light = rows.sort_values("lum_p50")
    decided = {**{sha: "BAD" for sha in by_light["sha256"][:4]}, **{sha: "GOOD" for sha in by_light["sha256"][-4:]}}
    for sha, label in decided.items():
        LabelStore(relabels).append(rows.set_index("sha256").loc[sha, "path"], label, sha256=sha)
    queue = next_to_label(cache, manifest, relabels)
    assert set(queue.index) == set(rows["sha256"]) - set(decided)  # every open photo, none already decided
    features = load_feature_cache(cache)["quality_features"].astype(np.float32)
    head = fit_human_quality(features, rows, human_targets(rows, relabels)[0])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    doubt = pd.Series(np.abs(logit(head.p_good(features, rows)) - logit(head.threshold)), index=rows["sha256"])
    assert doubt[queue.index[0]] == doubt[queue.index].min()  # the first question: the photo the head is least sure of

    other = tmp_path / "other.csv"
    rows.iloc[::-1].to_csv(other, index=False)
    assert next_to_label(cache, other, relabels) is None  # a cache of another manifest: the page keeps the proxy order
