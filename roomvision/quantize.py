"""INT8 serving graph by quantisation-aware fine-tuning (QAT), for ONNX Runtime's integer kernels on the CPU.

The BatchNorm-folded model gets ONNX Runtime's QDQ scheme as fake quantisation: every convolution's weights
per output channel, symmetric int8 (scale = max |w| / 127); the input image, every convolution's (activated)
output and every residual sum per tensor, uint8 with moving-average min/max ranges. It is then fine-tuned to
reproduce the fp32 model's own outputs (pooled features and room logits, read from the feature cache, so no
teacher runs), with the heads kept fp32 and frozen. The export writes each fake quantisation as a
QuantizeLinear/DequantizeLinear pair, which ONNX Runtime fuses into QLinearConv / QLinearAdd.

`python -m roomvision quantize` runs it (checkpointed every `save_every` steps, `--resume`), measures the
agreement with fp32 and writes `<weights>.int8.onnx` with a sidecar naming what it was made from.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from .engine import export_graph
from .model import Checkpoint, RoomVisionNet, fuse_batchnorm
from .inference import int8_provenance
from .modelinfo import read_model_info
from .preprocess import EvalPreprocess, Preprocess, decode_for_model


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale of each output channel: max |w| / 127."""
    return w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp(min=1e-8) / 127


class PerChannelWeightQuant(nn.Module):
    """Symmetric int8 per output channel (ONNX Runtime's weight scheme); straight-through gradient."""
    enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = weight_scale(w)
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(len(scale), dtype=torch.int32), 0,
                                                      -128, 127)


class FixedWeightQuant(nn.Module):
    """Per-channel weight quantisation with the scales fixed (exported as constants)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", weight_scale(w))
        self.register_buffer("zero", torch.zeros(len(self.scale), dtype=torch.int32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero, 0, -128, 127)


class FixedActivationQuant(nn.Module):
    """A trained activation quantisation with its range fixed: scalar scale and zero point (ONNX Runtime fuses
    a clipping activation into a QuantizeLinear only when they are scalars)."""

    def __init__(self, fake_quant: FakeQuantize):
        super().__init__()
        self.scale, self.zero_point = float(fake_quant.scale), int(fake_quant.zero_point)
        self.enabled = bool(fake_quant.fake_quant_enabled[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255) if self.enabled else x


def freeze_quantisation(model: RoomVisionNet) -> RoomVisionNet:
    """The trained model with every quantisation range fixed, ready to export (in place)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FakeQuantize):
                setattr(module, name, FixedActivationQuant(child))
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            parametrize.register_parametrization(module, "weight", FixedWeightQuant(module.weight))
    return model


def activation_quant() -> FakeQuantize:
    """uint8 per-tensor affine with moving-average min/max ranges (ONNX Runtime's activation scheme)."""
    return FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def _output_hook(name: str):
    def hook(module, args, output):
        return getattr(module, f"quant_{name}")(output)
    return hook


def _quantize_output(module: nn.Module, name: str = "out") -> FakeQuantize:
    """Quantise a module's output: appended to a Sequential (which runs it last), by a forward hook otherwise."""
    module.add_module(f"quant_{name}", activation_quant())
    if not isinstance(module, nn.Sequential):
        module.register_forward_hook(_output_hook(name))
    return module.get_submodule(f"quant_{name}")


def quantisable_convs(model: RoomVisionNet) -> dict[str, nn.Conv2d]:
    """The backbone's convolutions by name (stem, every block's, head)."""
    return {name: m for name, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)}


