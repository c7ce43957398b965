"""What a checkpoint says about itself (classes, backbone, preprocessing, thresholds, metrics), readable without
PyTorch so that serving processes stay small."""
from __future__ import annotations

import codecs
import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_IN_SCOPE_THRESHOLD
from .decisions import Calibration
from .preprocess import Preprocess

CHECKPOINT_FORMAT = "roomvision-checkpoint"
CHECKPOINT_VERSION = 2  # 2: 'calibration' replaces version 1's 'thresholds'
REQUIRED_KEYS = ("backbone", "classes", "preprocess", "state_dict")
ONNX_OUTPUTS = ("features", "room", "quality", "aesthetic", "room_cam", "quality_features")  # the serving graph
MARKET_OUTPUT = "market_room"  # room logits of a market stage (model.MarketStage), in versions adapted to a market
REFERENCE_OUTPUT = "reference_features"  # pooled features of the reference backbone (model.reference_backbone)
IMAGENET_REFERENCE = "tf_efficientnet_lite2"  # EfficientNet-Lite2 as ImageNet left it (versions made before the next)
THUMBNAIL_REFERENCE = "tf_efficientnet_lite2+thumbnails"  # its ImageNet features and those tuned on thumbnails
REFERENCE_BACKBONE = THUMBNAIL_REFERENCE  # what a new version reads (a version's header `market.reference` names it)
MARKET_OUTPUTS = (MARKET_OUTPUT, REFERENCE_OUTPUT)  # outputs only a version adapted to a market computes
HEAD_OUTPUTS = ("room", "quality", "aesthetic")  # the raw outputs that predictions are made of
# The photo-quality descriptor (model.py, `forward_with_quality_features`), in order:
LUMINANCE_LEVELS = 16  # points of the luminance distribution (a smooth CDF)
SHARPNESS_SCALES = 2   # log-variance of the Laplacian at full and half resolution
COLOUR_BALANCE = 2     # red minus blue, green minus magenta
SPREADS = 4            # spread of the two opponent colour channels, mean chroma, luminance spread
PHOTO_STATISTICS = LUMINANCE_LEVELS + SHARPNESS_SCALES + COLOUR_BALANCE + SPREADS
INPUT_GRID = 4         # mean and std of each input channel on an INPUT_GRID x INPUT_GRID grid
GRID_STATISTICS = 2 * 3 * INPUT_GRID ** 2
LAYOUT_GRID = 8        # luminance layout relative to the photo's mean on a LAYOUT_GRID x LAYOUT_GRID grid
DIRECT_FEATURES = PHOTO_STATISTICS + GRID_STATISTICS + LAYOUT_GRID ** 2  # read from the pixels directly; the
# mean- and std-pooled output of every backbone stage follows
QUALITY_DESCRIPTOR = (  # (what each part measures, its width): edit a part's words when its computation changes
    ("luminance distribution: points of a smooth CDF", LUMINANCE_LEVELS),
    ("log-variance of the Laplacian at full and half resolution", SHARPNESS_SCALES),
    ("colour balance: red minus blue, green minus magenta", COLOUR_BALANCE),
    ("spread of the two opponent colour channels, mean chroma, luminance spread", SPREADS),
    ("mean and std of each input channel on a square grid", GRID_STATISTICS),
    ("luminance layout on a square grid relative to the photo's mean", LAYOUT_GRID ** 2),
    ("mean- and std-pooled output of every backbone stage", "2 x the stages' channels"),
)
# What every ONNX export and cached output is keyed by (with the weights' tensors): a hash of the serving graph's
# declaration, so a change of outputs or descriptor gives new exports and caches, and nothing else does. The
# committed model's shipped export is checked against PyTorch (tests/test_model.py), so a computation changed
# without its words here fails there.
GRAPH_KEY = hashlib.sha256(json.dumps([ONNX_OUTPUTS, MARKET_OUTPUTS, HEAD_OUTPUTS, QUALITY_DESCRIPTOR])
                           .encode()).hexdigest()[:12]


class CheckpointError(ValueError):
    """A weights file that is missing, unreadable or not a compatible roomvision checkpoint."""


