"""Browse misclassified test photos; find and correct wrong room labels (corrections go to the room relabels CSV)."""
import json
import os

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from roomvision.webapp import (AMBIGUOUS, CLASSES, ENV_DATA_ROOT, ENV_ROOM_RELABELS, NOT_A_ROOM, RERANK_EVERY, ROOM,
                               ClaimBoard, LabelStore, active_weights, cache_path, cached_label_issues,
                               cached_rooms_to_confirm, collection_sidebar, dataset_roots_sidebar,
                               ensure_app_navigation, export_csv, filter_failures, get_predictor, manifest_path,
                               pick_from_grid, progress_with_estimate, read_manifest, report_paths, room_relabels_path,
                               save_decisions, thumbnail)

CLASS_KEYS = {c: str(i + 1) for i, c in enumerate(CLASSES)}  # 1..5
CORRECTION_NAMES = {AMBIGUOUS: "Ambiguous / open plan", NOT_A_ROOM: "Not one of the five rooms"}
ROOMS_TO_CONFIRM = "Rooms to confirm, least sure first"

ensure_app_navigation()
st.title("Mistakes")
weights = active_weights()
paths = report_paths(weights)
view = st.segmented_control("View", ["Misclassified test photos", "Label issues"], default="Misclassified test photos",
                            key="mistakes_view")
if view == "Label issues":
    collection_sidebar()
st.sidebar.header("Data")
failures_file = st.sidebar.text_input("Failures CSV", str(paths["failures"]))
roots = dataset_roots_sidebar()
missing_roots = [name for name, p in roots.items() if not os.path.isdir(p)]


