"""Streamlit glue shared by the pages: cached model loading, model choice, and page-independent helpers.

Pages hold layout only; everything they compute comes from `roomvision` through these functions.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

# Besides what this module uses, it imports what the pages show or call from the rest of the package (F401): pages
# import this module only (tests/test_architecture.py checks it), so each page reads as layout.
from . import config
from .config import CLASSES, ENV_DATA_ROOT, ENV_RELABELS, ENV_ROOM_RELABELS, settings  # noqa: F401
from .decisions import OUT_OF_SCOPE, UNCERTAIN, Thresholds, distinct_digits, quality_decision  # noqa: F401
from .features import build_feature_cache, cache_path  # noqa: F401
from .images import ImageDecodeError, load_image
from .inference import Predictor, results_frame  # noqa: F401
from .learning.collection import Collection, get_collection, list_collections
from .learning.heads import too_few_to_learn  # noqa: F401
from .learning.jobs import JobError, read_status, start, status_file  # noqa: F401
from .learning.market import MIN_CORRECTIONS  # noqa: F401
from .learning.queue import RERANK_EVERY, relabel_queue  # noqa: F401
from .learning.stores import (AMBIGUOUS, NOT_A_ROOM, ROOM, ClaimBoard, LabelStore, annotator_agreement,  # noqa: F401
                              my_decision, photo_history)
from .modelinfo import CheckpointError
from .quality import compute_metrics, quality_reasons
from .reports import filter_failures, report_paths  # noqa: F401
from .tables import export_csv, neutralise_formulas  # noqa: F401
from .versions import (current_default, rollback_team_default, set_team_default, version_files,  # noqa: F401
                       versions_table)

PHOTOS_PER_PAGE = 12  # cards the Predict page draws at once: a threshold step redraws one page
PREVIEW_SIDE = 640  # the Predict page shows (and overlays Grad-CAM on) a preview, not the full-size photo


APP_NAVIGATION = "app_navigation"  # session flag app.py sets before its st.navigation runs the page


def ensure_app_navigation() -> None:
    """Call first on every page. When the first request after the server starts is a bookmarked page URL
    (/relabel), Streamlit runs that file of pages/ directly in its legacy multipage mode (a sidebar of file names,
    app.py never run) because it has not yet seen app.py call st.navigation; switch that mode off and rerun once,
    so app.py's navigation serves the same URL."""
    from streamlit.runtime.pages_manager import PagesManager
    if not st.session_state.get(APP_NAVIGATION) and not st.session_state.get("left_legacy_pages"):
        st.session_state["left_legacy_pages"] = True
        PagesManager.uses_pages_directory = False
        st.rerun()


BUILT_IN_CHOICE = "House Rooms + Places365 (built-in)"


def collection_sidebar() -> Collection | None:
    """The collection this session works on (shared by the pages): the built-in research sets, or an imported one."""
    names = [BUILT_IN_CHOICE, *[c.name for c in list_collections() if not c.built_in]]
    if st.session_state.get("collection") not in names:
        st.session_state["collection"] = BUILT_IN_CHOICE
    # the choice lives in a plain session key (a widget's own key is dropped on pages that do not draw it)
    st.session_state["collection_choice"] = st.session_state["collection"]
    st.sidebar.selectbox("Collection", names, key="collection_choice",
                         on_change=lambda: st.session_state.update(collection=st.session_state["collection_choice"]),
                         help="Whose photos to label: the built-in research sets, or a collection of your own "
                              "(import one on the Collections page)")
    return chosen_collection()


def chosen_collection() -> Collection | None:
    """The imported collection chosen in this session, None for the built-in research sets."""
    name = st.session_state.get("collection")
    if not name or name == BUILT_IN_CHOICE:
        return None
    try:
        return get_collection(name)
    except ValueError:
        return None


def manifest_path() -> Path:
    chosen = chosen_collection()
    return chosen.manifest if chosen else settings().manifest


def relabels_path() -> Path:
    chosen = chosen_collection()
    return chosen.relabels if chosen else settings().relabels


def room_relabels_path() -> Path:
    chosen = chosen_collection()
    return chosen.room_relabels if chosen else settings().room_relabels


@st.cache_resource(show_spinner="Loading model…")
def load_predictor(weights: str, mtime: float) -> Predictor:
    """One shared, read-only predictor per weights file (mtime makes a replaced file reload)."""
    return Predictor(weights)


def active_weights() -> Path:
    """The model chosen on the Model page for this session, else the configured default."""
    return Path(st.session_state.get("active_weights", str(current_default())))


