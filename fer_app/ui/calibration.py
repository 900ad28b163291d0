"""Personal calibration capture, in the Live webcam page's sidebar (`calibration_sidebar`).

The video thread reads the returned dict (its "recorder", a `fer_app.calibration.CaptureRecorder`);
the sidebar shows what the recorder is doing, refreshed twice a second by a fragment while capturing
(the caption follows the prompt drawn on the video). The name typed and the faces per emotion are
kept across page changes (Streamlit forgets a widget's value on a page that does not draw it).
"""

from __future__ import annotations

import streamlit as st

from fer_app.calibration import DEFAULT_PER_CLASS, CaptureRecorder

STATE_KEY = "calib-capture"
#: Widget key -> the key its value is kept under across page changes.
KEPT = {"calib-name": "calib-name-kept", "calib-n": "calib-n-kept"}
REFRESH_S = 0.5
NEED_NAME = "Type your name above to capture: your captures are stored under it."


def restore(key: str, default: object) -> None:
    """Give a widget back the value kept for it (before the widget is drawn)."""
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(KEPT[key], default)


@st.fragment(run_every=REFRESH_S)
def capture_status(recorder: CaptureRecorder) -> None:
    """What the recorder does now (the same words as the prompt on the video), the Skip button, the skipped."""
    step = recorder.last_step()
    st.caption(step.message if step is not None else "Press START and show each emotion in turn.")
    label = step.label if step is not None else recorder.scheduler.current()
    if label is not None:
        st.button(f"Skip {label.upper()}", key="calib-skip", on_click=recorder.skip, args=(label,),
                  help="Move on to the next emotion (one you cannot act). Only this emotion is skipped, "
                       "even if the capture moved on meanwhile.")
    skipped = recorder.skipped()
    if skipped:
        st.caption("Skipped: " + ", ".join(skipped) + " (toggle Capture now off and on to capture them again).")


def calibration_sidebar() -> dict:
    """Sidebar controls for personal calibration capture; returns the state the video thread reads."""
    capture = st.session_state.setdefault(STATE_KEY, {})
    restore("calib-name", "")
    restore("calib-n", DEFAULT_PER_CLASS)
    with st.sidebar.expander("Calibration capture", expanded=bool(capture)):
        who = st.text_input("Your name", key="calib-name",
                            help="Captures go to ~/.fer_app/calibration/<name>/; review them and calibrate "
                                 "on the Training page.")
        per_class = int(st.number_input("Faces per emotion", 5, 100, key="calib-n"))
        st.session_state[KEPT["calib-name"]], st.session_state[KEPT["calib-n"]] = who, per_class
        named = bool(who.strip())
        if st.toggle("Capture now", key="calib-on", disabled=not named, help=None if named else NEED_NAME):
            if capture.get("for") != (who.strip(), per_class):
                try:
                    capture.clear()
                    capture.update({"for": (who.strip(), per_class),
                                    "recorder": CaptureRecorder.for_session(who.strip(), per_class=per_class)})
                except ValueError as exc:
                    st.error(str(exc))
                    capture.clear()
            if "recorder" in capture:
                capture_status(capture["recorder"])
        else:
            capture.clear()
            if not named:
                st.caption(NEED_NAME)
    return capture
