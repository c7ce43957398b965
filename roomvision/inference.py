"""Serving: load a checkpoint once, score batches of images, turn outputs into decisions.

On the CPU the forward pass runs in ONNX Runtime and this module never imports PyTorch, so the app and the API
stay small; PyTorch is loaded only for GPUs, the `torch` backend, and the one-off ONNX export.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import expit, softmax
from tqdm import tqdm

from .config import DEFAULT_WEIGHTS, settings
from .decisions import DECISION_COLUMNS, Thresholds, decide_frame
from .devices import resolve_device
from .images import ImageDecodeError, printable_path
from .learning.heads import HumanAestheticHead, HumanQualityHead
from .learning.market import MarketHead, market_inputs
from .learning.scope import ScopeHead, _unpack
from .modelinfo import (GRAPH_KEY, HEAD_OUTPUTS, MARKET_OUTPUT, REFERENCE_OUTPUT, file_sha256, market_outputs,
                        read_model_info, tensors_digest)
from .preprocess import EvalPreprocess, Preprocess, decode_for_model
from .quality import compute_metrics
from .versions import current_default

SCORE_BINS = np.arange(1, 11, dtype=np.float64)
ONNX_CHUNK = 4  # images per ONNX Runtime call: batch-64 peak 445 MB (520 at 8, 1.3 GB at 32), same throughput


def aesthetic_stats(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of 10-bin score distributions."""
    mean = probs @ SCORE_BINS
    std = np.sqrt(np.clip(probs @ SCORE_BINS ** 2 - mean ** 2, 0, None))
    return mean, std


def room_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated room probabilities: softmax of logits / temperature."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def head_scores(raw: dict, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """What the network's own heads say, from raw outputs (training-time validation reads the same): room
    probabilities at `temperature`, P(GOOD) of the proxy-trained quality head, the aesthetic mean and spread."""
    mean, std = aesthetic_stats(raw["aesthetic"])
    return {"probs": room_probabilities(raw["room"], temperature), "p_good": expit(raw["quality"]),
            "aesthetic": mean, "aesthetic_std": std}


def class_heatmap(cams: np.ndarray, class_index: int) -> np.ndarray:
    """One class's activation map of one image, clipped at 0 and scaled to 0-1."""
    cam = np.maximum(cams[class_index], 0)
    return cam / cam.max() if cam.max() > 0 else cam


def onnx_path(weights: str | Path) -> Path:
    """Where the ONNX export of a weights file is cached (keyed by its tensors and the graph's declaration)."""
    return settings().cache_dir / "onnx" / f"{tensors_digest(weights)[:16]}-{GRAPH_KEY}.onnx"


def onnx_provenance(weights: str | Path) -> dict:
    """What the sidecar of a shipped export records: the tensors it was made from (a version that only adds heads
    shares its base model's) and the key of the graph's declaration (modelinfo.GRAPH_KEY)."""
    return {"tensors_sha256": tensors_digest(weights), "graph": GRAPH_KEY}


def shipped_onnx(weights: str | Path) -> Path | None:
    """The ONNX export shipped next to a weights file, or next to the committed default model (`<name>.onnx` with
    its `.json` sidecar), made from exactly these tensors with the current graph; installs without
    PyTorch serve from it."""
    wanted = onnx_provenance(weights)
    for path in dict.fromkeys([Path(weights).with_suffix(".onnx"), DEFAULT_WEIGHTS.with_suffix(".onnx")]):
        try:
            meta = json.loads(path.with_suffix(".onnx.json").read_text())
        except (OSError, ValueError):
            continue
        if path.is_file() and meta == wanted:
            return path
    return None


INT8_GRAPH_VERSION = 1  # bump when the placement of the INT8 quantisation changes (quantize.py)
PROFILES = ("default", "fast")  # fp32, or the INT8 graph of `python -m roomvision quantize`


def int8_provenance(weights: str | Path) -> dict:
    """What an INT8 export serves: the weights' tensors (a version that only adds heads shares its base model's)
    and the graph's key and quantisation placement."""
    return {**onnx_provenance(weights), "int8_graph_version": INT8_GRAPH_VERSION}


