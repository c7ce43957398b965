"""A team's own photos: collections, importing a folder, and adapting the model to a collection's market."""
from pathlib import Path

import pandas as pd
import streamlit as st

from roomvision.webapp import (MIN_CORRECTIONS, JobError, active_weights, ensure_app_navigation, learning_unavailable,
                               list_collections, progress_fragment, read_status, set_team_default, start, status_file)

ensure_app_navigation()
st.title("Collections")
st.caption("Bring your own listing photos: import a folder (any layout, no labels needed), correct rooms and "
           "quality on the Mistakes (Label issues) and Relabel pages with this collection chosen in the sidebar, "
           "then adapt the model to your market here.")
collections = list_collections()
st.dataframe(pd.DataFrame([c.summary() for c in collections]), hide_index=True)


def job_panel(kind: str) -> dict | None:
    """The kind's running job (progress and cancel), else its last outcome."""
    job = status_file(kind)
    status = read_status(job)
    if status and status["running"]:
        progress_fragment(job)
        return None
    if status and status["state"] in ("failed", "cancelled"):
        st.warning(f"The last run {status['state']}: {status.get('message', '')}")
    return status


def start_job(kind: str, function: str, kwargs: dict) -> None:
    try:
        start(kind, function, kwargs)
    except JobError as exc:
        st.warning(str(exc))
    else:
        st.rerun()


st.subheader("Import photos")
with st.form("import"):
    folders = st.text_area("Folders on this server (one per line)", key="import_folders",
                           help="Every photo under them is added, in any folder layout; photos are never copied")
    name = st.text_input("Collection name", key="import_name", help="lower-case letters, digits, '-' and '_'")
    from_folders = st.checkbox("Room labels from folder names (Kitchen/, bath/, …)", key="import_rooms")
    submitted = st.form_submit_button("Import", type="primary")
status = job_panel("import")
if submitted:
    dirs = [line.strip() for line in folders.splitlines() if line.strip()]
    if not dirs or not name.strip():
        st.error("Give at least one folder and a collection name.")
    else:
        start_job("import", "roomvision.learning.collection:import_job",
                  {"dirs": dirs, "name": name.strip(), "rooms_from_folders": from_folders})
elif status and status["state"] == "done":
    r = status["result"]
    st.success(f"Collection **{r['collection']}**: {r['photos']} photos ({r['with room label']} with a room label); "
               f"{r['exact_duplicates']} exact duplicates left out, {r['near_duplicate_groups']} near-duplicate "
               f"groups, {r['unreadable_count']} unreadable files.")
    for line in r["unreadable"]:
        st.caption(f"unreadable: {line}")

st.subheader("Adapt the model to a market")
imported = [c for c in collections if not c.built_in]
if not imported:
    st.info("Import a collection first.")
    st.stop()
chosen = st.selectbox("Collection", [c.name for c in imported], key="adapt_collection")
summary = next(c for c in imported if c.name == chosen).summary()
reason = (learning_unavailable() or
          (f"correct the rooms of at least {MIN_CORRECTIONS} photos of this collection first (Mistakes → Label "
           f"issues, collection '{chosen}')" if summary["room corrections"] < MIN_CORRECTIONS else ""))
st.write(f"**{chosen}**: {summary['photos']} photos, {summary['room corrections']} room corrections. Adapting fits "
         "a room head on the corrected photos and blends it in where a photo looks like this market; photos unlike "
         "it keep the current model's answer. The current model is never changed.")
fine_tune = st.checkbox("Also fine-tune the model's last stage on the corrected photos", value=False,
                        key="adapt-fine-tune",
                        help="A copy of the backbone's last stage learns this market's photos and runs beside the "
                             "default one: a minute or two more (README, Your own photos, has the measurements).")
imagenet_features = st.checkbox("Also read a second backbone's features (EfficientNet-Lite2: ImageNet's, and "
                                "tuned on grey thumbnails)", value=False, key="adapt-imagenet",
                                help="More general features beside the model's own: better on photos unlike the "
                                     "training set, at a second backbone per photo (README, Your own photos).")
status = job_panel("adapt")
if st.button(f"Adapt {Path(active_weights()).stem} to {chosen}", disabled=bool(reason), help=reason or None,
             key="adapt-start", type="primary"):
    start_job("adapt", "roomvision.learning.retraining:adapt_to_collection",
              {"name": chosen, "weights": str(active_weights()), "fine_tune": fine_tune,
               "imagenet_features": imagenet_features})
if reason:
    st.caption(f"Not yet: {reason}.")
if status and status["state"] == "done":
    r = status["result"]
    st.success(f"Saved {Path(r['out']).name}: {r['corrections_used']} corrections "
               f"({', '.join(f'{k} {v}' for k, v in r['corrections_per_room'].items())})"
               f"{', last stage fine-tuned' if r.get('fine_tuned') else ''}"
               f"{', Lite2 features' if r.get('imagenet_features') else ''}, {r['seconds']:.0f} s.")
    before, after = r["held_out_accuracy_before"], r["held_out_accuracy_after"]
    cols = st.columns(3)
    if before is not None:
        cols[0].metric(f"Room accuracy on {r['held_out_photos']} held-out photos of {r['collection']}",
                       f"{after:.3f}", f"{after - before:+.3f} vs before ({before:.3f})")
    else:
        cols[0].metric(f"Held-out photos of {r['collection']}", "none labelled",
                       "correct some photos of its test listings to measure", delta_color="off", delta_arrow="off")
    for col, (label, key) in zip(cols[1:], (("House Rooms test", "house_rooms"), ("Places365 test", "places365"))):
        default, version = r[f"{key}_test_accuracy_default"], r[f"{key}_test_accuracy_version"]
        if default is not None:
            col.metric(f"{label} (forgetting shows here)", f"{version:.3f}",
                       f"{version - default:+.3f} vs the current model ({default:.3f})")
    use, team = st.columns(2)
    if str(active_weights()) == r["out"]:
        use.success(f"{Path(r['out']).stem} is in use in this session (Predict, Relabel, Mistakes).")
    else:
        use.button(f"Use {Path(r['out']).stem} in this session", key="adapt-use",
                   on_click=lambda: st.session_state.update(active_weights=r["out"]))
    team.button("Make it the team default", key="adapt-team-default",
                on_click=lambda: set_team_default(Path(r["out"]), st.session_state.get("annotator", "")))
