"""Streamlit entry point: `streamlit run app.py`.

Pages are thin views over the `fer_app` library; this file only wires up navigation.
"""

import streamlit as st

from fer_app.ui import navigation

st.set_page_config(page_title="fer-app: facial emotion recognition", page_icon="🙂", layout="wide")
navigation().run()
