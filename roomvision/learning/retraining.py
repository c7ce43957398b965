"""Heads fitted on cached features, saved as a new model version (seconds once the cache exists; the default file
is never overwritten): the human quality and aesthetic heads learned from people (`retrain-heads`, the Model page,
the end of `train --relabels`) and the out-of-scope head (`fit-scope`)."""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import CLASSES, DEFAULT_WEIGHTS, QUALITY_THRESHOLDS, settings
from ..data import load_manifest, load_out_of_scope
from ..decisions import is_good, out_of_scope
from ..features import build_feature_cache, cached_pool, load_feature_cache
from ..inference import Predictor, room_probabilities
from ..modelinfo import REFERENCE_BACKBONE, REFERENCE_OUTPUT, outputs_tensors
from ..photocache import run_files
from ..versions import current_default
from .heads import (TOO_FEW, balanced_accuracy, fit_human_aesthetic, fit_human_quality, human_targets, moved_rules,
                    refit_room_head)
from .scope import fit_scope_head
from .stores import NOT_A_ROOM, room_corrections


def any_human_labels(decision: np.ndarray, score: np.ndarray) -> bool:
    """Whether people decided or rated any of the photos."""
    return bool((decision >= 0).any() or not np.isnan(score).all())


def output_path(weights: Path) -> Path:
    """A new version's file in the versions folder (runtime state, never the project's weights/), unique to the
    microsecond (two runs never share one)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return settings().versions_dir / f"{Path(weights).stem.split('-people-')[0]}-people-{stamp}.pt"


def room_head_from_corrections(weights: Path, df: pd.DataFrame, data: dict,
                               corrections: pd.Series) -> tuple[dict, dict] | None:
    """The room head refitted on the training photos' cached features with people's room corrections, and what it
    changed on validation (accuracy against the original labels, and against corrected ones when validation photos
    were corrected); None without corrections of training photos."""
    from ..model import Checkpoint
    train = (df["split"] == "train").to_numpy() & ~np.isnan(data["room"][:, 0])
    corrected = corrections.notna().to_numpy()
    labels = corrections.fillna(df["class"])
    usable = labels.isin(CLASSES).to_numpy()
    if not (train & corrected & usable).any():
        return None
    state = Checkpoint.load(weights).state_dict
    weight, bias = (state[f"room_head.{k}"].float().numpy() for k in ("weight", "bias"))
    rows = train & usable
    new_weight, new_bias = refit_room_head(data["features"][rows].astype(np.float32),
                                           labels[rows].map(CLASSES.index).to_numpy(), corrected[rows], weight, bias)
    val = (df["split"] == "val").to_numpy() & ~np.isnan(data["room"][:, 0])
    feats = data["features"][val].astype(np.float32)
    before, after = (np.asarray(CLASSES)[(feats @ w.T + b).argmax(1)] for w, b in ((weight, bias),
                                                                                    (new_weight, new_bias)))
    counts = corrections[corrected].value_counts()
    report = {"room_corrections": {k: int(v) for k, v in counts.items()},
              "room_corrections_used": int((train & corrected & usable).sum()),
              "val_accuracy_before": float(np.mean(before == df["class"][val])),
              "val_accuracy_after": float(np.mean(after == df["class"][val])),
              "val_predictions_changed": float(np.mean(before != after))}
    val_fixed = labels[val].to_numpy()
    if (corrected & val).any():
        keep = np.isin(val_fixed, CLASSES)
        report.update(val_accuracy_before_corrected_labels=float(np.mean(before[keep] == val_fixed[keep])),
                      val_accuracy_after_corrected_labels=float(np.mean(after[keep] == val_fixed[keep])))
    return {"room_head.weight": new_weight, "room_head.bias": new_bias}, report


def save_version(weights: Path, out: Path, human: dict, quality_threshold: float | None, metrics: dict,
                 room_head: dict | None = None) -> Path:
    """A copy of `weights` carrying the human heads (and the human threshold as its calibrated default) and, when
    given, a room head refitted to people's corrections: in the weights (the version's graph and activation maps)
    and as plain numbers with the base model's tensors digest in the header, so that the version shares its base
    model's cached outputs (its room logits are recomputed from the cached features)."""
    import torch

    from ..model import Checkpoint  # PyTorch writes the checkpoint
    from .scope import _pack
    ckpt = Checkpoint.load(weights)
    calibration = ckpt.calibration if quality_threshold is None else replace(ckpt.calibration,
                                                                             quality=quality_threshold)
    state = {**ckpt.state_dict, **{k: torch.from_numpy(v) for k, v in (room_head or {}).items()}}
    human = dict(human or {k: v for k, v in ckpt.human.items() if k != "room"})
    if room_head is not None:
        human["room"] = {"weight": _pack(room_head["room_head.weight"]),
                         "bias": [float(b) for b in room_head["room_head.bias"]],
                         "base_tensors": outputs_tensors(weights)}
    elif "room" in ckpt.human:
        human["room"] = ckpt.human["room"]
    replace(ckpt, human=human, calibration=calibration, state_dict=state,
            metrics={**ckpt.metrics, "learned_from_people": metrics}, version=out.stem, created="").save(out)
    return out


