"""The Streamlit pages: thin views over the library. `navigation()` lists them for app.py."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from fer_app.compat import serialize_ast_parse

serialize_ast_parse()  # before the model-loading threads start: see fer_app.compat

PAGES_DIR = Path(__file__).resolve().parent


def navigation():
    """Sidebar navigation over the page files (file-based pages work with AppTest's switch_page)."""
    pages = [
        st.Page(str(PAGES_DIR / "live.py"), title="Live webcam", icon="🎥", default=True),
        st.Page(str(PAGES_DIR / "photo.py"), title="Photo", icon="🖼️"),
        st.Page(str(PAGES_DIR / "video.py"), title="Video file", icon="🎞️"),
        st.Page(str(PAGES_DIR / "train.py"), title="Training", icon="🏋️"),
    ]
    return st.navigation(pages)
