"""roomvision: room type, photo quality and aesthetic score for listing photos (`streamlit run app.py`)."""
import streamlit as st

st.set_page_config(page_title="roomvision", page_icon="🏠", layout="wide")

pages = [
    st.Page("pages/predict.py", title="Predict", icon="🔎", default=True),
    st.Page("pages/mistakes.py", title="Mistakes", icon="❌"),
    st.Page("pages/relabel.py", title="Relabel", icon="🏷️"),
    st.Page("pages/model.py", title="Model", icon="📊"),
]
st.navigation(pages).run()