def retrain_heads(weights: Path, manifest: Path, relabels: Path, data_roots: list[Path] | None = None,
                  out: Path | None = None, on_progress=None, cancel=None, replace_default: bool = False,
                  room_relabels: Path | None = None) -> dict:
    """Learn from the human labels in `relabels` (quality decisions, ratings) and `room_relabels` (room
    corrections); returns what was done, before -> after, and the new file."""
    started = time.monotonic()
    weights, manifest, relabels = Path(weights), Path(manifest), Path(relabels)
    data_roots = [Path(r) for r in data_roots] if data_roots else None
    room_relabels = Path(room_relabels) if room_relabels else None
    out = Path(out) if out else output_path(weights)
    if out.resolve() == DEFAULT_WEIGHTS.resolve() and not replace_default:
        raise ValueError("refusing to overwrite the default model; choose another output name")
    df = load_manifest(manifest).reset_index(drop=True)
    decision, score = human_targets(df, relabels)
    corrections = room_corrections(df, room_relabels)
    if not any_human_labels(decision, score) and corrections.isna().all():
        raise ValueError(f"no human labels for this manifest's photos in {relabels} or {room_relabels}; label some "
                         "in the Relabel page or correct room labels in the Mistakes page")
    predictor = Predictor(weights, device="cpu")
    scoring = None if on_progress is None else (
        lambda done, total: on_progress(done, total, f"scoring the manifest photos once: {done}/{total}"))
    cache = build_feature_cache(predictor, manifest, data_roots, on_batch=scoring, progress=on_progress is None,
                                cancel=cancel)
    ok, features, pool, data = cached_pool(cache, df)
    rooms = room_probabilities(predictor.room_logits({k: data[k][ok] for k in ("room", "features")}),
                               predictor.calibration.temperature)
    labelled = decision[ok] >= 0
    before = predictor.p_good(data["quality"][ok], features, pool, rooms)[labelled]
    human_good = decision[ok][labelled] == 1
    quality = fit_human_quality(features, pool, decision[ok], rooms=rooms)
    aesthetic = fit_human_aesthetic(features, score[ok])
    room = room_head_from_corrections(weights, df, data, corrections)
    if quality is None and aesthetic is None and room is None:
        raise ValueError(f"too few human labels to learn from: {TOO_FEW}, or correct room labels of training photos "
                         "in the Mistakes page")
    heads = {k: h.to_dict() for k, h in (("quality", quality), ("aesthetic", aesthetic)) if h is not None}
    metrics = {"human_labels": int(labelled.sum()), "human_ratings": int((~np.isnan(score)).sum()),
               "agreement_before": float(np.mean(is_good(before, predictor.thresholds.quality) == human_good))
               if labelled.any() else None}
    if quality is not None:
        metrics.update(balanced_accuracy_before=float(balanced_accuracy(human_good,
                                                                        is_good(before, predictor.thresholds.quality))),
                       balanced_accuracy_after_cv=quality.cv_balanced_accuracy, threshold=quality.threshold,
                       rules_moved=moved_rules(QUALITY_THRESHOLDS, quality.rule_thresholds),
                       learned_from_rules_too=quality.uses_rules)
    if room is not None:
        metrics["room"] = room[1]
    save_version(weights, out, heads, quality.threshold if quality else None, metrics, room[0] if room else None)
    return {"out": out, "seconds": time.monotonic() - started, **metrics}