def prepare_qat(model: RoomVisionNet, keep_fp32: tuple[str, ...] = ()) -> RoomVisionNet:
    """Fold BatchNorm and add fake quantisation in place (convolutions named in `keep_fp32` stay fp32)."""
    fuse_batchnorm(model.eval())
    convs = quantisable_convs(model)
    unknown = sorted(set(keep_fp32) - set(convs))
    if unknown:
        raise ValueError(f"no convolution named {', '.join(unknown)}; known: {', '.join(convs)}")
    backbone = model.backbone
    backbone.add_module("quant_input", activation_quant())
    backbone.conv_stem.register_forward_pre_hook(lambda module, args: (backbone.quant_input(args[0]),))
    points = {"input": [backbone.quant_input]}  # what quantises each tensor, by name (for sensitivity)
    parents = dict(backbone.named_modules())
    for name, conv in convs.items():
        if name in keep_fp32:
            continue
        weight_quant = PerChannelWeightQuant()
        parametrize.register_parametrization(conv, "weight", weight_quant)
        parent_name, _, child = name.rpartition(".")
        parent = parents[parent_name] if parent_name else backbone
        follower = _module_after(parent, child)  # the folded BatchNorm: its activation, or Identity
        points[name] = [weight_quant, _quantize_output(follower if follower is not None else conv)]
    for block_name, block in ((n, m) for n, m in backbone.named_modules() if getattr(m, "has_skip", False)):
        points[f"{block_name}.sum"] = [_quantize_output(block, "sum")]
    model.quant_points = points
    return model


def _module_after(parent: nn.Module, child: str) -> nn.Module | None:
    names = [n for n, _ in parent.named_children()]
    i = names.index(child)
    return getattr(parent, names[i + 1]) if i + 1 < len(names) and not names[i + 1].startswith("quant_") else None


def set_observers(model: nn.Module, enabled: bool) -> None:
    """Let the activation ranges follow the data, or freeze them."""
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.enable_observer() if enabled else m.disable_observer()


@dataclass
class QATConfig:
    """A quantisation-aware fine-tune: what it starts from, learns on and how long."""
    weights: str
    run_dir: str = "data/qat/default"
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-5
    observe_fraction: float = 0.2  # share of steps during which the activation ranges still move
    keep_fp32: tuple[str, ...] = ()
    input_size: int = 0  # fine-tune and serve at this input size (FixRes); 0: the model's own
    limit: int = 0  # train on the first N photos only (0: every train and validation photo)
    save_every: int = 25
    threads: int = 0
    seed: int = 0
    history: list = field(default_factory=list)


class CachedTargets(Dataset):
    """Manifest photos with the fp32 model's cached outputs as targets."""

    def __init__(self, files: list[Path], features: np.ndarray, room: np.ndarray, preprocess):
        self.files, self.features, self.room = files, features, room
        self.pre, self.transform = preprocess, EvalPreprocess(preprocess)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        x = self.transform(decode_for_model(self.files[i], self.pre))
        return torch.from_numpy(x), torch.from_numpy(self.features[i].astype(np.float32)), torch.from_numpy(
            self.room[i].astype(np.float32))


def training_photos(weights: Path, limit: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Train and validation photos of the manifest with the model's cached pooled features and room logits (the
    cache is built first when missing); test photos are kept for measuring."""
    from .config import settings
    from .data import load_manifest, manifest_roots, resolve_paths
    from .features import build_feature_cache, load_feature_cache
    from .inference import Predictor
    manifest = settings().manifest
    df = load_manifest(manifest).reset_index(drop=True)
    cache = load_feature_cache(build_feature_cache(Predictor(weights), manifest), df)
    keep = (df["split"] != "test").to_numpy() & ~np.isnan(cache["room"]).any(1)
    order = np.flatnonzero(keep)
    order = np.random.default_rng(0).permutation(order)[: limit or None]
    files = resolve_paths(df.iloc[order], manifest_roots(manifest))
    return files, cache["features"][order], cache["room"][order]


def preprocess_at(weights: Path, input_size: int = 0) -> Preprocess:
    """The model's preprocessing, at `input_size` when given (the resize scaled with it)."""
    pre = read_model_info(weights).preprocess
    if not input_size or input_size == pre.input_size:
        return pre
    return dataclasses.replace(pre, input_size=input_size,
                               resize_size=round(input_size * pre.resize_size / pre.input_size))


def validation_batch(weights: Path, n: int, input_size: int = 0) -> torch.Tensor:
    """`n` validation photos of the manifest (a seeded draw), preprocessed for the model."""
    from .config import settings
    from .data import load_manifest, manifest_roots, resolve_paths
    manifest = settings().manifest
    df = load_manifest(manifest)
    val = df[df["split"] == "val"]
    files = resolve_paths(val.sample(min(n, len(val)), random_state=0), manifest_roots(manifest))
    pre = preprocess_at(weights, input_size)
    transform = EvalPreprocess(pre)
    return torch.from_numpy(np.stack([transform(decode_for_model(f, pre)) for f in files]))


