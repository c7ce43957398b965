"""Training: the multi-task fine-tuning loop with early stopping, TensorBoard and resume; then calibration."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, roc_auc_score
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .calibration import best_quality_threshold, fit_temperature, room_nll
from .config import CLASSES, TrainConfig, settings
from .data import load_manifest, manifest_roots, resolve_paths
from .decisions import Calibration
from .devices import resolve_device
from .engine import autocast, run_model
from .inference import head_scores
from .losses import multitask_loss, room_class_weight
from .model import Checkpoint, RoomVisionNet, preprocess_for_backbone
from .modelinfo import HEAD_OUTPUTS, file_sha256
from .preprocess import Preprocess
from .samples import IGNORE_ROOM, SampleDataset, degraded_cache_path, degraded_samples, real_samples
from .transforms import eval_transform, train_transform


def validation_metrics(raw: dict, samples: pd.DataFrame) -> dict:
    """Room (clean photos), quality (clean + degraded) and aesthetic metrics on one pass."""
    clean = (samples["degrade"] == "").values
    y = samples["class_idx"].values
    heads = head_scores(raw)
    pred, p_good, aest = heads["probs"].argmax(1), heads["p_good"], heads["aesthetic"]
    q = samples["quality"].values
    m = {"room_accuracy": float((pred[clean] == y[clean]).mean()),
         "room_macro_f1": float(f1_score(y[clean], pred[clean], average="macro")),
         "room_accuracy_degraded": float((pred[~clean] == y[~clean]).mean()) if (~clean).any() else float("nan"),
         "aesthetic_srcc": float(spearmanr(aest, samples["aesthetic"].values).statistic)}
    if len(np.unique(q)) == 2:
        m["quality_roc_auc"] = float(roc_auc_score(q, p_good))
    return m


def select_preprocess(model: RoomVisionNet, val: pd.DataFrame, pre: Preprocess, device: torch.device,
                      workers: int = 1) -> tuple[Preprocess, dict]:
    """Pick the evaluation resize on validation: the backbone's centre crop or the whole frame."""
    clean = val[val["degrade"] == ""]
    scores = {}
    for resize in dict.fromkeys((pre.resize_size, pre.input_size)):
        candidate = replace(pre, resize_size=resize)
        loader = DataLoader(SampleDataset(clean, eval_transform(candidate), candidate), batch_size=64, num_workers=workers)
        pred = run_model(model, loader, device, f"preprocess resize {resize}", outputs=("room",))["room"].argmax(1)
        scores[resize] = float(f1_score(clean["class_idx"], pred, average="macro"))
    best = max(scores, key=scores.get)
    return replace(pre, resize_size=best), {f"val_macro_f1_resize_{k}": v for k, v in scores.items()}