def scope_report(in_scope: np.ndarray, is_room: np.ndarray, threshold: float) -> dict:
    """How the out-of-scope decision separates room photos from other photos."""
    from sklearn.metrics import roc_auc_score
    p_rooms, p_others = in_scope[is_room], in_scope[~is_room]
    return {"auroc": float(roc_auc_score(np.r_[np.ones(len(p_rooms)), np.zeros(len(p_others))],
                                         np.r_[p_rooms, p_others])),
            "others_flagged": float(np.mean(out_of_scope(p_others, threshold))),
            "rooms_flagged": float(np.mean(out_of_scope(p_rooms, threshold))),
            "rooms": int(len(p_rooms)), "others": int(len(p_others))}


def fit_scope(weights: Path, manifest: Path, out_of_scope_root: Path, out: Path, data_roots: list[Path] | None = None,
              room_relabels: Path | None = None) -> dict:
    """Fit the out-of-scope head of `weights` (training rooms vs training out-of-scope photos, with the manifest
    photos people marked not a room; gate and threshold on validation rooms), report it on the test photos, and
    save the model with it as `out`."""
    from ..model import Checkpoint
    if Path(out).resolve() == DEFAULT_WEIGHTS.resolve():
        raise ValueError("refusing to overwrite the default model; choose another output name")
    predictor = Predictor(weights, device="cpu")
    df = load_manifest(manifest).reset_index(drop=True)
    data = load_feature_cache(build_feature_cache(predictor, manifest, data_roots), df)
    others = load_out_of_scope(out_of_scope_root)
    other_features = run_files(predictor, list(others["path"]))["features"].astype(np.float32)
    corrections = room_corrections(df, room_relabels).to_numpy()
    readable = ~np.isnan(data["room"][:, 0])
    is_room = pd.isna(corrections) | np.isin(corrections, CLASSES)
    rooms = {s: data["features"][readable & is_room & (df["split"].to_numpy() == s)].astype(np.float32)
             for s in ("train", "val", "test")}
    other = {s: other_features[(others["split"].to_numpy() == s) & ~np.isnan(other_features[:, 0])]
             for s in ("train", "val", "test")}
    marked = readable & (corrections == NOT_A_ROOM) & (df["split"].to_numpy() == "train")
    other["train"] = np.r_[other["train"], data["features"][marked].astype(np.float32)]
    head, threshold = fit_scope_head(rooms["train"], other["train"], rooms["val"])
    metrics = {}
    for split in ("val", "test"):
        p = head.in_scope_prob(np.r_[rooms[split], other[split]])
        is_room = np.r_[np.ones(len(rooms[split]), bool), np.zeros(len(other[split]), bool)]
        metrics[split] = scope_report(p, is_room, threshold)
    ckpt = Checkpoint.load(weights)
    replace(ckpt, scope=head.to_dict(), calibration=replace(ckpt.calibration, in_scope=threshold),
            metrics={**ckpt.metrics, "out_of_scope": {**metrics, "threshold": threshold,
                                                      "other_kinds": sorted(set(others["kind"]))}},
            version=Path(out).stem, created="").save(out)
    return {"out": Path(out), "threshold": threshold, **metrics}