def distillation_loss(model: RoomVisionNet, x, features, room, temperature: float):
    """Pooled features (scaled squared error: every head reads them) plus the room softmax (KL at `temperature`)."""
    f = model.backbone(x)
    feature_loss = ((f - features) ** 2).mean() / (features ** 2).mean()
    log_p = torch.log_softmax(model.room_head(f) / temperature, 1)
    room_loss = nn.functional.kl_div(log_p, torch.log_softmax(room / temperature, 1), log_target=True,
                                     reduction="batchmean")
    return feature_loss + room_loss, feature_loss.item(), room_loss.item()


def run_qat(cfg: QATConfig, resume: bool = False, log=print) -> Path:
    """Fine-tune with fake quantisation; the state is saved every `save_every` steps (resumable). Returns the
    state file."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "qat.pt"
    checkpoint = Checkpoint.load(cfg.weights)
    model = prepare_qat(checkpoint.build_model(), tuple(cfg.keep_fp32))
    files, features, room = training_photos(Path(cfg.weights), cfg.limit)
    loader = DataLoader(CachedTargets(files, features, room, preprocess_at(Path(cfg.weights), cfg.input_size)),
                        batch_size=cfg.batch_size, shuffle=True, num_workers=1, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    for p in (*model.room_head.parameters(), *model.quality_head.parameters(), *model.aesthetic_head.parameters()):
        p.requires_grad_(False)
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=cfg.lr)
    total = int(cfg.epochs * len(loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total))))  # cosine to 0
    step = 0
    if resume and state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, cfg.history = state["step"], state["config"]["history"]
        log(f"resumed at step {step}/{total}")
    temperature = checkpoint.calibration.temperature
    if cfg.epochs == 0:  # post-training quantisation: the ranges are calibrated, no weight changes
        with torch.no_grad():
            for x, _, _ in loader:
                model.backbone(x)
        _save(state_file, model, optimiser, schedule, 0, cfg)
        return state_file
    started, first_step = time.perf_counter(), step
    while step < total:
        for x, f, r in loader:
            if step >= total:
                break
            set_observers(model, step < cfg.observe_fraction * total)
            loss, feature_loss, room_loss = distillation_loss(model, x, f, r, temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            cfg.history.append({"step": step, "feature_loss": round(feature_loss, 6), "room_loss": round(room_loss, 6)})
            if step % 5 == 0:
                rate = (time.perf_counter() - started) / (step - first_step)
                log(f"step {step}/{total} feature {feature_loss:.4f} room {room_loss:.4f} "
                    f"({rate:.1f} s/step)")
            if step % cfg.save_every == 0 or step == total:
                _save(state_file, model, optimiser, schedule, step, cfg)
    return state_file


def _save(path: Path, model, optimiser, schedule, step: int, cfg: QATConfig) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                "step": step, "config": asdict(cfg)}, tmp)
    tmp.replace(path)


def load_qat(state_file: Path) -> tuple[RoomVisionNet, QATConfig]:
    """The fake-quantised model of a QAT state file (observers frozen), and the run's configuration."""
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    cfg = QATConfig(**{**state["config"], "keep_fp32": tuple(state["config"]["keep_fp32"])})
    model = prepare_qat(Checkpoint.load(cfg.weights).build_model(), cfg.keep_fp32)
    model.load_state_dict(state["model"])
    set_observers(model, False)
    return model.eval(), cfg


