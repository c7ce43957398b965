"""Browse misclassified test photos by confusion-matrix cell, confidence and loss."""
import json
import os

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from roomvision.config import ENV_DATA_ROOT
from roomvision.reports import filter_failures, report_paths
from roomvision.webapp import active_weights, dataset_roots_sidebar, thumbnail

st.title("Mistakes")
weights = active_weights()
paths = report_paths(weights)
st.sidebar.header("Data")
failures_file = st.sidebar.text_input("Failures CSV", str(paths["failures"]))
roots = dataset_roots_sidebar()

missing_roots = [name for name, p in roots.items() if not os.path.isdir(p)]
if not os.path.isfile(failures_file) or not roots or missing_roots:
    st.info(
        "This page shows the test photos that the model gets wrong. It needs the failures CSV written by the "
        f"evaluation and the dataset folders the photos came from. Run `python -m roomvision evaluate --weights "
        f"{weights}` (it writes `{paths['failures'].name}` next to the weights), and point the sidebar, or the "
        f"`{ENV_DATA_ROOT}` environment variable, at the dataset root folder(s)."
        + (f" Not found: {failures_file}." if not os.path.isfile(failures_file) else "")
        + (f" Missing dataset folder(s): {', '.join(missing_roots)}." if missing_roots else ""))
    st.stop()

failures = pd.read_csv(failures_file, keep_default_na=False)
classes = [c[len("prob_"):] for c in failures.columns if c.startswith("prob_")]
if paths["metrics"].is_file():
    cm = json.loads(paths["metrics"].read_text())["room"]["confusion_matrix"]
else:
    cm = pd.crosstab(pd.Categorical(failures["true"], classes), pd.Categorical(failures["predicted"], classes),
                     dropna=False).values.tolist()
fig = go.Figure(go.Heatmap(z=cm, x=classes, y=classes, colorscale="Blues", text=cm, texttemplate="%{text}",
                           hovertemplate="true %{y}<br>predicted %{x}<br>%{z} photos<extra></extra>"))
fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=380,
                  margin=dict(l=0, r=0, t=20, b=0))
event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="cm")
picked = (event.selection.points if event and event.selection else []) or []
cell_true, cell_pred = (picked[0].get("y"), picked[0].get("x")) if picked else (None, None)

c1, c2, c3, c4 = st.columns(4)
true = c1.selectbox("True class", ["(any)", *classes], index=(classes.index(cell_true) + 1) if cell_true in classes else 0)
pred = c2.selectbox("Predicted class", ["(any)", *classes],
                    index=(classes.index(cell_pred) + 1) if cell_pred in classes else 0)
sort_by = c3.radio("Sort by", ["loss", "confidence"], horizontal=True)
conf = c4.slider("Confidence range", 0.0, 1.0, (0.0, 1.0), 0.05)
shown = filter_failures(failures, None if true == "(any)" else true, None if pred == "(any)" else pred, conf, sort_by)

page_size = 12
pages = max(1, -(-len(shown) // page_size))
page = st.number_input(f"Page (of {pages})", 1, pages, 1)
st.caption(f"{len(shown)} of {len(failures)} misclassified test photos match")
grid = st.columns(4)
for i, row in enumerate(shown.iloc[(page - 1) * page_size: page * page_size].to_dict("records")):
    with grid[i % 4].container(border=True):
        root = roots.get(row["source"])
        thumb = thumbnail(os.path.join(root, row["path"])) if root else None
        if thumb:
            st.image(thumb)
        else:
            st.warning(f"Image not found: {row['source']}/{row['path']}")
        st.markdown(f"**true** {row['true']} → **predicted** {row['predicted']}")
        st.caption(" · ".join(f"{c} {row[f'prob_{c}']:.0%}" for c in classes) + f" · loss {row['loss']:.2f}")