BASE_SAMPLE = 1000  # training photos per source the gate learns the market is not


def adapt_to_collection(name: str, weights: Path | None = None, out: Path | None = None,
                        data_roots: list[Path] | None = None, on_progress=None, cancel=None,
                        fine_tune: bool = False, imagenet_features: bool = False) -> dict:
    """A model version for collection `name`'s market: a room head fitted on the photos people corrected in its
    train and val splits (with `imagenet_features`, reading also the pooled features of the backbone as ImageNet
    left it, run beside the served one; with `fine_tune`, also the backbone's last stage fine-tuned on them, run
    beside the default one), blended in where a photo looks like that market. Measured before -> after, by the
    saved version as it serves, on the collection's held-out listings (its test split: photos with a correction,
    else the room its folder gave) and on the project's House Rooms and Places365 test photos (forgetting is
    reported)."""
    from ..data import manifest_roots, resolve_paths
    from ..photocache import score_photos
    from .collection import get_collection
    from .market import fit_gate, fit_market_head, market_inputs
    started = time.monotonic()
    collection = get_collection(name)
    weights = Path(weights) if weights else current_default()
    photos = collection.photos()
    corrections = room_corrections(photos, collection.room_relabels)
    labels = corrections.fillna(photos["class"].replace("", np.nan))
    known = labels.isin(CLASSES).to_numpy()
    learn = known & (photos["split"] != "test").to_numpy() & corrections.notna().to_numpy()
    held = known & (photos["split"] == "test").to_numpy()
    files = resolve_paths(photos, manifest_roots(collection.manifest))
    predictor = Predictor(weights, device="cpu")
    raw = score_photos(predictor, files, photos["sha256"].tolist(), on_progress=on_progress, cancel=cancel)
    manifest = load_manifest(settings().manifest)
    train = manifest[manifest["split"] == "train"]
    base = pd.concat([manifest[manifest["split"] == "test"],
                      *[g.sample(min(BASE_SAMPLE, len(g)), random_state=0) for _, g in train.groupby("source")]]
                     ).reset_index(drop=True)
    base_files = resolve_paths(base, manifest_roots(settings().manifest, data_roots))
    raw_base = score_photos(predictor, base_files, base["sha256"].tolist(), on_progress=on_progress, cancel=cancel)
    readable, readable_base = ~np.isnan(raw["room"][:, 0]), ~np.isnan(raw_base["room"][:, 0])
    learn, held = learn & readable, held & readable
    y = labels[learn].map(CLASSES.index).to_numpy()
    x, x_base = market_inputs(raw), market_inputs(raw_base)
    train_base = (base["split"] == "train").to_numpy() & readable_base
    gate = fit_gate(x[readable & (photos["split"] != "test").to_numpy()], x_base[train_base])
    learned_files = [files[i] for i in np.flatnonzero(learn)]
    head = fit_market_head(name, x[learn], y, gate)
    stage = reference = None
    if fine_tune:
        from ..model import Checkpoint
        from .finetune import fine_tune_stage, stage_inputs
        model = Checkpoint.load(weights).build_model()
        inputs = stage_inputs(model, learned_files, predictor.info.preprocess, on_progress=on_progress)
        stage = fine_tune_stage(model, *inputs, np.searchsorted(head.classes, y), head.classes,
                                on_progress=on_progress)
        head = replace(head, stage=True)
    if fine_tune or imagenet_features:  # the version computes outputs of its own; it shares the others
        head = replace(head, base_tensors=outputs_tensors(weights))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    out = Path(out) if out else settings().versions_dir / f"{weights.stem.split('-people-')[0]}-{name}-{stamp}.pt"
    if imagenet_features:
        from .finetune import saved_reference
        reference = saved_reference()
        own = _version_outputs(weights, out, replace(head, reference=REFERENCE_BACKBONE), stage, reference, files,
                               photos, on_progress, cancel)
        head = replace(fit_market_head(name, x[learn], y, gate, reference=own[REFERENCE_OUTPUT][learn]),
                       stage=head.stage, base_tensors=head.base_tensors)
    save_market_version(weights, out, head.to_dict(), {}, stage, reference)
    version = Predictor(out, device="cpu")  # measured as it serves: the version's own graph and caches
    test_base = (base["split"] == "test").to_numpy()
    after = version.scores(score_photos(version, files, photos["sha256"].tolist(), on_progress=on_progress,
                                        cancel=cancel))["probs"]
    after_b = version.scores(score_photos(version, [f for f, t in zip(base_files, test_base) if t],
                                          base.loc[test_base, "sha256"].tolist(), on_progress=on_progress,
                                          cancel=cancel))["probs"]
    before = predictor.scores(raw)["probs"]
    before_b = predictor.scores(raw_base)["probs"][test_base]
    truth = labels.map(lambda c: CLASSES.index(c) if c in CLASSES else -1).to_numpy()
    test = base[test_base]
    truth_b = test["class"].map(CLASSES.index).to_numpy()

    def accuracy(probs, rows, target):
        return float(np.mean(probs[rows].argmax(1) == target[rows])) if rows.any() else None
    report = {"collection": name, "corrections_used": int(learn.sum()),
              "corrections_per_room": {c: int((y == k).sum()) for k, c in enumerate(CLASSES) if (y == k).any()},
              "fine_tuned": fine_tune, "imagenet_features": imagenet_features, "held_out_photos": int(held.sum()),
              "held_out_accuracy_before": accuracy(before, held, truth),
              "held_out_accuracy_after": accuracy(after, held, truth)}
    for label, source in (("house_rooms", "house-rooms"), ("places365", "places365-rooms")):
        rows = (test["source"] == source).to_numpy() & readable_base[test_base]
        report[f"{label}_test_accuracy_default"] = accuracy(before_b, rows, truth_b)
        report[f"{label}_test_accuracy_version"] = accuracy(after_b, rows, truth_b)
    save_market_version(weights, out, head.to_dict(), report, stage, reference)  # same tensors: graph, caches stay
    return {"out": out, "seconds": time.monotonic() - started, **report}


