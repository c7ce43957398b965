"""roomvision: room type, photo quality and aesthetic score for listing photos (`streamlit run app.py`)."""
import streamlit as st

from roomvision.webapp import APP_NAVIGATION

st.set_page_config(page_title="roomvision", page_icon=":material/home:", layout="wide")

pages = [
    st.Page("pages/predict.py", title="Predict", icon=":material/search:", default=True),
    st.Page("pages/mistakes.py", title="Mistakes", icon=":material/error:"),
    st.Page("pages/relabel.py", title="Relabel", icon=":material/label:"),
    st.Page("pages/model.py", title="Model", icon=":material/monitoring:"),
    st.Page("pages/collections.py", title="Collections", icon=":material/photo_library:"),
]
st.session_state[APP_NAVIGATION] = True
st.navigation(pages).run()