def get_predictor() -> Predictor | None:
    """The active predictor, or None after showing a clear error."""
    path = active_weights()
    try:
        return load_predictor(str(path), path.stat().st_mtime if path.exists() else 0.0)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        st.error(f"Cannot load the model: {exc}")
        return None


def threshold_sidebar(predictor: Predictor) -> Thresholds:
    """Sliders for the decision thresholds (defaults from the checkpoint) with a reset button."""
    defaults = asdict(predictor.thresholds)
    keys = {"quality": "thr_quality", "min_room_confidence": "thr_room", "min_in_scope": "thr_scope",
            "listing_ready_min_aesthetic": "thr_aesthetic"}
    if st.session_state.get("thr_model") != predictor.version or st.session_state.pop("thr_reset", False):
        for name, key in keys.items():
            st.session_state[key] = float(defaults[name])
        st.session_state["thr_model"] = predictor.version
    st.sidebar.header("Decision thresholds")
    st.sidebar.slider("Quality threshold: P(GOOD) at or above is GOOD", 0.0, 1.0, step=0.0005, format="%.4f",
                      key=keys["quality"], help=f"Calibrated default: {defaults['quality']:.4f}")
    st.sidebar.slider("Minimum room confidence", 0.0, 1.0, step=0.01, key=keys["min_room_confidence"],
                      help="Below this the room shows as 'uncertain'")
    st.sidebar.slider("Minimum P(one of the five rooms)", 0.0, 1.0, step=0.0005, format="%.4f",
                      key=keys["min_in_scope"],
                      help=f"Below this the photo is 'not one of the five rooms' (an exterior, a hallway, a floor "
                           f"plan…). Calibrated default: {defaults['min_in_scope']:.4f}",
                      disabled=predictor.scope is None)
    st.sidebar.slider("Minimum aesthetic score for 'listing-ready'", 1.0, 10.0, step=0.1,
                      key=keys["listing_ready_min_aesthetic"])
    if st.sidebar.button("Reset to defaults", key="thr-reset"):
        st.session_state["thr_reset"] = True
        st.rerun()
    return Thresholds(**{name: float(st.session_state[key]) for name, key in keys.items()})


@st.cache_data(max_entries=1000, show_spinner=False)
def score_upload(model_version: str, content_sha256: str, _predictor: Predictor, _data: bytes) -> dict:
    """One upload decoded once, scored and explained (proxy metrics), with JPEG previews plain and with Grad-CAM.

    Cached by model version and content hash (bounded), so reruns and repeated files cost nothing.
    """
    ((row, img),) = _predictor.predict_named([("upload", _data)], with_cam=True)
    if img is None:
        return row
    row["metrics"] = compute_metrics(img, img.info.get("original_size"))
    row["proxy_reasons"] = quality_reasons(row["metrics"])
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    row["preview"] = jpeg_bytes(img)
    row["cam_preview"] = jpeg_bytes(overlay_heatmap(img, row.pop("room_cam")))
    return row


def jpeg_bytes(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def score_uploads(predictor: Predictor, uploads: list[tuple[str, bytes]], progress=None) -> list[dict]:
    """Scores of uploaded files in order (each named as uploaded); unreadable files get an error row."""
    results = []
    for i, (name, data) in enumerate(uploads):
        row = score_upload(predictor.version, hashlib.sha256(data).hexdigest(), predictor, data)
        results.append({**row, "path": name})
        if progress is not None:
            progress(i + 1, len(uploads))
    return results


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str, size: int = 256) -> bytes | None:
    """A small JPEG of an image file, cached; None when the file cannot be read."""
    try:
        img = load_image(path)
    except ImageDecodeError:
        return None
    img.thumbnail((size, size))
    return jpeg_bytes(img, quality=85)


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
                                 os.pathsep.join(str(p) for p in known.values()),
                                 key=f"dataset_roots-{st.session_state.get('collection', '')}")
    return {os.path.basename(p.rstrip("/")): p for p in text.split(os.pathsep) if p}


def pick_from_grid(rows: list[dict], roots: dict[str, str], caption) -> list[dict]:
    """Thumbnails of `rows` in four columns, each with a checkbox labelled `caption(row)`; the rows ticked. A photo
    that cannot be shown has no checkbox: nothing is decided for a photo nobody saw."""
    shown = [r for r in rows if r["source"] in roots]
    if shown and st.button("Select all", key="grid-select-all"):
        for r in shown:
            st.session_state[f"pick-{r['sha256']}"] = True
    grid = st.columns(4)
    picked = []
    for i, row in enumerate(rows):
        with grid[i % 4].container(border=True):
            thumb = thumbnail(os.path.join(roots[row["source"]], row["path"])) if row["source"] in roots else None
            if thumb:
                st.image(thumb)
                if st.checkbox(caption(row), key=f"pick-{row['sha256']}"):
                    picked.append(row)
            else:
                st.warning(f"Image not found: {row['source']}/{row['path']}")
    return picked


