"""Photo page: upload an image or take a picture -> faces, labels and probabilities (like `fer_app predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from fer_app.draw import class_colour, draw_predictions
from fer_app.imageio import ImageError, encode_png, load_image
from fer_app.pipeline import analyze_image
from fer_app.ui import common

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]


def probability_chart(classes: tuple[str, ...], probabilities) -> alt.Chart:
    """Horizontal bars, one per class in the model's own order (not sorted), in the class colours."""
    data = pd.DataFrame({"emotion": list(classes), "probability": [float(p) for p in probabilities]})
    colours = ["#{2:02x}{1:02x}{0:02x}".format(*class_colour(c)) for c in classes]  # BGR -> #rrggbb
    return alt.Chart(data, height=26 * len(classes)).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", title=None)),
        y=alt.Y("emotion:N", sort=list(classes), axis=alt.Axis(title=None, labelAngle=0, labelLimit=120)),
        color=alt.Color("emotion:N", scale=alt.Scale(domain=list(classes), range=colours), legend=None),
        tooltip=["emotion", alt.Tooltip("probability:Q", format=".1%")])

st.title("Photo")
st.caption("Upload a photo or take one with your camera: every face is detected and its expression classified.")

info = common.model_picker()
detector_config = common.detector_settings()
model = common.require_model(info)
detector = common.cached_detector(detector_config)

# The camera widget asks for the camera as soon as it is drawn, so it is drawn only when chosen.
if st.radio("Source", ["Upload a file", "Take a picture"], horizontal=True, key="photo-source") == "Upload a file":
    source = st.file_uploader("Image (JPG, PNG or WebP)", type=IMAGE_TYPES, key="photo-upload")
else:
    source = st.camera_input("Take a picture", key="photo-camera")
if source is None:
    st.info("Upload an image or take a picture to start.")
    st.stop()

try:
    image = load_image(source.getvalue(), name=source.name)
except ImageError as exc:
    st.error(str(exc))
    st.stop()

# Faces numbered left to right; the numbers on the image, the table and the charts are the same.
predictions = sorted(analyze_image(image, model, detector), key=lambda p: (p.face.x, p.face.y))
annotated = image.copy()
draw_predictions(annotated, predictions, tags=[str(i) for i in range(1, len(predictions) + 1)])
stem = Path(source.name).stem or "photo"
result = {"model": model.name, "image": source.name, "width": image.shape[1], "height": image.shape[0],
          "faces": [{"face": i, **p.to_dict()} for i, p in enumerate(predictions, 1)]}

st.image(annotated, channels="BGR", caption=f"{source.name}: {len(predictions)} face(s), model {model.name}")
left, right = st.columns(2)
left.download_button("Download annotated PNG", encode_png(annotated), file_name=f"{stem}-annotated.png",
                     mime="image/png", key="photo-png")
right.download_button("Download JSON result", json.dumps(result, indent=2), file_name=f"{stem}.json",
                      mime="application/json", key="photo-json")

if not predictions:
    st.info("No face found. Try a larger, frontal face, or lower *Min neighbours* / *Min face size* under "
            "*Face detection* in the sidebar.")
    st.stop()

# Compact columns so that all the classes fit beside the face number and its label (no sideways scrolling);
# the boxes are in the JSON download.
table = pd.DataFrame(
    [{"face": i, "label": f"{p.label} {p.confidence:.0%}", **{c: float(v) for c, v in zip(p.classes, p.probabilities)}}
     for i, p in enumerate(predictions, 1)]
).set_index("face")
st.subheader("Faces")
st.dataframe(table, column_config={
    "face": st.column_config.NumberColumn("face", width=48, help="The number drawn beside the face on the image"),
    "label": st.column_config.TextColumn("label", width=96),
    **{c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="percent", width=72)
       for c in model.classes}})

st.subheader("Probabilities per face")
columns = st.columns(min(len(predictions), 3))
for i, pred in enumerate(predictions):
    with columns[i % len(columns)]:
        st.markdown(f"**Face {i + 1}: {pred.label}** ({pred.confidence:.0%})")
        st.altair_chart(probability_chart(pred.classes, pred.probabilities), width="stretch")
