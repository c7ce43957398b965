"""Upload photos; see room, quality and aesthetic predictions with live thresholds."""
import math

import plotly.graph_objects as go
import streamlit as st

from roomvision.webapp import (AMBIGUOUS, NOT_A_ROOM, OUT_OF_SCOPE, PHOTOS_PER_PAGE, UNCERTAIN, distinct_digits,
                               ensure_app_navigation, get_predictor, neutralise_formulas, results_frame,
                               save_upload_feedback, score_uploads, threshold_sidebar)

FILTERS = {  # what a team screens a batch for; each reads the decisions of the results table
    "BAD": lambda d: d["quality_decision"] == "BAD",
    "not listing-ready": lambda d: not d["error"] and not d["listing_ready"],
    "room uncertain": lambda d: d["room_decision"] == UNCERTAIN,
    "not one of the five rooms": lambda d: d["room_decision"] == OUT_OF_SCOPE,
    "unreadable": lambda d: bool(d["error"]),
}


def feedback(i: int, room: str | None = None, quality: str | None = None) -> None:
    """Record a correction for uploaded photo `i` (button callback)."""
    name, data = uploads[i]
    st.session_state[f"feedback-{i}"] = save_upload_feedback(data, name, st.session_state.get("annotator", ""),
                                                             predictor.version, room, quality)


def correction_row(i: int, row: dict, classes: list[str]) -> None:
    """Fix a wrong prediction where it is seen: the room it really is, GOOD or BAD."""
    room_col, save_col, good_col, bad_col = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
    room = room_col.selectbox("This photo is a…", [*classes, AMBIGUOUS, NOT_A_ROOM], key=f"fix-room-{i}",
                              index=classes.index(row["room"]) if row["room"] in classes else 0)
    save_col.button("Save room", key=f"fix-save-{i}", on_click=feedback, args=(i, room))
    good_col.button("GOOD", key=f"fix-good-{i}", on_click=feedback, args=(i, None, "GOOD"))
    bad_col.button("BAD", key=f"fix-bad-{i}", on_click=feedback, args=(i, None, "BAD"))
    if msg := st.session_state.pop(f"feedback-{i}", None):
        if msg.startswith("Not saved"):
            st.error(msg)
        else:
            st.success(msg)


def photo_card(i: int, row: dict, dec: dict, classes: list[str], thresholds, show_cam: bool) -> None:
    """One photo: preview (or Grad-CAM), room, quality with its reasons, aesthetic score, listing-ready."""
    name = row["path"]
    with st.container(border=True):
        if row.get("error"):
            st.error(f"**{name}**: {row['error']}")
            return
        left, mid, right = st.columns([1.2, 1.3, 1.2])
        if show_cam:
            left.image(row["cam_preview"], caption=f"{name} — Grad-CAM for {row['room']}")
        else:
            left.image(row["preview"], caption=name)
        if dec["out_of_scope"]:  # a short headline; the closest room is not a room decision
            mid.metric("Room", "Out of scope", "P(one of the five rooms) {} < {}".format(
                *distinct_digits(row["in_scope_prob"], thresholds.min_in_scope, least=2)),
                delta_color="off", delta_arrow="off", help="Not one of the five rooms: an exterior, a hallway, "
                                                           "a floor plan… The bars show the closest rooms.")
        else:
            scope = ("" if math.isnan(row["in_scope_prob"]) else
                     f" · P(one of the five rooms) {row['in_scope_prob']:.2f}")
            mid.metric("Room", dec["room_decision"], f"{dec['room_confidence']:.0%} confident{scope}",
                       delta_color="off", delta_arrow="off")
        probs = [row[f"prob_{c}"] for c in classes]
        fig = go.Figure(go.Bar(x=probs, y=classes, orientation="h", text=[f"{p:.0%}" for p in probs]))
        fig.update_layout(height=220, margin=dict(l=0, r=0, t=10, b=0), xaxis=dict(range=[0, 1]))
        mid.plotly_chart(fig, key=f"room-{i}")
        q = dec["quality_decision"]
        right.metric("Quality", q, "P(GOOD) {} (threshold {})".format(
                         *distinct_digits(row["quality_prob_good"], thresholds.quality, least=2)),
                     delta_color="green" if q == "GOOD" else "red", delta_arrow="off")
        m = row["metrics"]
        right.caption(f"Sharpness {m['sharpness']:.0f} · median luminance {m['lum_p50']:.0f} · "
                      f"clipped dark {m['dark_clip']:.0%} / bright {m['bright_clip']:.0%} · "
                      f"{m['width']}×{m['height']} px")
        right.caption("Proxy rules: " + ("; ".join(row["proxy_reasons"]) or "none fired"))
        right.metric("Aesthetic (proxy)", f"{row['aesthetic_score']:.1f} / 10", f"± {row['aesthetic_std']:.1f}",
                     delta_color="off", delta_arrow="off")
        dist = go.Figure(go.Bar(x=list(range(1, 11)), y=row["aesthetic_distribution"]))
        dist.update_layout(height=140, margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(dtick=1))
        right.plotly_chart(dist, key=f"aes-{i}")
        right.write("✅ Listing-ready" if dec["listing_ready"] else f"Not listing-ready: {dec['listing_reason']}")
        correction_row(i, row, classes)