def int8_preprocess(graph: Path) -> Preprocess | None:
    """The preprocessing an INT8 export was fine-tuned for (its sidecar), when it records one."""
    meta = json.loads(graph.with_suffix(".onnx.json").read_text())
    return Preprocess(**{**meta["preprocess"], "mean": tuple(meta["preprocess"]["mean"]),
                         "std": tuple(meta["preprocess"]["std"])}) if "preprocess" in meta else None


def int8_onnx(weights: str | Path) -> Path:
    """The INT8 export that serves `weights`: beside them, or beside the committed default model when `weights`
    only adds heads to it; a ValueError naming the command that makes one otherwise."""
    wanted = int8_provenance(weights)
    beside = [Path(weights).with_suffix(".int8.onnx"), DEFAULT_WEIGHTS.with_suffix(".int8.onnx")]
    for candidate in dict.fromkeys(beside):
        try:
            meta = json.loads(candidate.with_suffix(".onnx.json").read_text())
        except (OSError, ValueError):
            continue
        if candidate.is_file() and all(meta.get(k) == v for k, v in wanted.items()):
            return candidate
    raise ValueError(f"no INT8 model for {Path(weights).name} (its backbone differs from the shipped one): make one "
                     f"with python -m roomvision quantize --weights {weights}")


def batch_profile(weights: str | Path, device: str = "auto") -> str:
    """Batch scoring's profile: "fast" on the CPU when the weights have an INT8 model, else "default"."""
    if resolve_device(device) != "cpu":
        return "default"
    try:
        int8_onnx(weights)
    except ValueError:
        return "default"
    return "fast"


def ensure_onnx(weights: str | Path) -> Path:
    """The ONNX export of `weights`: the one shipped beside it, else the cached one, exported first if needed.

    A process that has not imported PyTorch exports in a child process, so that it never pays PyTorch's memory.
    """
    path = shipped_onnx(weights) or onnx_path(weights)
    if path.is_file():
        return path
    print(f"Preparing {Path(weights).name} for ONNX Runtime (once per weights file)…", file=sys.stderr)
    if "torch" in sys.modules:
        from .engine import export_onnx
        return export_onnx(weights, path)
    done = subprocess.run([sys.executable, "-m", "roomvision", "export-onnx", "--weights", str(Path(weights).resolve()),
                           "--out", str(path.resolve())], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)  # finds this package from any directory
    if done.returncode != 0 or not path.is_file():
        hint = (" (exporting needs PyTorch: pip install -e '.[train]')" if "No module named 'torch'" in done.stderr
                else "")
        raise RuntimeError(f"ONNX export of {weights} failed{hint}: {done.stderr.strip()[-500:]}")
    return path


def onnx_session(model, threads: int | None):
    """An ONNX Runtime CPU session for a model file or serialised model."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # no busy-waiting: decoding threads share the same cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no arena or pre-planned buffers kept at their largest: the allocator reuses freed activations
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def pruned_graph(path: Path, outputs: tuple[str, ...], digest: str | None = None) -> Path:
    """The graph at `path` (of sha256 `digest`, computed when not given) cut down to `outputs`
    (onnx.utils.Extractor), made once and kept in the cache: importing onnx costs a process 0.7 s, reading the kept
    file nothing."""
    out = settings().cache_dir / "onnx-pruned" / f"{(digest or file_sha256(path))[:16]}-{'-'.join(outputs)}.onnx"
    if not out.is_file():
        import onnx
        from onnx.utils import Extractor
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
        onnx.save(Extractor(onnx.load(path)).extract_model(["x"], list(outputs)), tmp)
        tmp.replace(out)
    return out


class OnnxGraph:
    """An exported serving graph in ONNX Runtime, run for just the outputs a call asks for.

    ONNX Runtime computes every output of a graph on every call, so each set of outputs gets a session of its own
    on the graph pruned to them (the photo-quality descriptor and the activation maps cost as much as the
    backbone, and a plain prediction needs neither).
    """

    def __init__(self, path: Path, threads: int | None):
        self.path, self.threads = Path(path), threads
        self.sessions: dict[tuple[str, ...], object] = {}

    @cached_property
    def digest(self) -> str:
        """The graph file's sha256, read once however many output sets are asked for."""
        return file_sha256(self.path)

    def session(self, outputs: tuple[str, ...]):
        if outputs not in self.sessions:
            self.sessions[outputs] = onnx_session(pruned_graph(self.path, outputs, self.digest), self.threads)
        return self.sessions[outputs]

    def run(self, x: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        session = self.session(tuple(outputs))
        parts = [session.run(list(outputs), {"x": x[i:i + ONNX_CHUNK]}) for i in range(0, len(x), ONNX_CHUNK)]
        return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(outputs)}


