"""Serving: load a checkpoint once, score batches of images, turn outputs into decisions."""
from __future__ import annotations

import contextlib
import os
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .config import CACHE_DIR, default_weights_path
from .images import ImageDecodeError, load_image
from .model import Checkpoint, RoomVisionNet, Thresholds, file_sha256, fuse_batchnorm, resolve_device
from .transforms import eval_transform

SCORE_BINS = np.arange(1, 11, dtype=np.float64)
FORWARD_CHUNK = 32


def autocast(device: torch.device):
    """Mixed precision on CUDA, plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def aesthetic_stats(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of 10-bin score distributions."""
    mean = probs @ SCORE_BINS
    std = np.sqrt(np.clip(probs @ SCORE_BINS ** 2 - mean ** 2, 0, None))
    return mean, std


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def serving_outputs(model: RoomVisionNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(features, room logits, quality logit, aesthetic probabilities) for an image batch."""
    feats = model.backbone(x)
    heads = model.heads(feats)
    return feats, heads["room"], heads["quality"], torch.softmax(heads["aesthetic"].float(), dim=1)


@torch.inference_mode()
def run_model(model: RoomVisionNet, loader, device: torch.device, progress: str | None = None,
              on_batch=None) -> dict:
    """Raw outputs over a loader yielding (images, …): room logits, quality logits, aesthetic probs, features.

    `progress` names a tqdm bar; `on_batch(done, total)` reports progress to a UI.
    """
    if model.training:
        model.eval()
    out = {"room": [], "quality": [], "aesthetic": [], "features": []}
    total = len(loader) if hasattr(loader, "__len__") else 0
    for i, batch in enumerate(tqdm(loader, desc=progress, unit="batch", disable=progress is None, file=sys.stderr)):
        if on_batch is not None:
            on_batch(i, total)
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        for chunk in x.split(FORWARD_CHUNK):  # bounds activation memory; throughput is flat beyond this
            chunk = chunk.to(device, non_blocking=True)
            with autocast(device):
                feats, room, quality, aesthetic = serving_outputs(model, chunk)
            for key, value in zip(("features", "room", "quality", "aesthetic"), (feats, room, quality, aesthetic)):
                out[key].append(value.float().cpu())
    return {k: torch.cat(v).numpy() if v else np.zeros((0,)) for k, v in out.items()}


class _PathDataset(Dataset):
    """Decodes files in DataLoader workers; a bad file yields an error string instead of a tensor."""

    def __init__(self, paths, transform, min_side: int | None = None):
        self.paths, self.transform, self.min_side = list(paths), transform, min_side

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_image(self.paths[i], min_side=self.min_side)), ""
        except ImageDecodeError as exc:
            return None, str(exc)


def _collate(items):
    ok = [x for x, _ in items if x is not None]
    return (torch.stack(ok) if ok else None), [err for _, err in items]


class _ServingHeads(torch.nn.Module):
    """Export wrapper: image batch -> (features, room logits, quality logit, aesthetic probabilities)."""

    def __init__(self, model: RoomVisionNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return serving_outputs(self.model, x)


def onnx_session(model: RoomVisionNet, weights: Path, input_size: int, threads: int):
    """An ONNX Runtime session for the (BatchNorm-folded) model, exported once per weights file and cached.

    Traced at the checkpoint's input size: TF "SAME" padding becomes constants in the graph.
    """
    import warnings
    import onnxruntime as ort
    path = CACHE_DIR / "onnx" / f"{file_sha256(weights)[:16]}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes exporting at once never share a file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_ServingHeads(model).eval(), torch.zeros(1, 3, input_size, input_size), str(tmp),
                              input_names=["x"], output_names=["features", "room", "quality", "aesthetic"],
                              dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
        tmp.replace(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # no busy-waiting: PyTorch's own threads (preprocessing) share the same cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Predictor:
    """The model of one checkpoint, ready to score images on the chosen device.

    On the CPU the forward pass runs in ONNX Runtime when it is installed (`backend="auto"`), about three times
    faster than eager PyTorch here; the PyTorch model stays loaded for Grad-CAM and on GPUs.
    """

    def __init__(self, weights: str | Path | None = None, device: str = "auto", threads: int | None = None,
                 backend: str = "auto"):
        self.weights = Path(weights) if weights else default_weights_path()
        self.checkpoint = Checkpoint.load(self.weights)
        self.device = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        self.model = fuse_batchnorm(self.checkpoint.build_model()).to(self.device)
        self.transform = eval_transform(self.checkpoint.preprocess)
        self.classes = list(self.checkpoint.classes)
        self.thresholds = self.checkpoint.thresholds
        self.version = self.checkpoint.version
        self.session = None
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, not {backend!r}")
        if backend == "onnx" or (backend == "auto" and self.device.type == "cpu"):
            try:
                self.session = onnx_session(self.model, self.weights, self.checkpoint.preprocess.input_size,
                                            threads or torch.get_num_threads())
            except ImportError:
                if backend == "onnx":
                    raise ValueError("backend 'onnx' needs the onnxruntime and onnx packages") from None
        self.backend = "onnx" if self.session is not None else "torch"

    def _raw(self, x: torch.Tensor) -> dict:
        if self.session is None:
            return run_model(self.model, [x], self.device)
        out = {"features": [], "room": [], "quality": [], "aesthetic": []}
        for chunk in x.split(FORWARD_CHUNK):
            for key, value in zip(out, self.session.run(None, {"x": chunk.numpy()})):
                out[key].append(value)
        return {k: np.concatenate(v) for k, v in out.items()}

    def _rows(self, raw: dict) -> list[dict]:
        probs = softmax_np(raw["room"], self.thresholds.temperature)
        p_good = 1 / (1 + np.exp(-raw["quality"]))
        mean, std = aesthetic_stats(raw["aesthetic"])
        rows = []
        for i in range(len(probs)):
            row = {"room": self.classes[int(probs[i].argmax())]}
            row.update({f"prob_{c}": float(probs[i, j]) for j, c in enumerate(self.classes)})
            row.update(quality_prob_good=float(p_good[i]),
                       quality_label="GOOD" if p_good[i] >= self.thresholds.quality else "BAD",
                       aesthetic_score=float(mean[i]), aesthetic_std=float(std[i]),
                       aesthetic_distribution=raw["aesthetic"][i].round(4).tolist(), error="")
            rows.append(row)
        return rows

    def predict_images(self, images: list[Image.Image]) -> list[dict]:
        """Score decoded RGB images together as one batch."""
        if not images:
            return []
        x = torch.stack([self.transform(img) for img in images])
        return self._rows(self._raw(x))

    def predict_named(self, named: list[tuple[str, bytes]]) -> list[tuple[dict, Image.Image | None]]:
        """Decode named files and score the readable ones as one batch, in input order.

        Each item gets (row, image): the row carries 'path' and 'error'; unreadable files get image None.
        """
        decoded, results = [], []
        for name, data in named:
            try:
                decoded.append(load_image(data))
                results.append(({"path": name}, decoded[-1]))
            except ImageDecodeError as exc:
                results.append(({"path": name, "error": str(exc)}, None))
        rows = iter(self.predict_images(decoded))
        return [({**row, **next(rows)}, img) if img is not None else (row, None) for row, img in results]

    def iter_predict_paths(self, paths: list[str | Path], batch_size: int = 32, workers: int | None = None):
        """Yield the result rows of each batch of files; unreadable files get an error row.

        Decoding runs in a worker process for long lists (`workers=None` decides): starting one costs seconds.
        """
        if workers is None:
            workers = 1 if len(paths) > 8 * batch_size else 0
        dataset = _PathDataset(paths, self.transform, min_side=self.checkpoint.preprocess.resize_size)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                            collate_fn=_collate, pin_memory=self.device.type == "cuda")
        done = 0
        for x, errors in loader:
            scored = iter(self._rows(self._raw(x)) if x is not None else [])
            rows = []
            for err in errors:
                path = str(paths[done])
                rows.append({"path": path, **next(scored)} if not err else {"path": path, "error": err})
                done += 1
            yield rows

    def predict_paths(self, paths: list[str | Path], batch_size: int = 32, workers: int | None = None,
                      progress: bool = False) -> list[dict]:
        """Score files in batches; unreadable files get an error row."""
        results: list[dict] = []
        with tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress, file=sys.stderr) as bar:
            for rows in self.iter_predict_paths(paths, batch_size, workers):
                results.extend(rows)
                bar.update(len(rows))
        return results


def decide(row: dict, thresholds: Thresholds, classes: list[str]) -> dict:
    """Decisions for one prediction at the given thresholds (no model call)."""
    if row.get("error"):
        return {"room_decision": "", "quality_decision": "", "listing_ready": False}
    confidence = max(row[f"prob_{c}"] for c in classes)
    room = row["room"] if confidence >= thresholds.min_room_confidence else "uncertain"
    quality = "GOOD" if row["quality_prob_good"] >= thresholds.quality else "BAD"
    ready = quality == "GOOD" and room != "uncertain" and row["aesthetic_score"] >= thresholds.listing_ready_min_aesthetic
    return {"room_decision": room, "room_confidence": confidence, "quality_decision": quality, "listing_ready": ready}


def results_frame(results: list[dict], classes: list[str]) -> pd.DataFrame:
    """Fixed column order: path, room, prob_<class>…, quality_prob_good, quality_label, aesthetic_score, aesthetic_std, error."""
    cols = ["path", "room", *[f"prob_{c}" for c in classes], "quality_prob_good", "quality_label",
            "aesthetic_score", "aesthetic_std", "error"]
    df = pd.DataFrame(results).reindex(columns=cols)
    df["error"] = df["error"].fillna("")
    return df


def write_results(results: list[dict], out: Path | None, classes: list[str]) -> None:
    """CSV (default, stdout when out is None) or JSON by the file suffix."""
    df = results_frame(results, classes)
    if out is not None and out.suffix.lower() == ".json":
        records = json.loads(df.to_json(orient="records"))
        out.write_text(json.dumps(records, indent=2) + "\n")
    elif out is not None:
        df.to_csv(out, index=False)
    else:
        df.to_csv(sys.stdout, index=False)


def gradcam(predictor: Predictor, img: Image.Image, class_index: int | None = None) -> tuple[np.ndarray, int]:
    """Grad-CAM of the room head on the last feature map: a 0-1 heat map and the class it explains."""
    model = predictor.model
    x = predictor.transform(img).unsqueeze(0).to(predictor.device)
    with torch.enable_grad():
        fmap = model.backbone.forward_features(x).detach().requires_grad_(True)
        logits = model.room_head(model.backbone.forward_head(fmap))
        c = int(logits.argmax(1)) if class_index is None else class_index
        # autograd.grad leaves the shared model's parameters untouched (safe across app sessions)
        (grad,) = torch.autograd.grad(logits[0, c], fmap)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * fmap).sum(1))[0].detach().cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam, c