def _set_trainable(model: RoomVisionNet, freeze_stages: int) -> list[torch.nn.Module]:
    """Freeze stem and the first stages (kept in eval mode so BatchNorm statistics stay put)."""
    frozen = [model.backbone.conv_stem, model.backbone.bn1, *model.backbone.blocks[:freeze_stages]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad = False
    return frozen




def flagged_label_issues(samples: pd.DataFrame, issues_csv: Path) -> np.ndarray:
    """Training samples that a `label-issues` CSV flags as label issues (matched by source and path)."""
    issues = pd.read_csv(issues_csv, keep_default_na=False)
    missing = {"source", "path", "issue"} - set(issues.columns)
    if missing:
        raise ValueError(f"{issues_csv} is not a label-issues CSV (missing {', '.join(sorted(missing))})")
    marked = issues[issues["issue"].astype(str) == "True"]
    flagged = set(zip(marked["source"], marked["path"]))
    listed = np.array([(s, p) in flagged for s, p in zip(samples["source"], samples["path"])], dtype=bool)
    return (samples["split"] == "train").to_numpy() & listed


def load_data(cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Real training photos, their degraded copies, and validation (real + degraded); the manifest hash."""
    manifest = cfg.manifest or settings().manifest
    relabels = cfg.relabels or settings().relabels
    df = load_manifest(manifest)
    real = real_samples(df, resolve_paths(df, manifest_roots(manifest, cfg.data_roots)), relabels,
                        cfg.room_relabels or settings().room_relabels)
    if cfg.drop_label_issues:
        real.loc[flagged_label_issues(real, cfg.drop_label_issues), "class_idx"] = IGNORE_ROOM
    degraded = degraded_samples(real, degraded_cache_path(manifest), workers=2)
    print(f"degraded copies: {int((degraded.quality == 0).sum())} BAD / {len(degraded)} "
          f"(real photos BAD: {int((real.quality == 0).sum())} / {len(real)}; "
          f"human labels: {int((real.human_quality != '').sum())})", file=sys.stderr)
    train_real = real[real.split == "train"].reset_index(drop=True)
    train_deg = degraded[degraded.split == "train"].reset_index(drop=True)
    val = pd.concat([real[real.split == "val"], degraded[degraded.split == "val"]], ignore_index=True)
    return train_real, train_deg, val, file_sha256(manifest)


def epoch_samples(train_real: pd.DataFrame, train_deg: pd.DataFrame, cfg: TrainConfig, epoch: int) -> pd.DataFrame:
    """This epoch's photos: each replaced by its degraded copy with probability `degraded_fraction`, else given a
    listing-style change with probability `listing_fraction` (its seed in 'listing_augment', -1 for none)."""
    rng = np.random.default_rng(cfg.seed * 1000 + epoch)
    draw = rng.random(len(train_real))
    use_deg = draw < cfg.degraded_fraction
    augment = ~use_deg & (draw < cfg.degraded_fraction + cfg.listing_fraction * (1 - cfg.degraded_fraction))
    real = train_real[~use_deg].assign(listing_augment=np.where(augment[~use_deg],
                                                                rng.integers(0, 2 ** 31, len(train_real))[~use_deg], -1))
    return pd.concat([real, train_deg[use_deg].assign(listing_augment=-1)], ignore_index=True)


def calibrate(model: RoomVisionNet, val: pd.DataFrame, pre: Preprocess, device: torch.device,
              workers: int) -> tuple[Preprocess, Calibration, dict]:
    """Choose the evaluation resize, fit the temperature and the quality threshold on validation."""
    pre, resize_scores = select_preprocess(model, val, pre, device, workers)
    loader = DataLoader(SampleDataset(val, eval_transform(pre), pre), batch_size=64, num_workers=workers)
    raw = run_model(model, loader, device, "calibrating", outputs=HEAD_OUTPUTS)
    clean = (val["degrade"] == "").values
    logits, y = raw["room"][clean], val["class_idx"].values[clean]
    temperature = fit_temperature(logits, y)
    threshold, q_f1 = best_quality_threshold(head_scores(raw)["p_good"], val["quality"].values)
    metrics = {**validation_metrics(raw, val), **resize_scores, "quality_best_f1_val": q_f1,
               "val_nll_before": room_nll(logits, y), "val_nll_after": room_nll(logits, y, temperature)}
    return pre, Calibration(temperature=temperature, quality=threshold), metrics


def train(cfg: TrainConfig) -> Path:
    """Fine-tune, keep the best epoch by validation macro-F1, calibrate, save a self-describing checkpoint."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    run_dir = Path(cfg.run_dir or Path("runs") / Path(cfg.out).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_real, train_deg, val, manifest_hash = load_data(cfg)

    model = RoomVisionNet(cfg.backbone, pretrained=cfg.pretrained).to(device).to(memory_format=torch.channels_last)
    pre = preprocess_for_backbone(model.backbone)
    if cfg.init:
        model.load_state_dict(Checkpoint.load(cfg.init).build_model().state_dict())
        print(f"initialised from {cfg.init}", file=sys.stderr)
    frozen = _set_trainable(model, cfg.freeze_stages)
    # validation, early stopping and the saved weights use the exponential moving average of the weights
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=0.75) if cfg.ema_decay else None
    val_loader = DataLoader(SampleDataset(val, eval_transform(pre), pre), batch_size=64, num_workers=cfg.workers)

    class_weight = room_class_weight(train_real.class_idx.values, len(CLASSES)).to(device)
    steps_per_epoch = math.ceil(len(train_real) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    body_params = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": head_params, "lr": cfg.lr}, {"params": body_params, "lr": cfg.lr / 4}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.lr / 4], pct_start=0.15,
                                                total_steps=cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    writer = SummaryWriter(str(run_dir / "tb"))
    state = {"epoch": 0, "epochs": cfg.epochs, "best_f1": -1.0, "best_epoch": -1, "stale": 0, "history": []}
    last = run_dir / "last.pt"
    if cfg.resume and last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False)
        if saved["state"].get("epochs", cfg.epochs) != cfg.epochs:
            raise ValueError(f"resume with the same --epochs as the interrupted run ({saved['state']['epochs']})")
        model.load_state_dict(saved["model"])
        if ema is not None and "ema" in saved:
            ema.module.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = saved["state"]
        print(f"resumed from {last} after epoch {state['epoch']}", file=sys.stderr)

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(SampleDataset(epoch_samples(train_real, train_deg, cfg, epoch),
                                          train_transform(pre, cfg.min_crop), pre),
                            batch_size=cfg.batch_size, shuffle=True, generator=g, num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == "cuda")
        model.train()
        for m in frozen:
            m.eval()
        bar = tqdm(loader, total=min(len(loader), steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", file=sys.stderr)
        t0 = time.time()
        for step, (x, y, q, a, w) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y, q, a, w = y.to(device), q.to(device), a.to(device), w.to(device)
            with autocast(device):
                out = model(x)
            loss, parts = multitask_loss(out, y, q, a, class_weight, cfg.label_smoothing, sample_weight=w)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            gstep = epoch * steps_per_epoch + step
            if ema is not None:
                ema.update(model, step=gstep)
            if step % 10 == 0:
                writer.add_scalar("loss/total", loss.item(), gstep)
                for name, value in parts.items():
                    writer.add_scalar(f"loss/{name}", value, gstep)
                writer.add_scalar("lr/heads", sched.get_last_lr()[0], gstep)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(step + 1) * cfg.batch_size / (time.time() - t0):.1f}")
        scored = ema.module if ema is not None else model
        metrics = validation_metrics(run_model(scored, val_loader, device, "validating", outputs=HEAD_OUTPUTS), val)
        for k, v in metrics.items():
            writer.add_scalar(f"val/{k}", v, epoch + 1)
        state["epoch"] = epoch + 1
        state["history"].append(metrics)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
        if metrics["room_macro_f1"] > state["best_f1"]:
            state.update(best_f1=metrics["room_macro_f1"], best_epoch=epoch + 1, stale=0)
            torch.save(scored.state_dict(), run_dir / "best_model.pt")
        else:
            state["stale"] += 1
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "state": state, **({"ema": ema.module.state_dict()} if ema is not None else {})},
                   last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)
    writer.close()

    model.load_state_dict(torch.load(run_dir / "best_model.pt", map_location="cpu", weights_only=True))
    model.to(device)
    pre, calibration, metrics = calibrate(model, val, pre, device, cfg.workers)
    metrics.update(best_epoch=state["best_epoch"], epochs_run=state["epoch"])
    ckpt = Checkpoint(backbone=cfg.backbone, classes=list(CLASSES), preprocess=pre, calibration=calibration,
                      state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                      metrics={"validation": metrics, "history": state["history"]},
                      manifest_sha256=manifest_hash, version=Path(cfg.out).stem,
                      train_args={k: str(v) for k, v in asdict(cfg).items()})
    ckpt.save(cfg.out)
    print(json.dumps({"saved": str(cfg.out), **asdict(calibration), **metrics}, indent=2))
    return Path(cfg.out)
