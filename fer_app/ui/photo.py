"""Photo page: upload an image or take a picture -> faces, labels and probabilities (like `fer_app predict`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from fer_app.draw import draw_predictions
from fer_app.imageio import ImageError, encode_png, load_image
from fer_app.pipeline import analyze_image
from fer_app.ui import common

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]

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

predictions = analyze_image(image, model, detector)
annotated = image.copy()
draw_predictions(annotated, predictions)
stem = Path(source.name).stem or "photo"
result = {"model": model.name, "image": source.name, "width": image.shape[1], "height": image.shape[0],
          "faces": [p.to_dict() for p in predictions]}

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

table = pd.DataFrame(
    [{"face": i, "label": p.label, "confidence": p.confidence, "box (x, y, w, h)": str(p.face.box),
      **{c: float(v) for c, v in zip(p.classes, p.probabilities)}} for i, p in enumerate(predictions, 1)]
).set_index("face")
st.subheader("Faces")
st.dataframe(table, column_config={c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.2f")
                                   for c in ["confidence", *model.classes]})

st.subheader("Probabilities per face")
columns = st.columns(min(len(predictions), 3))
for i, pred in enumerate(predictions):
    with columns[i % len(columns)]:
        st.markdown(f"**Face {i + 1}: {pred.label}** ({pred.confidence:.0%})")
        st.bar_chart(pd.DataFrame({"probability": pred.probabilities}, index=pd.Index(pred.classes, name="emotion")),
                     height=220)
