"""Photo page: upload an image or take a picture -> faces, labels and probabilities (like `fer_app predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from fer_app.config import STILLS_MODEL
from fer_app.draw import class_colour, draw_predictions, text_scale
from fer_app.imageio import ImageError, encode_png, load_image
from fer_app.pipeline import analyze_image
from fer_app.ui import common

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]


def hex_colour(name: str) -> str:
    """A class's colour (`fer_app.draw.class_colour`, BGR) as #rrggbb."""
    return "#{2:02x}{1:02x}{0:02x}".format(*class_colour(name))


def probability_chart(classes: tuple[str, ...], probabilities) -> alt.Chart:
    """Horizontal bars, one per class in the model's own order (not sorted), in the class colours."""
    data = pd.DataFrame({"emotion": list(classes), "probability": [float(p) for p in probabilities]})
    return alt.Chart(data, height=alt.Step(24)).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", title=None)),
        y=alt.Y("emotion:N", sort=list(classes),
                axis=alt.Axis(title=None, labelAngle=0, labelLimit=120, labelOverlap=False, labelFontSize=13)),
        color=alt.Color("emotion:N", scale=alt.Scale(domain=list(classes), range=[hex_colour(c) for c in classes]),
                        legend=None),
        tooltip=["emotion", alt.Tooltip("probability:Q", format=".1%")])


st.title("Photo")
st.caption("Upload a photo or take one with your camera: every face is detected and its expression classified.")

info = common.model_picker(default=STILLS_MODEL)  # the accurate model, when models/ has it
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
# The page shows the photo 550-1000 px wide: text sized for that, not for the photo's own width.
draw_predictions(annotated, predictions, tags=[str(i) for i in range(1, len(predictions) + 1)],
                 scale=max(text_scale(image.shape[1]), image.shape[1] / 900))
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

# Narrow columns so that all the classes fit beside the face number without sideways scrolling, even at
# 1024 px with the sidebar open: percentages as whole numbers, each face's top class highlighted in its
# colour (the label column that was here said the same). The boxes are in the JSON download.
table = pd.DataFrame(
    [{"face": i, **{c: round(100 * float(v)) for c, v in zip(p.classes, p.probabilities)}}
     for i, p in enumerate(predictions, 1)]
).set_index("face")


def top_class(row: pd.Series) -> list[str]:
    top = row.idxmax()
    return [f"background-color: {hex_colour(top)}66; font-weight: bold" if c == top else "" for c in row.index]


st.subheader("Faces")
st.dataframe(table.style.apply(top_class, axis=1), column_config={
    "face": st.column_config.NumberColumn("face", width=44, help="The number drawn beside the face on the image"),
    **{c: st.column_config.NumberColumn(c, format="%d%%", width=66) for c in model.classes}})

st.subheader("Probabilities per face")
columns = st.columns(min(len(predictions), 3))
for i, pred in enumerate(predictions):
    with columns[i % len(columns)]:
        st.markdown(f"**Face {i + 1}: {pred.label}** ({pred.confidence:.0%})")
        st.altair_chart(probability_chart(pred.classes, pred.probabilities), width="stretch")