@dataclass
class ModelInfo:
    """A checkpoint's self-description, everything except the weights."""
    backbone: str
    classes: list[str]
    preprocess: Preprocess
    calibration: Calibration
    metrics: dict = field(default_factory=dict)
    manifest_sha256: str = ""
    created: str = ""
    version: str = ""
    train_args: dict = field(default_factory=dict)
    human: dict = field(default_factory=dict)  # heads learned from people ('quality', 'aesthetic'), see human.py
    scope: dict = field(default_factory=dict)  # the out-of-scope head, see scope.py
    market: dict = field(default_factory=dict)  # a head adapted to one market's photos, see adapt.py
    weights_digest: str = ""  # sha256 of the tensor storages as saved ('' in checkpoints older than the digest)

    @classmethod
    def from_payload(cls, raw, path: Path) -> dict:
        """Validated constructor arguments from a checkpoint's top-level dict."""
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a roomvision checkpoint (no '{CHECKPOINT_FORMAT}' header)")
        if raw.get("format_version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} needs a newer roomvision (format {raw['format_version']})")
        calibration = raw.get("calibration", raw.get("thresholds"))
        missing = [k for k in REQUIRED_KEYS if k not in raw] + ([] if calibration is not None else ["calibration"])
        if missing:
            raise CheckpointError(f"{path} is missing {', '.join(missing)}")
        pre = raw["preprocess"]
        return dict(backbone=raw["backbone"], classes=list(raw["classes"]),
                    preprocess=Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}),
                    calibration=Calibration(temperature=float(calibration["temperature"]),
                                            quality=float(calibration["quality"]),
                                            in_scope=float(calibration.get("in_scope", DEFAULT_IN_SCOPE_THRESHOLD))),
                    metrics=raw.get("metrics", {}),
                    manifest_sha256=raw.get("manifest_sha256", ""), created=raw.get("created", ""),
                    version=raw.get("version", path.stem), train_args=raw.get("train_args", {}),
                    human=raw.get("human", {}), scope=raw.get("scope", {}), market=raw.get("market", {}),
                    weights_digest=raw.get("weights_digest", ""))


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles a torch.save archive's record but leaves every tensor out (no PyTorch, no weight bytes read)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda *args, **kwargs: None
        if module == "torch" and name.endswith("Storage"):
            return name
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 pickles bytes (packed head arrays)
            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        return None


def storage_digest(archive: zipfile.ZipFile) -> str:
    """sha256 over the tensor storages of a torch.save archive (data/0, data/1, … in order), read without PyTorch."""
    entries = [n for n in archive.namelist() if n.rsplit("/", 2)[-2:-1] == ["data"] and n.rsplit("/", 1)[1].isdigit()]
    h = hashlib.sha256()
    for name in sorted(entries, key=lambda n: int(n.rsplit("/", 1)[1])):
        with archive.open(name) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def market_outputs(market: dict) -> tuple[str, ...]:
    """The outputs a version adapted to a market computes beyond its base model's (header `market`): its fine-tuned
    stage's room logits, the ImageNet backbone's features."""
    return tuple(k for k, on in zip(MARKET_OUTPUTS, (market.get("stage"), market.get("reference"))) if on)


def tensors_digest(weights: str | Path) -> str:
    """The sha256 of a checkpoint's tensors (not its header): what the serving graph and cached outputs depend on,
    so a version that only adds heads shares its base model's."""
    with zipfile.ZipFile(weights) as archive:
        return storage_digest(archive)


def outputs_tensors(weights: str | Path) -> str:
    """The digest of the tensors that compute a checkpoint's cached outputs: its own, or where it only adds a
    refitted room head or a market stage to a base model, the base model's (recorded in its header)."""
    info = read_model_info(weights)
    return (info.market.get("base_tensors") or info.human.get("room", {}).get("base_tensors")
            or tensors_digest(weights))


def read_model_info(path: str | Path, verify: bool = False) -> ModelInfo:
    """The self-description of a checkpoint file, read without PyTorch; CheckpointError when it is not one, and
    with `verify` when its weights no longer match the digest saved with them (a damaged or edited file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            record = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            with archive.open(record) as f:
                raw = _HeaderUnpickler(f).load()
            info = ModelInfo(**ModelInfo.from_payload(raw, path))
            if verify and info.weights_digest and storage_digest(archive) != info.weights_digest:
                raise CheckpointError(f"{path} is damaged: its weights do not match the checksum saved with them; "
                                      "restore the file or retrain")
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable roomvision checkpoint ({type(exc).__name__})") from None
    return info


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