THRESHOLD_COLUMNS = {"quality_threshold": "quality", "min_room_confidence": "min_room_confidence",
                     "min_in_scope": "min_in_scope", "listing_ready_min_aesthetic": "listing_ready_min_aesthetic"}
NON_FINITE = "the model returned non-finite outputs for this photo (damaged weights?); it was not scored"


class Predictor:
    """The model of one checkpoint, ready to score images on the chosen device.

    backend "auto": ONNX Runtime on the CPU (about three times faster than eager PyTorch here, and no PyTorch in
    the process), PyTorch with mixed precision on CUDA. The PyTorch model loads on first use of `model`.
    profile "fast": the INT8 graph (ONNX Runtime's integer kernels, CPU only), same heads and decisions.
    """

    def __init__(self, weights: str | Path | None = None, device: str = "auto", threads: int | None = None,
                 backend: str = "auto", profile: str = "default"):
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, not {backend!r}")
        if profile not in PROFILES:
            raise ValueError(f"profile must be {' or '.join(PROFILES)}, not {profile!r}")
        if profile == "fast":
            if backend == "torch" or device not in ("auto", "cpu"):
                raise ValueError("the fast profile runs the INT8 model in ONNX Runtime on the CPU; on a GPU the "
                                 "default profile already runs in mixed precision")
            backend, device = "onnx", "cpu"
        self.profile = profile
        self.weights = Path(weights) if weights else current_default()
        self.info = read_model_info(self.weights, verify=True)
        self.classes = list(self.info.classes)
        self.calibration = self.info.calibration
        self.thresholds = Thresholds.for_model(self.calibration)  # the calibrated default decisions
        self.version = self.info.version + ("+int8" if profile == "fast" else "")  # says which numbers these are
        human = self.info.human
        self.human_quality = HumanQualityHead(**human["quality"]) if "quality" in human else None
        self.human_aesthetic = HumanAestheticHead(**human["aesthetic"]) if "aesthetic" in human else None
        self.scope = ScopeHead.from_dict(self.info.scope) if self.info.scope else None
        # a room head refitted to people's corrections (weight, bias), stored as plain numbers in the header
        self.refitted_room = ((_unpack(human["room"]["weight"]), np.asarray(human["room"]["bias"], np.float32))
                              if "room" in human else None)
        self.market = MarketHead.from_dict(self.info.market) if self.info.market else None
        # the raw outputs a prediction needs: heads learned from people read the quality features, the
        # out-of-scope head the pooled features, a market head both
        reads_features = self.scope is not None or self.market is not None or self.refitted_room is not None
        self.market_outputs = market_outputs(self.info.market)  # computed by this version alone, cached under it
        self.head_outputs = (HEAD_OUTPUTS + (("quality_features",) if human or self.market is not None else ())
                             + (("features",) if reads_features else ()) + self.market_outputs)
        if profile == "fast" and self.market_outputs:
            raise ValueError(f"{self.weights.name} runs more than the shipped backbone for the {self.market.name!r} "
                             f"market (a fine-tuned stage or a second backbone); the fast profile serves only the "
                             f"shipped backbone: use the default profile")
        # a head that also reads the refitted proxy rules needs each photo's quality metrics
        self.needs_metrics = self.human_quality is not None and self.human_quality.uses_rules
        self.transform = EvalPreprocess(self.info.preprocess)
        self.threads = threads
        self.device = device = "cpu" if device == "auto" and backend == "onnx" else resolve_device(device)
        self.graph = None
        if backend == "onnx" or (backend == "auto" and device == "cpu"):
            if device != "cpu":
                raise ValueError("backend 'onnx' runs on the CPU; use the torch backend on a GPU")
            try:
                self.graph = OnnxGraph(int8_onnx(self.weights) if profile == "fast" else ensure_onnx(self.weights),
                                       threads)
                if profile == "fast" and (pre := int8_preprocess(self.graph.path)) is not None:
                    self.info = dataclasses.replace(self.info, preprocess=pre)  # fine-tuned at its own size
                    self.transform = EvalPreprocess(pre)
                self.graph.session(self.head_outputs)  # load now: a broken file fails here, not on the first image
            except ImportError:
                if backend == "onnx":
                    raise ValueError("backend 'onnx' needs the onnxruntime and onnx packages") from None
        self.backend = "onnx" if self.graph is not None else "torch"
        if self.backend == "torch":
            self.model.eval()  # load now: a broken weights file fails here, not on the first image

    @cached_property
    def model(self):
        """The BatchNorm-folded PyTorch model on this predictor's device (imports PyTorch)."""
        import torch
        from .engine import load_serving_model
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_serving_model(self.weights, self.device)

    def _run_torch(self, loader, progress: str | None = None, on_batch=None,
                   outputs: tuple[str, ...] = HEAD_OUTPUTS) -> dict:
        import torch
        from .engine import run_model
        return run_model(self.model, loader, torch.device(self.device), progress, on_batch, outputs)

    def run_samples(self, samples: pd.DataFrame, outputs: tuple[str, ...], batch_size: int = 64,
                    progress: str | None = None, on_batch=None) -> dict:
        """Raw outputs of the PyTorch model over training-style samples (files, degradations): for evaluation
        and feature caching, which must measure the trained model itself."""
        from torch.utils.data import DataLoader
        from .samples import SampleDataset
        from .transforms import eval_transform
        loader = DataLoader(SampleDataset(samples, eval_transform(self.info.preprocess), self.info.preprocess),
                            batch_size=batch_size, num_workers=1)
        return self._run_torch(loader, progress, on_batch, outputs)

    def p_good(self, quality_logit: np.ndarray, quality_features: np.ndarray | None = None,
               metrics: pd.DataFrame | None = None, rooms: np.ndarray | None = None) -> np.ndarray:
        """P(GOOD): from the head learned from people when the model has one (reading the room probabilities
        `rooms` when its standard depends on the room), else from the proxy-trained head."""
        if self.human_quality is not None:
            return self.human_quality.p_good(quality_features, metrics, rooms)
        return expit(quality_logit)

    def room_logits(self, raw: dict) -> np.ndarray:
        """The room logits of raw outputs: the graph's, or for a version with a refitted room head, that head's on
        the pooled features (cached outputs are shared with the base model, whose room head they hold)."""
        if self.refitted_room is None:
            return raw["room"]
        weight, bias = self.refitted_room
        return np.asarray(raw["features"], np.float32) @ weight.T + bias

    def in_scope_prob(self, raw: dict) -> np.ndarray:
        """P(one of the five rooms) from the raw outputs; NaN for a model without the out-of-scope head."""
        if self.scope is None:
            return np.full(len(raw["room"]), np.nan)
        return self.scope.in_scope_prob(raw["features"])

    def metrics_of(self, images: list[Image.Image]) -> pd.DataFrame | None:
        """The photos' quality metrics when the quality head needs them, else None."""
        if not self.needs_metrics:
            return None
        return pd.DataFrame([compute_metrics(img, img.info.get("original_size")) for img in images])

    def run(self, x: np.ndarray, outputs: tuple[str, ...] = HEAD_OUTPUTS) -> dict:
        """The backend: raw graph `outputs` (ONNX_OUTPUTS names) for a preprocessed batch `x`, ONNX Runtime or
        PyTorch."""
        if self.graph is None:
            return self._run_torch([x], outputs=outputs)
        return self.graph.run(x, outputs)

    def decode(self, source) -> Image.Image:
        """The one decode policy of every entry point: bounded decoding, JPEGs at the scale the model needs."""
        return decode_for_model(source, self.info.preprocess)

    def scores(self, raw: dict, metrics: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """The served numbers from raw outputs (the one place they are computed): calibrated room probabilities,
        P(GOOD) and the aesthetic score from the heads learned from people where the model has them, the aesthetic
        spread, P(in scope)."""
        served = head_scores({**raw, "room": self.room_logits(raw)}, self.calibration.temperature)
        if self.human_aesthetic is not None:
            served["aesthetic"] = self.human_aesthetic.score(raw["quality_features"])
        served["in_scope"] = self.in_scope_prob(raw)
        if self.market is not None:  # the market's own head where a photo looks like that market
            served["probs"], served["in_scope"] = self.market.blend(
                market_inputs(raw), served["probs"], served["in_scope"], raw.get(MARKET_OUTPUT),
                raw.get(REFERENCE_OUTPUT))
        served["p_good"] = self.p_good(raw["quality"], raw.get("quality_features"), metrics, served["probs"])
        return served

    def _rows(self, raw: dict, metrics: pd.DataFrame | None = None) -> list[dict]:
        """Result rows of probabilities (no decisions); with 'room_cam' in `raw`, each row also gets the 0-1 heat
        map of its most probable room."""
        served = self.scores(raw, metrics)
        probs, p_good, in_scope = served["probs"], served["p_good"], served["in_scope"]
        mean, std = served["aesthetic"], served["aesthetic_std"]
        finite = (np.isfinite(probs).all(1) & np.isfinite(p_good) & np.isfinite(mean) & np.isfinite(std)
                  & (np.isfinite(in_scope) | (self.scope is None)))  # NaN: a model without the out-of-scope head
        rows = []
        for i in range(len(probs)):
            if not finite[i]:
                rows.append({"model_version": self.version, "error": NON_FINITE})
                continue
            row = {"room": self.classes[int(probs[i].argmax())]}
            row.update({f"prob_{c}": float(probs[i, j]) for j, c in enumerate(self.classes)})
            row.update(model_version=self.version, in_scope_prob=float(in_scope[i]),
                       quality_prob_good=float(p_good[i]),
                       aesthetic_score=float(mean[i]), aesthetic_std=float(std[i]),
                       aesthetic_distribution=raw["aesthetic"][i].round(4).tolist(), error="")
            if "room_cam" in raw:
                row["room_cam"] = class_heatmap(raw["room_cam"][i], int(probs[i].argmax()))
            rows.append(row)
        return rows

    def predict_images(self, images: list[Image.Image], with_cam: bool = False) -> list[dict]:
        """Score decoded RGB images together as one batch; `with_cam` adds each row's Grad-CAM ('room_cam')."""
        if not images:
            return []
        outputs = (*self.head_outputs, *(("room_cam",) if with_cam else ()))
        return self._rows(self.run(self.transform.batch(images), outputs), self.metrics_of(images))

    def predict_named(self, named: list[tuple[str, object]], with_cam: bool = False
                      ) -> list[tuple[dict, Image.Image | None]]:
        """Decode named files (bytes or file objects, read one at a time) and score the readable ones as one batch.

        Each item gets (row, image): the row carries 'path' and 'error'; unreadable files get image None.
        """
        decoded, results = [], []
        for name, data in named:
            try:
                decoded.append(self.decode(data))
                results.append(({"path": name}, decoded[-1]))
            except ImageDecodeError as exc:
                results.append(({"path": name, "model_version": self.version, "error": str(exc)}, None))
        rows = iter(self.predict_images(decoded, with_cam))
        return [({**row, **next(rows)}, img) if img is not None else (row, None) for row, img in results]

    def iter_predict_paths(self, paths: list[str | Path], batch_size: int = 32, workers: int | None = None):
        """Yield the result rows of each batch of files; unreadable files get an error row.

        `workers` threads (default 2) decode and preprocess the next batch while the current one runs.
        """
        def load(path):
            if name_error := printable_path(path)[1]:
                return None, name_error
            try:
                img = self.decode(path)
                metrics = self.metrics_of([img])
                return (self.transform(img), None if metrics is None else metrics.iloc[0]), ""
            except ImageDecodeError as exc:
                return None, str(exc)

        batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        with ThreadPoolExecutor(max(1, workers or 2)) as pool:
            upcoming = [pool.submit(load, p) for p in batches[0]] if batches else []
            for i, batch in enumerate(batches):
                current = upcoming
                upcoming = [pool.submit(load, p) for p in batches[i + 1]] if i + 1 < len(batches) else []
                items = [f.result() for f in current]
                current = None  # the futures hold their results: only the stacked batch stays while it runs
                errors = [err for _, err in items]
                readable = [x for x, _ in items if x is not None]
                metrics = pd.DataFrame([m for _, m in readable]) if self.needs_metrics else None
                x = np.stack([a for a, _ in readable]) if readable else None
                items = readable = None
                scored = iter(self._rows(self.run(x, self.head_outputs), metrics) if x is not None else [])
                x = None
                yield [{"path": printable_path(path)[0], **next(scored)} if not err else
                       {"path": printable_path(path)[0], "model_version": self.version, "error": err}
                       for path, err in zip(batch, errors)]

    def explain(self, img: Image.Image, class_index: int | None = None) -> tuple[np.ndarray, int]:
        """Grad-CAM of the room head: a 0-1 heat map over the last feature map and the class it explains.

        For a linear head on globally pooled features Grad-CAM is the class activation map, which the serving
        graph already computes, so no gradients (and no PyTorch) are needed.
        """
        raw = self.run(self.transform.batch([img]), ("room", "room_cam"))
        c = int(raw["room"][0].argmax()) if class_index is None else class_index
        return class_heatmap(raw["room_cam"][0], c), c

    def predict_paths(self, paths: list[str | Path], batch_size: int = 32, workers: int | None = None,
                      progress: bool = False) -> list[dict]:
        """Score files in batches; unreadable files get an error row."""
        results: list[dict] = []
        with tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress, file=sys.stderr) as bar:
            for rows in self.iter_predict_paths(paths, batch_size, workers):
                results.extend(rows)
                bar.update(len(rows))
        return results


