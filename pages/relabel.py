"""Review proxy quality labels one photo at a time; decisions are appended to the relabel CSV."""
import os
from pathlib import Path

import streamlit as st

from roomvision.webapp import (ENV_RELABELS, RERANK_EVERY, ClaimBoard, LabelStore, active_priority,
                               annotator_agreement, build_feature_cache, cache_path, cached_p_good, collection_sidebar,
                               dataset_roots_sidebar, distinct_digits, ensure_app_navigation, export_csv,
                               get_predictor, manifest_path, my_decision, photo_history, pick_from_grid,
                               quality_decision, read_manifest, relabel_queue, relabels_path, save_decisions,
                               thumbnail)

ensure_app_navigation()
st.title("Relabel photo quality")
collection_sidebar()
predictor = get_predictor()
manifest_file = manifest_path()
if predictor is None:
    st.stop()
if not manifest_file.is_file():
    st.info(f"No manifest at `{manifest_file}`. Create one with `python -m roomvision prepare ROOT…` "
            "(each root holds one folder per room class).")
    st.stop()

st.sidebar.header("Labelling")
annotator = st.sidebar.text_input("Your name", key="annotator")
order = st.sidebar.selectbox("Queue order", ["informative", "random", "file"],
                             help="informative: once you have labelled a few GOOD and BAD photos, the photos a model "
                                  "fitted on your labels is least sure of (spread out), alternating with random photos; "
                                  "before that, 50 random photos; then model and proxy disagree, then P(GOOD) nearest "
                                  "the threshold")
include_labelled = st.sidebar.checkbox("Include photos already labelled")
grid_mode = st.sidebar.toggle("Grid mode (label many at once)", key="relabel_grid")
split = st.sidebar.selectbox("Split", ["all", "train", "val", "test"])
roots = dataset_roots_sidebar()

store = LabelStore(relabels_path())
manifest = read_manifest(str(manifest_file), manifest_file.stat().st_mtime)
if split != "all":
    manifest = manifest[manifest["split"] == split]