def misclassified_view() -> None:
    if not os.path.isfile(failures_file):
        st.info(
            "This view shows the test photos that the model gets wrong. It needs the failures CSV written by the "
            f"evaluation: run `python -m roomvision evaluate --weights {weights}` (it writes "
            f"`{paths['failures'].name}` next to the weights). Not found: {failures_file}.")
        return
    if not roots or missing_roots:
        st.info("Photos are listed without thumbnails: point the sidebar, or the "
                f"`{ENV_DATA_ROOT}` environment variable, at the dataset root folder(s)"
                + (f" (missing: {', '.join(missing_roots)})." if missing_roots else "."))
    failures = pd.read_csv(failures_file, keep_default_na=False)
    classes = [c[len("prob_"):] for c in failures.columns if c.startswith("prob_")]
    if paths["metrics"].is_file():
        cm = json.loads(paths["metrics"].read_text())["room"]["confusion_matrix"]
    else:
        cm = pd.crosstab(pd.Categorical(failures["true"], classes), pd.Categorical(failures["predicted"], classes),
                         dropna=False).values.tolist()
    # square markers, not a Heatmap trace: Plotly reports no clicked point for heatmap cells, markers are clickable
    cells = [(t, p, cm[i][j]) for i, t in enumerate(classes) for j, p in enumerate(classes)]
    counts = [n for *_, n in cells]
    fig = go.Figure(go.Scatter(
        x=[p for _, p, _ in cells], y=[t for t, _, _ in cells], mode="markers+text", text=counts,
        marker=dict(symbol="square", size=54, color=counts, colorscale="Blues", showscale=True,
                    line=dict(width=1, color="white")),
        textfont=dict(color=["white" if n > max(counts) / 2 else "black" for n in counts]),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} photos — click to show them<extra></extra>"))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=380,
                      margin=dict(l=0, r=0, t=20, b=0), xaxis_showgrid=False, yaxis_showgrid=False)
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="cm")
    picked = (event.selection.points if event and event.selection else []) or []
    cell_true, cell_pred = (picked[0].get("y"), picked[0].get("x")) if picked else (None, None)

    c1, c2, c3, c4 = st.columns(4)
    true = c1.selectbox("True class", ["(any)", *classes],
                        index=(classes.index(cell_true) + 1) if cell_true in classes else 0)
    pred = c2.selectbox("Predicted class", ["(any)", *classes],
                        index=(classes.index(cell_pred) + 1) if cell_pred in classes else 0)
    sort_by = c3.radio("Sort by", ["loss", "confidence"], horizontal=True)
    conf = c4.slider("Confidence range", 0.0, 1.0, (0.0, 1.0), 0.05)
    shown = filter_failures(failures, None if true == "(any)" else true, None if pred == "(any)" else pred, conf,
                            sort_by)
    page_size = 12
    pages = max(1, -(-len(shown) // page_size))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1)
    st.caption(f"{len(shown)} of {len(failures)} misclassified test photos match")
    grid = st.columns(4)
    for i, row in enumerate(shown.iloc[(page - 1) * page_size: page * page_size].to_dict("records")):
        with grid[i % 4].container(border=True):
            root = roots.get(row["source"])
            thumb = thumbnail(os.path.join(root, row["path"])) if root and os.path.isdir(root) else None
            if thumb:
                st.image(thumb)
            else:
                st.caption(f"{row['source']}/{row['path']} (no thumbnail)")
            st.markdown(f"**true** {row['true']} → **predicted** {row['predicted']}")
            st.caption(" · ".join(f"{c} {row[f'prob_{c}']:.0%}" for c in classes) + f" · loss {row['loss']:.2f}")


def label_issues_view() -> None:
    predictor = get_predictor()
    manifest_file = manifest_path()
    if predictor is None:
        return
    cache = cache_path(predictor.weights, manifest_file) if manifest_file.is_file() else None
    if cache is None or not cache.is_file():
        st.info("Finding wrong room labels needs the model's features of every manifest photo. Run "
                "`python -m roomvision cache-features` (or `python -m roomvision label-issues`, which builds them), "
                "or score the photos once from the Relabel page.")
        return
    annotator = st.sidebar.text_input("Your name", key="annotator")
    unlabelled = not (read_manifest(str(manifest_file), manifest_file.stat().st_mtime)["class"] != "").any()
    show = st.sidebar.selectbox("Show", [ROOMS_TO_CONFIRM] if unlabelled else
                                ["Flagged label issues", "All photos, most suspect first", "Misclassified test photos"],
                                key=f"issues_show{'-unlabelled' if unlabelled else ''}",
                                help="Flagged: the photos confident learning counts as label issues. Rooms to "
                                     "confirm: photos without a room label, the model's room as the starting "
                                     "point, the ones it is least sure of first")
    split = st.sidebar.selectbox("Split", ["all", "train", "val", "test"], key="issues_split")
    grid_mode = st.sidebar.toggle("Grid mode (correct many at once)")
    store = LabelStore(room_relabels_path(), ROOM)
    if unlabelled:
        ranked = cached_rooms_to_confirm(str(cache), cache.stat().st_mtime, str(manifest_file), predictor.version,
                                         predictor, str(store.path), len(store.merged()) // RERANK_EVERY)
    else:
        bar, on_progress = progress_with_estimate("Looking for wrong room labels (out-of-fold classifiers on the "
                                                  "cached features; once per model and labels)…")
        ranked = cached_label_issues(str(cache), cache.stat().st_mtime, str(manifest_file), predictor,
                                     str(store.path), len(store.merged()) // RERANK_EVERY, on_progress)
        bar.empty()
    corrected = store.decided_keys()
    if show == "Flagged label issues":
        candidates = ranked[ranked["issue"]]
    elif show == "Misclassified test photos":
        candidates = ranked[(ranked["split"] == "test") & (ranked["given"] != ranked["suggested"])]
    else:
        candidates = ranked
    if split != "all":
        candidates = candidates[candidates["split"] == split]
    todo = candidates[~candidates["sha256"].isin(corrected)]
    st.progress(1 - len(todo) / max(len(candidates), 1),
                text=f"{len(candidates) - len(todo)} of {len(candidates)} reviewed · {len(store.merged())} room "
                     f"corrections in {store.path.name}")
    claims = ClaimBoard(store.path)
    if annotator.strip():  # photos on someone else's screen right now are left to them
        todo = todo[~todo["sha256"].isin(claims.held_by_others(annotator))]
    history = st.session_state.setdefault("room_history", [])

    def record(label: str, rows: list[dict]) -> None:
        st.session_state["room_msg"] = save_decisions(store, history, label, rows, annotator, predictor.version,
                                                      ENV_ROOM_RELABELS, lambda row: {"given_label": row["given"]})

    if msg := st.session_state.pop("room_msg", None):
        if msg.startswith("Not saved"):
            st.error(msg)
        else:
            st.toast(msg)
    blocked = "Enter your name in the sidebar to correct labels." if not annotator.strip() else ""
    if todo.empty:
        st.success("Nothing left to review in this selection.")
        st.button("Undo last correction", on_click=record, args=("UNDO", []), shortcut="u", key="room-undo-done")
    elif grid_mode:
        page_rows = todo.head(12).to_dict("records")
        if annotator.strip():  # every photo on this screen is held for this annotator
            held = claims.claim([r["sha256"] for r in page_rows], annotator)
            page_rows = [r for r in page_rows if r["sha256"] in held]
        shown = pick_from_grid(page_rows, roots,
                               lambda row: f"{row['path']} · given {row['given']} · suggested {row['suggested']} "
                                           f"· suspicion {row['score']:.2f}")
        target = st.selectbox("Label for the selected photos", [*CLASSES, AMBIGUOUS, NOT_A_ROOM],
                              format_func=lambda v: CORRECTION_NAMES.get(v, v), key="grid_target")
        c1, c2 = st.columns(2)
        c1.button(f"Apply to {len(shown)} selected", on_click=record, args=(target, shown), type="primary",
                  disabled=bool(blocked) or not shown, key="room-apply")
        c2.button("Undo", on_click=record, args=("UNDO", []), shortcut="u", key="room-undo-grid")
        if blocked:
            st.info(blocked)
    else:
        row = todo.iloc[0].to_dict()
        left, right = st.columns([1.4, 1])
        image_file = os.path.join(roots.get(row["source"], ""), row["path"])
        thumb = thumbnail(image_file, 640) if row["source"] in roots else None
        if thumb:
            left.image(thumb, caption=f"{row['source']}/{row['path']} ({row['split']})")
        else:
            left.warning(f"Image not found: {image_file}. Set the dataset root in the sidebar.")
            blocked = blocked or "The photo is not shown, so its label cannot be corrected."
        right.metric("Model's room" if unlabelled else "Given label", row["given"],
                     f"suggested: {row['suggested']} · " + (f"unsure {row['score']:.2f}" if unlabelled
                                                              else f"suspicion {row['score']:.2f}"),
                     delta_color="off", delta_arrow="off")
        probs = [row[f"prob_{c}"] for c in CLASSES]
        fig = go.Figure(go.Bar(x=probs, y=list(CLASSES), orientation="h", text=[f"{p:.0%}" for p in probs]))
        fig.update_layout(height=200, margin=dict(l=0, r=0, t=10, b=0), xaxis=dict(range=[0, 1]))
        right.plotly_chart(fig, key="issue-probs")
        keys = st.columns(len(CLASSES) + 3)
        for col, c in zip(keys, CLASSES):
            col.button(c, on_click=record, args=(c, [row]), shortcut=CLASS_KEYS[c], key=f"room-{c}",
                       disabled=bool(blocked), type="primary" if c == row["suggested"] else "secondary",
                       width="stretch")
        keys[-3].button("Ambiguous", on_click=record, args=(AMBIGUOUS, [row]), shortcut="a", key="room-ambiguous",
                        disabled=bool(blocked), help=CORRECTION_NAMES[AMBIGUOUS], width="stretch")
        keys[-2].button("Not a room", on_click=record, args=(NOT_A_ROOM, [row]), shortcut="n",
                        key="room-not-a-room", disabled=bool(blocked), help=CORRECTION_NAMES[NOT_A_ROOM],
                        width="stretch")
        keys[-1].button("Undo", on_click=record, args=("UNDO", []), shortcut="u", key="room-undo", width="stretch")
        if blocked:
            st.info(blocked)
        elif row["sha256"] not in claims.claim(row["sha256"], annotator):
            st.rerun()  # taken by someone else a moment ago: show the next photo
        st.caption("Keys: " + ", ".join(f"{k} = {c}" for c, k in CLASS_KEYS.items())
                   + " (the given label too: it confirms it), a = ambiguous / open plan, n = not one of the five "
                     "rooms, u = undo. The next photo follows each decision.")
    merged = store.merged()
    st.download_button(f"Download room corrections ({len(merged)} photos)", export_csv(merged),
                       "room_relabels.csv", "text/csv")


if view == "Label issues":
    label_issues_view()
else:
    misclassified_view()