def store_int8_weights(path: Path) -> None:
    """Replace each QuantizeLinear of a constant (the weights) by its int8 result, in place: the file holds int8
    weights (a quarter of the size) and nothing is quantised again at load."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    folded = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and all(i in constants for i in node.input):
            w, scale, zero = (constants[i] for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [-1 if d == axis else 1 for d in range(w.ndim)] if scale.ndim else []
            info = np.iinfo(zero.dtype)
            q = np.clip(np.round(w / scale.reshape(shape)) + zero.reshape(shape), info.min, info.max)
            graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), node.output[0]))
            folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, path)


def export_int8(model: RoomVisionNet, weights: Path, out: Path, cfg: QATConfig) -> Path:
    """The fake-quantised serving graph as QDQ ONNX with int8 weights, with a sidecar recording what it was made
    from and how."""
    pre = preprocess_at(weights, cfg.input_size)
    export_graph(freeze_quantisation(model), pre.input_size, out)
    store_int8_weights(out)
    run = {k: v for k, v in asdict(cfg).items() if k not in ("weights", "run_dir", "threads", "save_every")}
    run["steps"] = len(cfg.history)  # the losses of every step are in "history"
    meta = {**int8_provenance(weights), "preprocess": asdict(pre), "qat": run}
    out.with_suffix(".onnx.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _switch(modules: list[nn.Module], on: bool) -> None:
    for m in modules:
        if isinstance(m, FakeQuantize):
            m.enable_fake_quant() if on else m.disable_fake_quant()
        else:
            m.enabled = on


@torch.no_grad()
def sensitivity(model: RoomVisionNet, x: torch.Tensor) -> pd.DataFrame:
    """Per quantised tensor, over photos `x`, with every tensor quantised except that one (leave-one-out): the
    share of room predictions that match fp32 and the pooled features' error relative to their energy, beside
    the same with all quantised. The layers worth keeping in fp32 come first."""
    points = model.quant_points
    everything = [m for ms in points.values() for m in ms]

    def run(enabled: bool, except_point: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
        _switch(everything, enabled)
        if except_point:
            _switch(points[except_point], False)
        features = model.backbone(x)
        return model.room_head(features).argmax(1).numpy(), features

    rooms, features = run(False)

    def measure(name: str | None) -> dict:
        quantised_rooms, quantised = run(True, name)
        return {"tensor": name or "(none)", "rooms_unchanged": float(np.mean(quantised_rooms == rooms)),
                "feature_error": float(((quantised - features) ** 2).mean() / (features ** 2).mean())}

    rows = [measure(None)] + [measure(name) for name in points]
    _switch(everything, True)
    return pd.DataFrame(rows).sort_values("feature_error", kind="stable").reset_index(drop=True)


def compare_profiles(weights: Path, per_source: int = 256) -> pd.DataFrame:
    """Fast (INT8) against default (fp32) on the first `per_source` test photos of each manifest source: the share
    of room predictions, GOOD/BAD and out-of-scope decisions unchanged, and room accuracy of both."""
    from .config import CLASSES, settings
    from .data import load_manifest, manifest_roots, resolve_paths
    from .decisions import is_good, out_of_scope
    from .inference import Predictor
    from .photocache import run_files
    manifest = settings().manifest
    df = load_manifest(manifest)
    df = df[df["split"] == "test"].groupby("source", sort=True).head(per_source)
    files = resolve_paths(df, manifest_roots(manifest))
    served = {}
    for profile in ("default", "fast"):
        predictor = Predictor(weights, device="cpu", profile=profile)
        served[profile] = predictor.scores(run_files(predictor, files))
    t = predictor.thresholds
    truth = df["class"].map(CLASSES.index).to_numpy()
    rows = []
    for source in df["source"].unique():
        m = (df["source"] == source).to_numpy()
        a, b = served["default"], served["fast"]
        rooms_a, rooms_b = a["probs"][m].argmax(1), b["probs"][m].argmax(1)
        rows.append({"source": source, "photos": int(m.sum()),
                     "rooms_unchanged": float(np.mean(rooms_a == rooms_b)),
                     "good_bad_unchanged": float(np.mean(is_good(a["p_good"][m], t.quality)
                                                         == is_good(b["p_good"][m], t.quality))),
                     "scope_unchanged": float(np.mean(out_of_scope(a["in_scope"][m], t.min_in_scope)
                                                      == out_of_scope(b["in_scope"][m], t.min_in_scope))),
                     "accuracy_fp32": float(np.mean(rooms_a == truth[m])),
                     "accuracy_int8": float(np.mean(rooms_b == truth[m]))})
    return pd.DataFrame(rows)


def integer_kernels(onnx_file: Path) -> dict[str, int]:
    """How many nodes of each integer kernel ONNX Runtime runs for a QDQ graph (from its optimised graph)."""
    import tempfile
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        options.log_severity_level = 3  # not the warning that an optimised graph is specific to this CPU
        ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type.startswith("QLinear") or node.op_type in ("ConvInteger", "MatMulInteger", "QGemm"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