def save_upload_feedback(data: bytes, name: str, annotator: str, model_version: str, room: str | None = None,
                         quality: str | None = None) -> str:
    """A correction made where the photo was seen (Predict page): the photo joins the uploads collection and the
    decision goes to its stores. Returns what happened, 'Not saved: …' when nothing could be written."""
    from .learning.collection import UPLOADS, add_upload, record_feedback
    from .learning.stores import LabelError
    if not annotator.strip():
        return "Not saved: enter your name in the sidebar first."
    try:
        row = add_upload(data, name)
        record_feedback(get_collection(UPLOADS), row["sha256"], room, quality, annotator, model_version)
    except (LabelError, ValueError) as exc:
        return f"Not saved: {exc}"
    except OSError as exc:
        return f"Not saved: cannot write to the uploads collection ({exc.strerror or type(exc).__name__})."
    return f"Saved {' and '.join(v for v in (room, quality) if v)} for {name} (collection '{UPLOADS}')."


def save_decisions(store, history: list, label: str, rows: list[dict], annotator: str, model_version: str,
                   env_var: str, fields=lambda row: {}) -> str:
    """Append one decision per photo (`fields(row)` adds the store's own columns), or with label UNDO take the
    session's last action back, all its photos; `history` holds this session's actions. Returns what happened
    for the page to show, 'Not saved: …' when nothing could be written."""
    from .learning.stores import LabelError
    try:
        if label == "UNDO":
            if not history:
                return "Nothing to undo in this session."
            last = history.pop()
            for row in last:
                store.append(row["path"], "UNDO", sha256=row["sha256"], annotator=annotator,
                             model_version=model_version)
            return f"Undid the decision on {', '.join(r['path'] for r in last)}."
        for row in rows:
            store.append(row["path"], label, sha256=row["sha256"], annotator=annotator, model_version=model_version,
                         **fields(row))
        history.append([{"path": r["path"], "sha256": r["sha256"]} for r in rows])
        return f"Saved {label} for {', '.join(r['path'] for r in rows)}."
    except LabelError as exc:
        return f"Not saved: {exc}"
    except OSError as exc:
        return (f"Not saved: cannot write the label file {store.path} ({exc.strerror or type(exc).__name__}). "
                f"Check that its folder exists and is writable, or set ${env_var} to another file.")


@st.cache_data(show_spinner=False)
def read_manifest(path: str, mtime: float) -> pd.DataFrame:
    from .data import load_manifest
    return load_manifest(Path(path))


@st.cache_data(show_spinner=False, max_entries=4)
def cached_p_good(cache_file: str, mtime: float, _predictor: Predictor, model_version: str,
                  manifest_file: str) -> pd.Series:
    """P(GOOD) of every cached manifest photo under the active model, indexed by sha256."""
    from .data import load_manifest
    from .features import cached_scores
    return cached_scores(Path(cache_file), _predictor, load_manifest(Path(manifest_file)))["p_good"]


@st.cache_data(show_spinner="Learning from the labels so far to choose what to ask next…", max_entries=4)
def active_priority(cache_file: str, manifest_file: str, relabels_file: str, labels_bucket: int) -> pd.Series | None:
    """The active-learning order, refitted every 25 new decisions (`labels_bucket`)."""
    from .learning.queue import next_to_label
    return next_to_label(Path(cache_file), Path(manifest_file), Path(relabels_file))


_LABEL_ISSUES: dict[tuple, pd.DataFrame] = {}  # the app process's rankings (a plain memo: the view reports progress)


def cached_label_issues(cache_file: str, mtime: float, manifest_file: str, predictor: Predictor, room_relabels: str,
                        corrections_bucket: int, on_progress=None) -> pd.DataFrame:
    """Every manifest photo ranked by how likely its room label is wrong, exactly as `label-issues` ranks them
    (people's room corrections applied, photos marked ambiguous or not a room left out; kept on disk, so a restart
    opens at once); recomputed every 25 corrections (`corrections_bucket`), and the page leaves out the photos
    corrected since."""
    from .learning.label_issues import find_room_label_issues
    key = (cache_file, mtime, manifest_file, predictor.version, room_relabels, corrections_bucket)
    if key not in _LABEL_ISSUES:
        ranked = find_room_label_issues(Path(manifest_file), Path(cache_file), predictor,
                                        room_relabels=Path(room_relabels), on_progress=on_progress)
        while len(_LABEL_ISSUES) >= 4:
            _LABEL_ISSUES.pop(next(iter(_LABEL_ISSUES)))
        _LABEL_ISSUES[key] = ranked
    return _LABEL_ISSUES[key]


