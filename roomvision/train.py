"""Training: multi-task fine-tuning with early stopping, TensorBoard, resume; then calibration."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, roc_auc_score
from torch.utils.data import DataLoader, Dataset
from timm.utils import ModelEmaV3
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .config import CACHE_DIR, CLASSES, DEFAULT_MANIFEST, WEIGHTS_DIR
from .data import load_manifest, manifest_roots, resolve_paths
from .devices import resolve_device
from .engine import autocast, run_model
from .images import load_image
from .inference import HEAD_OUTPUTS
from .labels import LabelStore, human_lookup
from .model import DEFAULT_BACKBONE, Checkpoint, RoomVisionNet, preprocess_for_backbone
from .modelinfo import Thresholds, file_sha256
from .preprocess import Preprocess
from .quality import DEGRADATIONS, aesthetic_target, compute_metrics, degrade, quality_label, score_distribution
from .transforms import eval_transform, train_transform


@dataclass
class TrainConfig:
    manifest: Path = DEFAULT_MANIFEST
    data_roots: list[Path] | None = None
    out: Path = WEIGHTS_DIR / "roomvision-new.pt"
    run_dir: Path | None = None
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    epochs: int = 6
    batch_size: int = 32
    lr: float = 6e-4
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    freeze_stages: int = 2
    degraded_fraction: float = 0.35
    patience: int = 3
    max_steps_per_epoch: int = 0
    relabels: Path | None = None
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    resume: bool = False
    init: Path | None = None
    min_crop: float = 0.45
    ema_decay: float = 0.998


def rating_to_score(rating: float) -> float:
    """Human 1-5 stars onto the 1-10 aesthetic scale."""
    return 1.0 + (float(rating) - 1.0) * 9.0 / 4.0


def real_samples(df: pd.DataFrame, paths: list[Path], relabels: Path | None) -> pd.DataFrame:
    """One sample per manifest row; human labels and ratings from the relabel CSV override proxy targets."""
    s = pd.DataFrame({
        "file": [str(p) for p in paths], "path": df["path"].values, "source": df["source"].values,
        "sha256": df["sha256"].values, "split": df["split"].values,
        "class_idx": [CLASSES.index(c) for c in df["class"]],
        "quality": (df["quality_label"] == "GOOD").astype(np.float32).values,
        "aesthetic": df["aesthetic_target"].astype(np.float32).values,
        "human_quality": "", "degrade": "", "seed": [int(h[:8], 16) for h in df["sha256"]],
    })
    if relabels is not None and Path(relabels).is_file():
        found = human_lookup(LabelStore(relabels).merged(), s["sha256"], s["path"])
        for i, r in enumerate(found):
            if r is None:
                continue
            s.at[i, "human_quality"] = r["human_label"]
            s.at[i, "quality"] = 1.0 if r["human_label"] == "GOOD" else 0.0
            if not pd.isna(r["rating"]):
                s.at[i, "aesthetic"] = rating_to_score(r["rating"])
    return s


def degradation_for(seed: int) -> str:
    return DEGRADATIONS[seed % len(DEGRADATIONS)]


def _degraded_metrics(args: tuple[str, str, int]) -> dict:
    file, kind, seed = args
    img = degrade(load_image(file), kind, np.random.default_rng(seed))
    m = compute_metrics(img)
    label, reasons = quality_label(m)
    return {"quality": float(label == "GOOD"), "aesthetic": aesthetic_target(m), "reasons": reasons}


def degraded_samples(real: pd.DataFrame, cache: Path, workers: int = 2) -> pd.DataFrame:
    """One deterministic degraded copy per real photo, labelled by the same proxy metrics (cached)."""
    d = real.copy()
    d["degrade"] = [degradation_for(s) for s in d["seed"]]
    d["human_quality"] = ""
    key = d["sha256"] + ":" + d["degrade"]
    known = pd.read_csv(cache, keep_default_na=False).set_index("key") if cache.is_file() else pd.DataFrame()
    todo = [i for i, k in enumerate(key) if k not in known.index]
    if todo:
        args = [(d["file"].iat[i], d["degrade"].iat[i], int(d["seed"].iat[i])) for i in todo]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            res = list(tqdm(pool.map(_degraded_metrics, args, chunksize=16), total=len(args),
                            desc="labelling degraded copies", unit="img", file=sys.stderr))
        new = pd.DataFrame(res, index=key.iloc[todo].values).rename_axis("key")
        known = pd.concat([known, new]) if len(known) else new
        cache.parent.mkdir(parents=True, exist_ok=True)
        known.to_csv(cache)
    d["quality"] = known.loc[key, "quality"].astype(np.float32).values
    d["aesthetic"] = known.loc[key, "aesthetic"].astype(np.float32).values
    return d


class SampleDataset(Dataset):
    """Image (degraded when the sample says so) -> (tensor, class, quality, aesthetic distribution)."""

    def __init__(self, samples: pd.DataFrame, transform):
        self.rows = samples.to_dict("records")
        self.transform = transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        img = load_image(r["file"])
        if r["degrade"]:
            img = degrade(img, r["degrade"], np.random.default_rng(r["seed"]))
        return (self.transform(img), r["class_idx"], np.float32(r["quality"]),
                torch.from_numpy(score_distribution(r["aesthetic"])))


def emd_loss(pred_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NIMA's earth mover's distance (r = 2) between score distributions."""
    cdf_diff = torch.cumsum(pred_probs, 1) - torch.cumsum(target, 1)
    return torch.sqrt((cdf_diff ** 2).mean(1) + 1e-12).mean()


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising validation NLL."""
    z, y = torch.tensor(logits), torch.tensor(labels)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().clamp(0.05, 20).item())


QUALITY_GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


def best_quality_threshold(p_good: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    """P(GOOD) threshold maximising macro-F1 of GOOD/BAD over QUALITY_GRID, and that F1."""
    scores = [f1_score(good, p_good >= t, average="macro", zero_division=0) for t in QUALITY_GRID]
    i = int(np.argmax(scores))
    return float(QUALITY_GRID[i]), float(scores[i])


def validation_metrics(raw: dict, samples: pd.DataFrame) -> dict:
    """Room (clean photos), quality (clean + degraded) and aesthetic metrics on one pass."""
    clean = (samples["degrade"] == "").values
    y = samples["class_idx"].values
    pred = raw["room"].argmax(1)
    p_good = 1 / (1 + np.exp(-raw["quality"]))
    q = samples["quality"].values
    aest = raw["aesthetic"] @ np.arange(1, 11)
    m = {"room_accuracy": float((pred[clean] == y[clean]).mean()),
         "room_macro_f1": float(f1_score(y[clean], pred[clean], average="macro")),
         "room_accuracy_degraded": float((pred[~clean] == y[~clean]).mean()) if (~clean).any() else float("nan"),
         "aesthetic_srcc": float(spearmanr(aest, samples["aesthetic"].values).statistic)}
    if len(np.unique(q)) == 2:
        m["quality_roc_auc"] = float(roc_auc_score(q, p_good))
    return m


def select_preprocess(model: RoomVisionNet, val: pd.DataFrame, pre: Preprocess, device: torch.device,
                      workers: int = 1) -> tuple[Preprocess, dict]:
    """Pick the evaluation resize on validation: centre crop (crop_pct 0.875) or the whole frame (1.0)."""
    clean = val[val["degrade"] == ""]
    scores = {}
    for resize in (round(pre.input_size / 0.875), pre.input_size):
        candidate = replace(pre, resize_size=resize)
        loader = DataLoader(SampleDataset(clean, eval_transform(candidate)), batch_size=64, num_workers=workers)
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


def train(cfg: TrainConfig) -> Path:
    """Fine-tune, keep the best epoch by validation macro-F1, calibrate, save a checkpoint."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    run_dir = cfg.run_dir or Path("runs") / Path(cfg.out).stem
    run_dir.mkdir(parents=True, exist_ok=True)
    df = load_manifest(cfg.manifest)
    paths = resolve_paths(df, manifest_roots(cfg.manifest, cfg.data_roots))
    real = real_samples(df, paths, cfg.relabels)
    manifest_hash = file_sha256(cfg.manifest)
    degraded = degraded_samples(real, CACHE_DIR / f"degraded-{manifest_hash[:12]}.csv", workers=2)
    print(f"degraded copies: {int((degraded.quality == 0).sum())} BAD / {len(degraded)} "
          f"(real photos BAD: {int((real.quality == 0).sum())} / {len(real)})", file=sys.stderr)

    model = RoomVisionNet(cfg.backbone, pretrained=cfg.pretrained).to(device).to(memory_format=torch.channels_last)
    pre = preprocess_for_backbone(cfg.backbone, model.backbone)
    if cfg.init:
        model.load_state_dict(Checkpoint.load(cfg.init).build_model().state_dict())
        print(f"initialised from {cfg.init}", file=sys.stderr)
    frozen = _set_trainable(model, cfg.freeze_stages)
    # validation, early stopping and the saved weights use the exponential moving average of the weights
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=0.75) if cfg.ema_decay else None

    train_real = real[real.split == "train"].reset_index(drop=True)
    train_deg = degraded[degraded.split == "train"].reset_index(drop=True)
    val = pd.concat([real[real.split == "val"], degraded[degraded.split == "val"]], ignore_index=True)
    val_loader = DataLoader(SampleDataset(val, eval_transform(pre)), batch_size=64, num_workers=cfg.workers)

    counts = np.bincount(train_real.class_idx, minlength=len(CLASSES))
    class_weight = torch.tensor(counts.sum() / (len(CLASSES) * counts), dtype=torch.float32, device=device)
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
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        use_deg = rng.random(len(train_real)) < cfg.degraded_fraction
        epoch_samples = pd.concat([train_real[~use_deg], train_deg[use_deg]], ignore_index=True)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(SampleDataset(epoch_samples, train_transform(pre, cfg.min_crop)), batch_size=cfg.batch_size,
                            shuffle=True, generator=g, num_workers=cfg.workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        model.train()
        for m in frozen:
            m.eval()
        bar = tqdm(loader, total=min(len(loader), steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", file=sys.stderr)
        t0 = time.time()
        for step, (x, y, q, a) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y, q, a = y.to(device), q.to(device), a.to(device)
            with autocast(device):
                out = model(x)
            loss_room = F.cross_entropy(out["room"].float(), y, weight=class_weight,
                                        label_smoothing=cfg.label_smoothing)
            pos_weight = ((1 - q).sum() / q.sum().clamp(min=1)).clamp(0.2, 5).detach()
            loss_quality = F.binary_cross_entropy_with_logits(out["quality"].float(), q, pos_weight=pos_weight)
            loss_aesthetic = emd_loss(torch.softmax(out["aesthetic"].float(), 1), a)
            loss = loss_room + loss_quality + 2.0 * loss_aesthetic
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
                writer.add_scalar("loss/room", loss_room.item(), gstep)
                writer.add_scalar("loss/quality", loss_quality.item(), gstep)
                writer.add_scalar("loss/aesthetic", loss_aesthetic.item(), gstep)
                writer.add_scalar("lr/heads", sched.get_last_lr()[0], gstep)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(step + 1) * cfg.batch_size / (time.time() - t0):.1f}")
        scored = ema.module if ema is not None else model
        raw = run_model(scored, val_loader, device, "validating", outputs=HEAD_OUTPUTS)
        metrics = validation_metrics(raw, val)
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
    pre, resize_scores = select_preprocess(model, val, pre, device, cfg.workers)
    val_loader = DataLoader(SampleDataset(val, eval_transform(pre)), batch_size=64, num_workers=cfg.workers)
    raw = run_model(model, val_loader, device, "calibrating", outputs=HEAD_OUTPUTS)
    clean = (val["degrade"] == "").values
    temperature = fit_temperature(raw["room"][clean], val["class_idx"].values[clean])
    q_threshold, q_f1 = best_quality_threshold(1 / (1 + np.exp(-raw["quality"])), val["quality"].values)
    metrics = validation_metrics(raw, val)
    metrics.update(resize_scores)
    metrics.update(quality_best_f1_val=q_f1, best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                   val_nll_before=float(F.cross_entropy(torch.tensor(raw["room"][clean]),
                                                        torch.tensor(val["class_idx"].values[clean]))),
                   val_nll_after=float(F.cross_entropy(torch.tensor(raw["room"][clean]) / temperature,
                                                       torch.tensor(val["class_idx"].values[clean]))))
    ckpt = Checkpoint(backbone=cfg.backbone, classes=list(CLASSES), preprocess=pre,
                      thresholds=Thresholds(temperature=temperature, quality=q_threshold),
                      state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                      metrics={"validation": metrics, "history": state["history"]},
                      manifest_sha256=manifest_hash, version=Path(cfg.out).stem,
                      train_args={k: str(v) for k, v in asdict(cfg).items()})
    ckpt.save(cfg.out)
    print(json.dumps({"saved": str(cfg.out), "temperature": temperature, "quality_threshold": q_threshold,
                      **metrics}, indent=2))
    return Path(cfg.out)