def results_frame(results: list[dict], classes: list[str], thresholds: Thresholds,
                  decimals: int | None = 4) -> pd.DataFrame:
    """Predictions with the decisions at `thresholds` and the thresholds themselves, in a fixed column order: the
    one output schema of CSV, JSON, Parquet, the API and the app (numbers rounded to `decimals`; None keeps all)."""
    cols = ["path", "model_version", *DECISION_COLUMNS[:2], *[f"prob_{c}" for c in classes], "in_scope_prob",
            DECISION_COLUMNS[2], "quality_prob_good", DECISION_COLUMNS[3], "aesthetic_score", "aesthetic_std",
            *DECISION_COLUMNS[4:], "quality_threshold", "min_room_confidence", "min_in_scope",
            "listing_ready_min_aesthetic", "error"]
    frame = pd.DataFrame(results).reindex(columns=sorted(set(cols) - set(DECISION_COLUMNS) - set(THRESHOLD_COLUMNS)))
    frame["error"] = frame["error"].fillna("")
    df = pd.concat([frame, decide_frame(frame, thresholds, classes)], axis=1)
    for column, name in THRESHOLD_COLUMNS.items():
        df[column] = getattr(thresholds, name)
    df = df.reindex(columns=cols)
    return df if decimals is None else df.round(decimals)


RESULT_FORMATS = (".csv", ".json", ".parquet")


def check_output(out: Path | None) -> None:
    """ValueError unless `out` names a format results are written in (checked before any photo is scored)."""
    if out is not None and out.suffix.lower() not in RESULT_FORMATS:
        raise ValueError(f"cannot write {out.name}: --out must end in {', '.join(RESULT_FORMATS)}")


def write_results(results: list[dict], out: Path | None, classes: list[str], thresholds: Thresholds) -> None:
    """CSV (stdout when out is None; cells a spreadsheet would run as formulas neutralised), JSON or Parquet (the
    values as they are) by the file suffix."""
    from .tables import neutralise_formulas
    check_output(out)
    df = results_frame(results, classes, thresholds)
    suffix = out.suffix.lower() if out is not None else ".csv"
    if suffix == ".json":
        out.write_text(json.dumps(json.loads(df.to_json(orient="records")), indent=2) + "\n")
    elif suffix == ".parquet":
        df.to_parquet(out, index=False)
    else:
        neutralise_formulas(df).to_csv(out if out is not None else sys.stdout, index=False)
