"""Streamlit glue shared by the pages: cached model loading, model choice, and page-independent helpers.

Pages hold layout only; everything they compute comes from `roomvision` through these functions.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from . import config
from .images import ImageDecodeError, load_image
from .inference import Predictor
from .modelinfo import CheckpointError, Thresholds, read_model_info
from .quality import compute_metrics, quality_reasons

ENV_MANIFEST = "ROOMVISION_MANIFEST"
ENV_RELABELS = "ROOMVISION_RELABELS"


def manifest_path() -> Path:
    return Path(os.environ.get(ENV_MANIFEST, config.DEFAULT_MANIFEST))


def relabels_path() -> Path:
    return Path(os.environ.get(ENV_RELABELS, config.DEFAULT_RELABELS))


@st.cache_resource(show_spinner="Loading model…")
def load_predictor(weights: str, mtime: float) -> Predictor:
    """One shared, read-only predictor per weights file (mtime makes a replaced file reload)."""
    return Predictor(weights)


def list_models(folder: Path) -> pd.DataFrame:
    """Weights files in `folder` with their headline validation metrics."""
    rows = []
    for path in sorted(folder.glob("*.pt")):
        try:
            ckpt = read_model_info(path)
        except CheckpointError as exc:
            rows.append({"file": path.name, "version": "", "error": str(exc)})
            continue
        val = ckpt.metrics.get("validation", {})
        rows.append({"file": path.name, "version": ckpt.version, "backbone": ckpt.backbone, "created": ckpt.created,
                     "val_room_accuracy": val.get("room_accuracy"), "val_room_macro_f1": val.get("room_macro_f1"),
                     "val_quality_roc_auc": val.get("quality_roc_auc"), "error": ""})
    return pd.DataFrame(rows)


def active_weights() -> Path:
    """The model chosen on the Model page for this session, else the configured default."""
    return Path(st.session_state.get("active_weights", str(config.default_weights_path())))


def get_predictor() -> Predictor | None:
    """The active predictor, or None after showing a clear error."""
    path = active_weights()
    try:
        return load_predictor(str(path), path.stat().st_mtime if path.exists() else 0.0)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        st.error(f"Cannot load the model: {exc}")
        return None


def default_thresholds(predictor: Predictor) -> dict:
    return asdict(predictor.thresholds)


def threshold_sidebar(predictor: Predictor) -> Thresholds:
    """Sliders for the decision thresholds (defaults from the checkpoint) with a reset button."""
    defaults = default_thresholds(predictor)
    keys = {"quality": "thr_quality", "min_room_confidence": "thr_room", "listing_ready_min_aesthetic": "thr_aesthetic"}
    if st.session_state.get("thr_model") != predictor.version or st.session_state.pop("thr_reset", False):
        for name, key in keys.items():
            st.session_state[key] = float(defaults[name])
        st.session_state["thr_model"] = predictor.version
    st.sidebar.header("Decision thresholds")
    st.sidebar.slider("Quality threshold: P(GOOD) at or above is GOOD", 0.0, 1.0, step=0.01, key=keys["quality"],
                      help=f"Calibrated default: {defaults['quality']:.2f}")
    st.sidebar.slider("Minimum room confidence", 0.0, 1.0, step=0.01, key=keys["min_room_confidence"],
                      help="Below this the room shows as 'uncertain'")
    st.sidebar.slider("Minimum aesthetic score for 'listing-ready'", 1.0, 10.0, step=0.1,
                      key=keys["listing_ready_min_aesthetic"])
    if st.sidebar.button("Reset to defaults"):
        st.session_state["thr_reset"] = True
        st.rerun()
    return Thresholds(temperature=predictor.thresholds.temperature,
                      **{name: float(st.session_state[key]) for name, key in keys.items()})


def score_uploads(predictor: Predictor, uploads: list[tuple[str, bytes]], batch_size: int = 16,
                  progress=None) -> list[dict]:
    """Decode, score (with Grad-CAM) and explain (proxy metrics) uploaded files in batches; bad files get an
    error row."""
    results: list[dict] = []
    for start in range(0, len(uploads), batch_size):
        for row, img in predictor.predict_named(uploads[start:start + batch_size], with_cam=True):
            if img is not None:
                row["metrics"] = compute_metrics(img)
                row["proxy_reasons"] = quality_reasons(row["metrics"])
            results.append(row)
        if progress is not None:
            progress(min(start + batch_size, len(uploads)), len(uploads))
    return results


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str, size: int = 256) -> bytes | None:
    """A small JPEG of an image file, cached; None when the file cannot be read."""
    try:
        img = load_image(path)
    except ImageDecodeError:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def overlay_heatmap(img: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a 0-1 heat map (any size) over the image with a jet colour map."""
    import cv2
    rgb = np.asarray(img.convert("RGB"))
    h = cv2.resize(heat.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(h, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return Image.fromarray(np.uint8((1 - alpha) * rgb + alpha * colour))


def dataset_roots_sidebar() -> dict[str, str]:
    """Editable dataset roots (source name -> folder), defaulting to the environment or the manifest sidecar."""
    from .data import manifest_roots
    known = manifest_roots(manifest_path())
    text = st.sidebar.text_input(f"Dataset roots (separated by '{os.pathsep}'; also ${config.ENV_DATA_ROOT})",
                                 os.pathsep.join(str(p) for p in known.values()), key="dataset_roots")
    return {os.path.basename(p.rstrip("/")): p for p in text.split(os.pathsep) if p}


@st.cache_data(show_spinner=False)
def read_manifest(path: str, mtime: float) -> pd.DataFrame:
    from .data import load_manifest
    return load_manifest(Path(path))


@st.cache_data(show_spinner=False)
def cached_p_good(cache_file: str, mtime: float) -> pd.Series:
    """P(GOOD) of the real photos in a feature cache, indexed by sha256."""
    from .features import load_feature_cache
    data = load_feature_cache(Path(cache_file))
    real = (data["samples"]["degrade"] == "").to_numpy()
    return pd.Series(1 / (1 + np.exp(-data["quality_logit"][real])), index=data["samples"]["sha256"][real].to_numpy())
