"""Metrics of the active model, the model versions (shipped and learned), and head retraining from human labels."""
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from roomvision.webapp import (ROOM, JobError, LabelStore, active_weights, cache_path, current_default,
                               dataset_roots_sidebar, ensure_app_navigation, get_predictor, learning_unavailable,
                               manifest_path, progress_fragment, read_status, relabels_path, report_paths,
                               rollback_team_default, room_relabels_path, set_team_default, settings, show_job_result,
                               start, status_file, too_few_to_learn, version_files, versions_table)

ensure_app_navigation()
st.title("Model")
models = versions_table(version_files(), current_default())
st.subheader("Model versions")
st.caption(f"Shipped and trained models in `weights/`; versions learned from people or adapted to a market in "
           f"`{settings().versions_dir}`. The team default serves the app, CLI, API and batch scoring.")
st.dataframe(models.drop(columns="path"), hide_index=True)
usable = models[models["error"] == ""]["path"].tolist()
current = str(active_weights())
if usable:
    st.session_state["session_model"] = current if current in usable else usable[0]  # follows every other switch
    st.selectbox("Active model for this session", usable, format_func=lambda p: Path(p).stem, key="session_model",
                 on_change=lambda: st.session_state.update(active_weights=st.session_state["session_model"]))
    team, back = st.columns(2)
    if team.button(f"Make {Path(current).stem} the team default", key="team-default",
                   disabled=Path(current).resolve() == current_default().resolve()):
        set_team_default(Path(current), st.session_state.get("annotator", ""))
        st.rerun()
    if back.button("Roll back the team default", key="team-rollback"):
        rollback_team_default(st.session_state.get("annotator", ""))
        st.session_state.pop("active_weights", None)
        st.rerun()

predictor = get_predictor()
if predictor is None:
    st.stop()
ckpt = predictor.info
st.caption(f"**{ckpt.version}** · backbone {ckpt.backbone} · input {ckpt.preprocess.input_size}px · "
           f"temperature {ckpt.calibration.temperature:.2f} · quality threshold {ckpt.calibration.quality:.2f} · "
           f"created {ckpt.created}")

TEST_SETS = {"All test photos": "test", "House Rooms": "test-house-rooms", "Places365 rooms": "test-places365-rooms"}
available = {name: tag for name, tag in TEST_SETS.items() if report_paths(predictor.weights, tag)["metrics"].is_file()}
test_set = st.segmented_control("Test set", list(available), default=next(iter(available), None),
                                key="model_test_set") if available else None
metrics_file = report_paths(predictor.weights, available.get(test_set, "test"))["metrics"]
if scope := ckpt.metrics.get("out_of_scope", {}).get("test"):
    st.caption(f"Not one of the five rooms (held-out entrance halls vs test rooms): AUROC {scope['auroc']:.3f}; at "
               f"the threshold {ckpt.calibration.in_scope:.3f}, {scope['others_flagged']:.1%} of {scope['others']} "
               f"non-room photos flagged and {scope['rooms_flagged']:.1%} of {scope['rooms']} room photos.")
if not metrics_file.is_file():
    st.info(f"This version has not been evaluated on the test photos (its learned heads change what it answers): run "
            f"`python -m roomvision evaluate --weights {predictor.weights}`. What it measured when it was made:")
    val = ckpt.metrics.get("validation", {})
    figures = [(f"Validation {name}", val[key]) for name, key in (("room accuracy", "room_accuracy"),
                                                                   ("room macro-F1", "room_macro_f1"),
                                                                   ("quality ROC-AUC", "quality_roc_auc"))
               if isinstance(val.get(key), (int, float))]
    people = ckpt.metrics.get("learned_from_people", {})
    if people.get("balanced_accuracy_after_cv") is not None:
        figures.append(("Agreement with people (held-out human labels)", people["balanced_accuracy_after_cv"]))
    if (room := people.get("room")) and room.get("val_accuracy_after") is not None:
        figures.append(("Validation room accuracy after corrections", room["val_accuracy_after"]))
    market = ckpt.metrics.get("adapted_to_market", {})
    if market.get("held_out_accuracy_after") is not None:
        figures.append((f"Held-out {market['collection']} room accuracy", market["held_out_accuracy_after"]))
    for label, key in (("House Rooms", "house_rooms"), ("Places365", "places365")):
        if market.get(f"{key}_test_accuracy_version") is not None:
            figures.append((f"{label} test accuracy", market[f"{key}_test_accuracy_version"]))
    for col, (name, value) in zip(st.columns(max(len(figures), 1)), figures):
        col.metric(name, f"{value:.3f}")
    if not figures:
        st.caption("It carries no figures of its own.")