@st.fragment
def gallery(results: list[dict], decisions: list[dict], classes: list[str], thresholds) -> None:
    """Photo cards, filtered and a page at a time; the filter, page and Grad-CAM toggle rerun only this part."""
    pick, cam = st.columns([4, 1], vertical_alignment="bottom")
    only = pick.pills("Show only", list(FILTERS), selection_mode="multi", key="show_only",
                      help="Photos matching any of the chosen decisions; none chosen shows every photo")
    show_cam = cam.toggle("Grad-CAM overlay", key="show_cam", help="Where the model looked to choose the room")
    shown = [i for i, dec in enumerate(decisions) if not only or any(FILTERS[f](dec) for f in only)]
    pages = max(1, math.ceil(len(shown) / PHOTOS_PER_PAGE))
    page = 1
    if pages > 1:
        page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1,
                               key=f"gallery_page_of_{pages}")
    first = (page - 1) * PHOTOS_PER_PAGE
    on_page = shown[first:first + PHOTOS_PER_PAGE]
    st.caption(f"Photos {first + 1}–{first + len(on_page)} of {len(shown)}" if on_page else "No photo matches.")
    for i in on_page:
        photo_card(i, results[i], decisions[i], classes, thresholds, show_cam)


ensure_app_navigation()
st.title("Predict")
st.caption("Room type, photo quality (GOOD/BAD) and aesthetic score 1–10. The aesthetic score is a proxy learned "
           "from photo properties (exposure, contrast, colour, sharpness, level verticals) until people rate photos.")

predictor = get_predictor()
if predictor is None:
    st.stop()
thresholds = threshold_sidebar(predictor)
st.sidebar.text_input("Your name", key="annotator", help="Needed to save corrections made on the photo cards")
st.caption(f"Model **{predictor.version}** · thresholds used: P(GOOD) ≥ {thresholds.quality:.4g} · room confidence "
           f"≥ {thresholds.min_room_confidence:.4g} · P(one of the five rooms) ≥ {thresholds.min_in_scope:.4g} · "
           f"aesthetic ≥ {thresholds.listing_ready_min_aesthetic:.4g} for listing-ready")

files = st.file_uploader("Listing photos",
                         type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "heic", "heif"],
                         accept_multiple_files=True)
if not files:
    st.info("Upload one or more photos (jpg, png, webp, bmp, tiff, heic) to score them.")
    st.stop()

uploads = [(f.name, f.getvalue()) for f in files]
bar = st.progress(0.0, text=f"Scoring {len(files)} photo(s)…")
results = score_uploads(predictor, uploads,
                        progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Scored {done}/{total}"))
bar.empty()
table = results_frame(results, predictor.classes, thresholds)
gallery(results, table.to_dict("records"), predictor.classes, thresholds)

st.subheader("All results")
scored = table[table["error"] == ""]
st.caption(f"{len(scored)} scored, {len(table) - len(scored)} unreadable · {int(scored['out_of_scope'].sum())} not "
           f"one of the five rooms · {int((scored['room_decision'] == 'uncertain').sum())} room uncertain · "
           f"{int((scored['quality_decision'] == 'BAD').sum())} BAD · {int(scored['listing_ready'].sum())} "
           "listing-ready")
st.dataframe(table, hide_index=True)
st.download_button("Download CSV", neutralise_formulas(table).to_csv(index=False).encode(),
                   "roomvision-predictions.csv", "text/csv")