def _version_outputs(weights: Path, out: Path, head, stage, reference, files: list, photos: pd.DataFrame,
                     on_progress, cancel) -> dict:
    """The raw outputs of every collection photo by a version's own tensors (`stage`, `reference`), computed through
    its serving graph before the head that reads them is fitted: the tensors are saved first beside `out` with
    `head` (never read here: only the outputs are); the version saved with its fitted head has the same tensors, so
    it shares their ONNX export and per-photo cache (both keyed by the tensors)."""
    from ..photocache import score_photos
    tensors = out.with_name(f".{out.name}.partial")  # not a *.pt: never listed as a version
    try:
        save_market_version(weights, tensors, head.to_dict(), {}, stage, reference)
        return score_photos(Predictor(tensors, device="cpu"), files, photos["sha256"].tolist(),
                            on_progress=on_progress, cancel=cancel)
    finally:
        tensors.unlink(missing_ok=True)


def save_market_version(weights: Path, out: Path, market: dict, report: dict, stage=None, reference=None) -> Path:
    """A copy of `weights` carrying the market head, and the tensors of the market stage and of the ImageNet
    backbone where the version has them (the model's own weights unchanged)."""
    from ..model import Checkpoint  # PyTorch writes the checkpoint
    ckpt = Checkpoint.load(weights)
    state = {**ckpt.state_dict, **({f"market_stage.{k}": v for k, v in stage.state_dict().items()} if stage else {}),
             **({f"reference.{k}": v for k, v in reference.state_dict().items()} if reference else {})}
    replace(ckpt, market=market, metrics={**ckpt.metrics, "adapted_to_market": report}, version=out.stem,
            created="", state_dict=state).save(out)
    return out