else:
    m = json.loads(metrics_file.read_text())
    r, q, cal, aes = m["room"], m["quality_vs_proxy"], m["calibration"], m["aesthetic"]
    cols = st.columns(5)
    cols[0].metric("Room accuracy", f"{r['accuracy']:.3f}")
    cols[1].metric("Room macro-F1", f"{r['macro_f1']:.3f}")
    cols[2].metric("Quality ROC-AUC", f"{q.get('roc_auc', float('nan')):.3f}")
    cols[3].metric("ECE after scaling (lower is better)", f"{cal['ece_after']:.3f}",
                   f"{cal['ece_after'] - cal['ece_before']:+.3f} vs {cal['ece_before']:.3f} before",
                   delta_color="inverse")
    cols[4].metric("Aesthetic SRCC (proxy)", f"{aes['srcc']:.3f}")
    st.caption(f"Evaluated on {m['evaluated_on']} ({', '.join(m['sources'])}), n = {r['n']} photos.")
    if fixed := m.get("room_corrected_labels"):
        st.caption(f"Against people's corrected labels ({fixed['photos_corrected']} corrected, "
                   f"{fixed['photos_left_out']} ambiguous or not a room left out): accuracy {fixed['accuracy']:.3f}, "
                   f"macro-F1 {fixed['macro_f1']:.3f} — beside the original labels' {r['accuracy']:.3f} / "
                   f"{r['macro_f1']:.3f}.")
    st.dataframe(pd.DataFrame(r["per_class"]).T, column_config={"support": st.column_config.NumberColumn(format="%d")})
    classes = list(r["per_class"])
    left, right = st.columns(2)
    cm = go.Figure(go.Heatmap(z=r["confusion_matrix"], x=ckpt.classes, y=ckpt.classes, colorscale="Blues",
                              text=r["confusion_matrix"], texttemplate="%{text}"))
    cm.update_layout(title="Confusion matrix", xaxis_title="predicted", yaxis_title="true",
                     yaxis_autorange="reversed", height=380)
    left.plotly_chart(cm)
    rel = cal["reliability_after"]
    calib = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(dash="dot")),
                       go.Scatter(x=rel["confidence"], y=rel["accuracy"], mode="lines+markers", name="model")])
    calib.update_layout(title="Calibration (after temperature scaling)", xaxis_title="confidence",
                        yaxis_title="accuracy", height=380)
    right.plotly_chart(calib)
    if "roc_curve" in q:
        roc = go.Figure(go.Scatter(x=q["roc_curve"]["fpr"], y=q["roc_curve"]["tpr"], mode="lines"))
        roc.update_layout(title=f"Quality ROC (BAD positive), AUC {q['roc_auc']:.3f}", xaxis_title="false positive rate",
                          yaxis_title="true positive rate", height=340)
        left.plotly_chart(roc)
        pr = go.Figure(go.Scatter(x=q["pr_curve"]["recall"], y=q["pr_curve"]["precision"], mode="lines"))
        pr.update_layout(title=f"Quality precision-recall, AUC {q['pr_auc']:.3f}", xaxis_title="recall",
                         yaxis_title="precision", height=340)
        right.plotly_chart(pr)
    hist = go.Figure(go.Bar(x=[1 + 0.5 * i + 0.25 for i in range(len(aes["histogram"]))], y=aes["histogram"]))
    hist.update_layout(title="Aesthetic scores on real photos (proxy until people rate)", xaxis_title="score",
                       height=300)
    st.plotly_chart(hist)

st.subheader("Learn from people")
store = LabelStore(relabels_path())
human = store.merged()
rated = int(human["rating"].notna().sum()) if len(human) else 0
good, bad = int((human["human_label"] == "GOOD").sum()), int((human["human_label"] == "BAD").sum())
roots = dataset_roots_sidebar()
cached = manifest_path().is_file() and cache_path(predictor.weights, manifest_path()).is_file()
st.write(f"`{relabels_path()}` holds {good} GOOD and {bad} BAD decisions and {rated} aesthetic ratings. Learning "
         "refits the proxy rules to them, fits GOOD/BAD and aesthetic heads on the photo-quality features, "
         "calibrates the threshold on held-out human labels, and saves a new version (the default file is never "
         "overwritten). "
         + ("It takes seconds." if cached else "The first run scores every manifest photo once (about 4 minutes "
            "per 10,000 photos on a CPU; it runs in the background, survives leaving this page and resumes "
            "where it stopped), then takes seconds."))
room_counts = LabelStore(room_relabels_path(), ROOM).merged()["human_label"].value_counts()
if len(room_counts):
    st.write(f"`{room_relabels_path()}` holds {int(room_counts.sum())} room corrections (Mistakes page): "
             + ", ".join(f"{label} {n}" for label, n in room_counts.items())
             + ". Learning refits the room head to the corrected training photos, anchored to the trained head, "
               "and reports validation accuracy before → after.")
reason = (too_few_to_learn(good, bad, rated, int(room_counts.sum()))
          or ("" if manifest_path().is_file() else f"no manifest at {manifest_path()}") or learning_unavailable())
job = status_file("learn-from-people")
status = read_status(job)
if status and status["running"]:
    progress_fragment(job)
elif st.button("Learn from people now", disabled=bool(reason), help=reason or None):
    try:
        start("learn-from-people", "roomvision.learning.retraining:retrain_heads",
              {"weights": str(predictor.weights), "manifest": str(manifest_path()), "relabels": str(relabels_path()),
               "room_relabels": str(room_relabels_path()), "data_roots": list(roots.values())})
    except JobError as exc:
        st.warning(str(exc))
    else:
        st.rerun()
if reason:
    st.caption(f"Not yet: {reason}.")
if status and not status["running"]:
    show_job_result(status)
