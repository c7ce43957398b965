"""PyTorch execution: mixed precision, batched forward passes, class activation maps and the ONNX export."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .devices import resolve_device
from .model import Checkpoint, RoomVisionNet, fuse_batchnorm
from .modelinfo import MARKET_OUTPUT, ONNX_OUTPUTS, REFERENCE_OUTPUT

FORWARD_CHUNK = 32  # bounds activation memory; throughput is flat beyond this


def autocast(device: torch.device):
    """Mixed precision on CUDA, plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def load_serving_model(weights: str | Path, device: str | torch.device = "cpu") -> RoomVisionNet:
    """The checkpoint's model in eval mode with BatchNorm folded into the convolutions."""
    return fuse_batchnorm(Checkpoint.load(weights).build_model()).to(resolve_device(str(device)))


def graph_outputs(model: RoomVisionNet) -> tuple[str, ...]:
    """The names of `serving_outputs`: ONNX_OUTPUTS, then the market stage's room logits and the ImageNet backbone's
    features where the model has them."""
    return (ONNX_OUTPUTS + ((MARKET_OUTPUT,) if model.market_stage is not None else ())
            + ((REFERENCE_OUTPUT,) if model.reference is not None else ()))


def serving_outputs(model: RoomVisionNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(features, room logits, quality logit, aesthetic probabilities, room activation maps, quality features) for
    an image batch, then the market stage's room logits and the ImageNet backbone's pooled features where the model
    has them (`graph_outputs`).

    The room head is a linear layer on globally pooled features, so its Grad-CAM equals the class activation map
    W_room · feature_map (up to a positive factor); it is computed here, inside the graph, for every image.
    """
    fmap, stage_input, quality_features = model.forward_with_quality_features(x)
    feats = model.backbone.forward_head(fmap)
    heads = model.heads(feats)
    cam = torch.einsum("kc,bchw->bkhw", model.room_head.weight.to(fmap.dtype), fmap)
    market = (() if model.market_stage is None else (model.market_stage(stage_input),)) + (
        () if model.reference is None else (model.reference(x),))
    return (feats, heads["room"], heads["quality"], torch.softmax(heads["aesthetic"].float(), dim=1), cam,
            quality_features, *market)


@torch.inference_mode()
def run_model(model: RoomVisionNet, loader, device: torch.device, progress: str | None = None,
              on_batch=None, outputs: tuple[str, ...] = ONNX_OUTPUTS) -> dict[str, np.ndarray]:
    """The requested raw outputs (`graph_outputs` names) over a loader yielding image batches or (images, …) tuples.

    `progress` names a tqdm bar; `on_batch(done, total)` reports progress to a UI.
    """
    if model.training:
        model.eval()
    out: dict[str, list] = {k: [] for k in outputs}
    total = len(loader) if hasattr(loader, "__len__") else 0
    for i, batch in enumerate(tqdm(loader, desc=progress, unit="batch", disable=progress is None, file=sys.stderr)):
        if on_batch is not None:
            on_batch(i, total)
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = torch.as_tensor(x)
        if device.type == "cuda":
            x = x.pin_memory()
        for chunk in x.split(FORWARD_CHUNK):
            chunk = chunk.to(device, non_blocking=True)
            with autocast(device):
                for key, value in zip(graph_outputs(model), serving_outputs(model, chunk)):
                    if key in out:
                        out[key].append(value.float().cpu())
    return {k: torch.cat(v).numpy() if v else np.zeros((0,)) for k, v in out.items()}


class _ServingGraph(torch.nn.Module):
    """Export wrapper: image batch -> `graph_outputs`."""

    def __init__(self, model: RoomVisionNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return serving_outputs(self.model, x)


@contextlib.contextmanager
def static_same_padding():
    """TF "SAME" padding (timm's stride-2 convolutions) with the traced input's size as constants: the export then
    pads by a constant Pad that ONNX Runtime folds into the convolution (INT8 ones included), instead of computing
    the padding from the input's shape on every call."""
    conv2d_same = importlib.import_module("timm.layers.conv2d_same")
    padding = importlib.import_module("timm.layers.padding")
    dynamic = conv2d_same.pad_same

    def pad_static(x, kernel_size, stride, dilation=(1, 1), value=0.0):
        ih, iw = (int(s) for s in x.shape[-2:])
        pad_h = padding.get_same_padding(ih, kernel_size[0], stride[0], dilation[0])
        pad_w = padding.get_same_padding(iw, kernel_size[1], stride[1], dilation[1])
        return torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                                       value=value)

    conv2d_same.pad_same = pad_static
    try:
        yield
    finally:
        conv2d_same.pad_same = dynamic


def export_graph(model: RoomVisionNet, size: int, out: Path) -> Path:
    """Write the serving graph of a (BatchNorm-folded) model as ONNX with a dynamic batch axis, traced at the
    input size `size` (written beside `out` first: processes exporting at once never share a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), static_same_padding():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ServingGraph(model).eval(), torch.zeros(1, 3, size, size), str(tmp),
                          input_names=["x"], output_names=list(graph_outputs(model)),
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    tmp.replace(out)
    return out


def export_onnx(weights: str | Path, out: str | Path) -> Path:
    """Write the (BatchNorm-folded) model of a checkpoint as ONNX."""
    checkpoint = Checkpoint.load(weights)
    return export_graph(fuse_batchnorm(checkpoint.build_model()), checkpoint.preprocess.input_size, Path(out))