scores_file = cache_path(predictor.weights, manifest_file)
p_good = priority = None
decided = store.decided_keys()
if scores_file.is_file():
    p_good = cached_p_good(str(scores_file), scores_file.stat().st_mtime, predictor, predictor.version,
                           str(manifest_file))
    if order == "informative":
        priority = active_priority(str(scores_file), str(manifest_file), str(store.path), len(decided) // RERANK_EVERY)
else:
    st.warning("The model has not scored the manifest yet, so the informative order cannot rank by the model "
               "or learn from your labels; P(GOOD) is computed for each photo as it is shown.")
    if st.button("Score all manifest photos now (resumable; about 4 minutes per 10,000 photos on a CPU)"):
        bar = st.progress(0.0, text="Scoring…")
        build_feature_cache(predictor, manifest_file, [Path(p) for p in roots.values()], progress=False,
                            on_batch=lambda d, t: bar.progress(d / max(t, 1), text=f"{d}/{t} photos"))
        st.rerun()

queue = relabel_queue(manifest, p_good, predictor.thresholds.quality, decided, order, include_labelled,
                      priority=priority)
claims = ClaimBoard(store.path)
if annotator.strip():  # photos on someone else's screen right now are left to them
    queue = queue[~queue["sha256"].isin(claims.held_by_others(annotator.strip()))].reset_index(drop=True)
labelled = int(manifest["sha256"].isin(decided).sum())
st.progress(labelled / max(len(manifest), 1), text=f"{labelled} / {len(manifest)} photos labelled")

history = st.session_state.setdefault("relabel_history", [])
pos = st.session_state.setdefault("relabel_pos", 0)
revisit = st.session_state.get("relabel_revisit")  # a photo decided earlier, shown again to change its decision
if revisit is not None and not (manifest["sha256"] == revisit).any():  # not in this split selection
    st.session_state.pop("relabel_revisit")
    revisit = None


def move(step: int) -> None:
    """Next (+1) skips the photo without a decision; previous (-1) goes back in the queue, and from its start to
    the photos decided in this session, newest first, so a decision can be changed (the latest one counts)."""
    if step > 0:
        if st.session_state.pop("relabel_revisit", None) is None:
            st.session_state["relabel_pos"] += 1
    elif st.session_state["relabel_pos"] > 0 and "relabel_revisit" not in st.session_state:
        st.session_state["relabel_pos"] -= 1
    else:
        decided_here = [r for action in history for r in action]
        back = st.session_state.get("relabel_back", 0) + 1
        if back <= len(decided_here):
            st.session_state["relabel_back"] = back
            st.session_state["relabel_revisit"] = decided_here[-back]["sha256"]


def record(label: str, rows: list[dict]) -> None:
    """Save one decision per photo, or undo this session's last action (its photo is shown again)."""
    undone = history[-1][0]["sha256"] if label == "UNDO" and history and history[-1] else None
    st.session_state["relabel_msg"] = save_decisions(
        store, history, label, rows, annotator, predictor.version, ENV_RELABELS,
        lambda row: {"proxy_label": row["quality_label"], "rating": st.session_state.get(f"rating-{row['sha256']}")})
    if label == "UNDO" and undone and not st.session_state["relabel_msg"].startswith("Not saved"):
        st.session_state["relabel_revisit"] = undone
    if label == "UNDO" or st.session_state["relabel_msg"].startswith("Not saved"):
        return
    if st.session_state.pop("relabel_revisit", None) is not None:
        st.session_state.pop("relabel_back", None)
    elif include_labelled:
        st.session_state["relabel_pos"] += len(rows)


if msg := st.session_state.pop("relabel_msg", None):
    if msg.startswith("Not saved"):
        st.error(msg)
    else:
        st.toast(msg)
if (queue.empty or pos >= len(queue)) and revisit is None:
    st.success("Queue done: every photo in this selection has a decision.")
    st.button("Undo last decision", on_click=record, args=("UNDO", []), shortcut="u")
elif grid_mode:
    page_rows = queue.iloc[pos:pos + 12].to_dict("records")
    if annotator.strip():  # every photo on this screen is held for this annotator
        held = claims.claim([r["sha256"] for r in page_rows], annotator)
        page_rows = [r for r in page_rows if r["sha256"] in held]
    for r in page_rows:
        r["p_good"] = p_good.get(r["sha256"], float("nan")) if p_good is not None else float("nan")
    picked = pick_from_grid(page_rows, roots, lambda row: (
        f"{row['path']} · proxy {row['quality_label']}"
        + (f" · P(GOOD) {row['p_good']:.2f}" if row["p_good"] == row["p_good"] else "")
        + f" · sharpness {row['sharpness']:.0f} · luminance {row['lum_p50']:.0f}"))
    blocked = "Enter your name in the sidebar to start labelling." if not annotator.strip() else ""
    g1, g2, g3 = st.columns(3)
    g1.button(f"GOOD for {len(picked)} selected", on_click=record, args=("GOOD", picked), type="primary",
              key="grid-good", disabled=bool(blocked) or not picked)
    g2.button(f"BAD for {len(picked)} selected", on_click=record, args=("BAD", picked), key="grid-bad",
              disabled=bool(blocked) or not picked)
    g3.button("Undo", on_click=record, args=("UNDO", []), shortcut="u", key="grid-undo")
    if blocked:
        st.info(blocked)
else:
    if revisit is not None:
        row = manifest[manifest["sha256"] == revisit].iloc[0].to_dict()
        row["p_good"] = p_good.get(row["sha256"], float("nan")) if p_good is not None else float("nan")
        mine = my_decision(store.read_raw(), revisit, annotator)
        st.info(("A photo you decided earlier" + (f" (your decision: **{mine}**)" if mine else " (no decision now)")
                 + ": a new decision replaces the old one (next returns to the queue)."))
    else:
        row = queue.iloc[pos].to_dict()
    image_file = os.path.join(roots.get(row["source"], ""), row["path"])
    with st.container(border=True):
        left, right = st.columns([1.4, 1])
        thumb = thumbnail(image_file, 640) if row["source"] in roots else None
        if thumb:
            left.image(thumb, caption=f"{row['source']}/{row['path']} ({row['class']})")
        else:
            left.warning(f"Image not found: {image_file}. Set the dataset root in the sidebar.")
        if row.get("p_good") == row.get("p_good"):  # not NaN
            model_p = float(row["p_good"])
        elif thumb:
            model_p = predictor.predict_images([predictor.decode(image_file)])[0]["quality_prob_good"]
        else:
            model_p = None
        right.metric("Proxy label", row["quality_label"])
        right.caption("Reasons: " + (row["quality_reasons"] or "no rule fired"))
        right.caption(f"Sharpness {row['sharpness']:.0f} · median luminance {row['lum_p50']:.0f} · "
                      f"noise {row['noise']:.1f} · blockiness {row['blockiness']:.2f} · "
                      f"{row['width']}×{row['height']} px")
        if model_p is not None:
            (model_label,) = quality_decision([model_p], predictor.thresholds.quality)
            shown_p, shown_threshold = distinct_digits(model_p, predictor.thresholds.quality, least=3)
            right.metric("Model P(GOOD)", shown_p,
                         f"threshold {shown_threshold}: {model_label}, "
                         + ("agrees with the proxy" if model_label == row["quality_label"]
                            else "disagrees with the proxy"),
                         delta_color="off", delta_arrow="off")
        right.segmented_control("Aesthetic rating (optional, 1–5)", [1, 2, 3, 4, 5], key=f"rating-{row['sha256']}")
        # a decision needs a name and a photo on screen: nothing is recorded for a photo nobody saw
        blocked = ("Enter your name in the sidebar to start labelling." if not annotator.strip() else
                   "The photo is not shown, so it cannot be labelled." if not thumb else "")
        b1, b2, b3, b4 = right.columns(4)
        b1.button("GOOD", on_click=record, args=("GOOD", [row]), type="primary", shortcut="g", key="btn-good",
                  disabled=bool(blocked))
        b2.button("BAD", on_click=record, args=("BAD", [row]), shortcut="b", key="btn-bad", disabled=bool(blocked))
        b3.button("Skip", on_click=record, args=("SKIP", [row]), shortcut="s", key="btn-skip", disabled=bool(blocked))
        b4.button("Undo", on_click=record, args=("UNDO", []), shortcut="u", key="btn-undo")
        n1, n2 = right.columns(2)
        n1.button("Previous", on_click=move, args=(-1,), shortcut="p", key="btn-previous")
        n2.button("Next (no decision)", on_click=move, args=(1,), shortcut="n", key="btn-next")
        if blocked:
            right.info(blocked)
        elif row["sha256"] not in claims.claim(row["sha256"], annotator):
            st.rerun()  # taken by someone else a moment ago: show the next photo
        right.caption("Keys: g = GOOD, b = BAD, s = skip, u = undo, p = previous, n = next")
        past = photo_history(store.read_raw(), row["sha256"], row["path"])
        if len(past):
            with right.expander(f"History of this photo ({len(past)} decision{'s' if len(past) != 1 else ''})"):
                st.dataframe(past, hide_index=True)

agreement = annotator_agreement(store.read_raw())
agreement = agreement[agreement["photos"] > 0]  # pairs who have decided a photo in common
if len(agreement):
    st.subheader("Agreement between annotators")
    st.caption("Cohen's kappa over the photos both people decided GOOD/BAD (each one's latest decision).")
    st.dataframe(agreement.round(3), hide_index=True)
merged = store.merged()
st.download_button(f"Download merged labels ({len(merged)} photos)", export_csv(merged), "quality_labels.csv",
                   "text/csv")