def progress_with_estimate(text: str):
    """A progress bar and an `on_progress(done, total, message)` that fills it with the time left."""
    import time
    bar, started = st.progress(0.0, text=text), time.monotonic()

    def on_progress(done: int, total: int, message: str = "") -> None:
        elapsed = time.monotonic() - started
        left = f" · about {elapsed / done * (total - done):.0f} s left" if done and done < total else ""
        bar.progress(done / max(total, 1), text=f"{message or text}{left}")
    return bar, on_progress


@st.cache_data(show_spinner="Ranking the photos the model is least sure of…", max_entries=4)
def cached_rooms_to_confirm(cache_file: str, mtime: float, manifest_file: str, model_version: str,
                            _predictor: Predictor, room_relabels: str, corrections_round: int) -> pd.DataFrame:
    """A collection without room labels: every photo with the model's room, least sure first, ranked again by a head
    fitted on the corrections every RERANK_EVERY of them (`corrections_round`; the page leaves out the photos
    people have corrected in between)."""
    from .learning.label_issues import rooms_to_confirm
    return rooms_to_confirm(Path(manifest_file), Path(cache_file), _predictor, Path(room_relabels))


def learning_unavailable() -> str:
    """Why this install cannot write a learned version ('' when it can)."""
    import importlib.util

    from .config import missing_extra
    missing = next((m for m in ("torch", "timm") if importlib.util.find_spec(m) is None), None)
    return missing_extra(ModuleNotFoundError(name=missing)) if missing else ""


@st.fragment(run_every=2)
def progress_fragment(job: Path) -> None:
    """A background job's progress bar with an estimate and a cancel button, refreshed every 2 s."""
    import time

    from .learning.jobs import cancel
    status = read_status(job) or {}
    if not status.get("running"):
        st.rerun()
    done, total = status.get("done", 0), status.get("total", 0)
    elapsed = time.time() - status.get("started", time.time())
    eta = f", about {elapsed / done * (total - done) / 60:.0f} min left" if done and total else ""
    st.progress(done / total if total else 0.0, text=f"{status.get('message', 'working')}{eta}")
    if st.button("Cancel", key="cancel-job"):
        if (outcome := cancel(job)) != "cancelled":
            st.warning(outcome)
        else:
            st.rerun()


def show_job_result(status: dict) -> None:
    """What the last learning job did: the new version, before -> after on held-out human labels, moved rules."""
    if status.get("state") == "done":
        r = status["result"]
        st.success(f"Saved {Path(r['out']).name} ({r['human_labels']} human labels, {r['human_ratings']} ratings, "
                   f"{r.get('room', {}).get('room_corrections_used', 0)} room corrections, "
                   f"{r['seconds']:.0f} s). The previous version stays listed above.")
        new, previous = Path(r["out"]), active_weights()
        if previous != new and st.button(f"Use {new.name} now", type="primary", key="use-new-version"):
            st.session_state["previous_weights"] = str(previous)
            st.session_state["active_weights"] = str(new)
            st.rerun()
        if (back := st.session_state.get("previous_weights")) and active_weights() == new:
            if st.button(f"Restore {Path(back).name}", key="restore-previous-version"):
                st.session_state["active_weights"] = st.session_state.pop("previous_weights")
                st.rerun()
        if r.get("balanced_accuracy_after_cv") is not None:
            st.metric("Agreement with people (balanced accuracy on held-out human labels)",
                      f"{r['balanced_accuracy_after_cv']:.2f}",
                      f"{r['balanced_accuracy_after_cv'] - r['balanced_accuracy_before']:+.2f} vs before "
                      f"({r['balanced_accuracy_before']:.2f})")
        if r.get("rules_moved"):
            st.write("Your labels moved these proxy rules: " + "; ".join(r["rules_moved"]))
        if room := r.get("room"):
            st.metric(f"Room accuracy on validation ({room['room_corrections_used']} corrected training photos)",
                      f"{room['val_accuracy_after']:.3f}",
                      f"{room['val_accuracy_after'] - room['val_accuracy_before']:+.3f} vs before "
                      f"({room['val_accuracy_before']:.3f}); {room['val_predictions_changed']:.1%} of predictions "
                      "changed", delta_color="normal")
    elif status.get("state") in ("failed", "cancelled"):
        st.warning(f"The last run {status['state']}: {status.get('message', '')}")
