"""Retrain the three heads on cached backbone features with human labels (seconds, not hours)."""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.metrics import f1_score, roc_auc_score

from .calibration import best_quality_threshold, fit_temperature
from .config import DEFAULT_WEIGHTS, TrainConfig
from .decisions import quality_decision
from .labels import LabelStore, human_lookup
from .losses import multitask_loss, room_class_weight
from .model import Checkpoint
from .quality import score_distribution
from .samples import rating_to_score

HUMAN_WEIGHT = 5.0  # human labels are few and they are the truth


def apply_human_labels(samples: pd.DataFrame, relabels: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quality and aesthetic targets with human decisions overriding proxies (real photos only)."""
    quality = samples["quality"].to_numpy(np.float32).copy()
    aesthetic = samples["aesthetic"].to_numpy(np.float32).copy()
    human = np.full(len(samples), -1.0, np.float32)
    if relabels is None or not Path(relabels).is_file():
        return quality, aesthetic, human
    found = human_lookup(LabelStore(relabels).merged(), samples["sha256"], samples["path"])
    for i, (r, deg) in enumerate(zip(found, samples["degrade"])):
        if r is None or deg:
            continue
        human[i] = quality[i] = 1.0 if r["human_label"] == "GOOD" else 0.0
        if not pd.isna(r["rating"]):
            aesthetic[i] = rating_to_score(r["rating"])
    return quality, aesthetic, human


def head_metrics(heads: dict, y: np.ndarray, quality: np.ndarray, human: np.ndarray, clean: np.ndarray,
                 threshold: float) -> dict:
    """Room accuracy and macro-F1, quality ROC-AUC, and agreement with human labels at `threshold`."""
    pred = heads["room"].argmax(1)
    p_good = expit(heads["quality"])
    m = {"room_accuracy": float((pred[clean] == y[clean]).mean()),
         "room_macro_f1": float(f1_score(y[clean], pred[clean], average="macro")),
         "quality_roc_auc": float(roc_auc_score(quality, p_good)) if len(np.unique(quality)) == 2 else None}
    has = human >= 0
    m["human_labels"] = int(has.sum())
    if has.any():
        decided = np.array([quality_decision(p, threshold) for p in p_good[has]])
        m["human_agreement"] = float((decided == np.where(human[has] == 1, "GOOD", "BAD")).mean())
    return m


def retrain_heads(weights: Path, cache: dict, relabels: Path | None, out: Path | None = None,
                  epochs: int = 10, lr: float = 5e-4, batch_size: int = 512, seed: int = 0) -> dict:
    """Fine-tune the heads from their current weights; save a new version next to `weights`."""
    t0 = time.time()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(weights).stem.split("-relabel-")[0]
    out = Path(out) if out else Path(weights).parent / f"{base}-relabel-{stamp}.pt"
    if out.resolve() == DEFAULT_WEIGHTS.resolve():
        raise ValueError("refusing to overwrite the default model; choose another output name")
    torch.manual_seed(seed)
    ckpt = Checkpoint.load(weights)
    model = ckpt.build_model()
    samples = cache["samples"]
    quality, aesthetic, human = apply_human_labels(samples, relabels)
    feats = torch.from_numpy(cache["features"].astype(np.float32))
    y = samples["class_idx"].to_numpy(np.int64)
    split = samples["split"].to_numpy(str)
    clean = samples["degrade"].to_numpy(str) == ""
    train_idx, val_idx = np.nonzero(split == "train")[0], np.nonzero(split == "val")[0]

    def outputs(idx: np.ndarray) -> dict:
        model.eval()
        with torch.no_grad():
            h = model.heads(feats[idx])
        return {"room": h["room"].numpy(), "quality": h["quality"].numpy()}

    before = head_metrics(outputs(val_idx), y[val_idx], quality[val_idx], human[val_idx], clean[val_idx],
                          ckpt.calibration.quality)
    params = [*model.room_head.parameters(), *model.quality_head.parameters(), *model.aesthetic_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    targets = torch.from_numpy(np.stack([score_distribution(a) for a in aesthetic]))
    yt, qt = torch.tensor(y), torch.tensor(quality)
    weight = torch.from_numpy(np.where(human >= 0, HUMAN_WEIGHT, 1.0).astype(np.float32))
    class_weight = room_class_weight(y[train_idx], len(ckpt.classes))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=g)]
        for start in range(0, len(order), batch_size):
            b = order[start:start + batch_size]
            loss, _ = multitask_loss(model.heads(feats[b]), yt[b], qt[b], targets[b], class_weight,
                                     TrainConfig.label_smoothing, sample_weight=weight[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    val_out = outputs(val_idx)
    vclean = val_idx[clean[val_idx]]
    temperature = fit_temperature(outputs(vclean)["room"], y[vclean])
    threshold, _ = best_quality_threshold(expit(val_out["quality"]), quality[val_idx])
    after = head_metrics(val_out, y[val_idx], quality[val_idx], human[val_idx], clean[val_idx], threshold)
    new = replace(ckpt, state_dict={k: v.detach() for k, v in model.state_dict().items()},
                  calibration=replace(ckpt.calibration, temperature=temperature, quality=threshold),
                  metrics={**ckpt.metrics, "relabel_retrain": {"before": before, "after": after,
                                                               "human_labels": int((human >= 0).sum())}},
                  version=out.stem, created="")
    new.save(out)
    return {"out": out, "before": before, "after": after, "seconds": time.time() - t0}
