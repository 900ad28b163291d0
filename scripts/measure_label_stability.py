"""Label changes per minute per track on a real clip, without and with the label hysteresis.

    .venv/bin/python scripts/measure_label_stability.py ../shared/media/videos/woman2.mp4

Runs the clip through `LivePipeline` (synchronous, the bundled model with its runtime as loaded, the
video detector defaults), once with the hysteresis off (`label_margin=0, label_dwell=0`: the shown
label is the top class of the smoothed probabilities, as before) and once with the defaults of
`fer_app.config` (`LABEL_MARGIN`, `LABEL_DWELL_S`). The pipeline's clock is the clip's own time, so
the dwell is in video seconds whatever the processing speed. Counts, per track, how often the label
shown changes between consecutive frames in which the track is labelled, per minute of the track's
labelled time (tracks labelled for under a second are left out of the per-minute figures).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from fer_app.config import DEFAULT_MODEL, LABEL_DWELL_S, LABEL_MARGIN, VIDEO_DETECTOR
from fer_app.live import LivePipeline, LiveSettings
from fer_app.model import load_model
from fer_app.video import VideoReader


def measure(path: str, model, settings: LiveSettings) -> dict[int, tuple[int, float]]:
    """Per track: (label changes, labelled seconds)."""
    now = [0.0]
    seen: dict[int, list[tuple[float, str]]] = {}
    with VideoReader(path) as reader, LivePipeline(model, settings, clock=lambda: now[0]) as pipeline:
        for t, frame in reader:
            now[0] = t
            for p in pipeline.analyze(frame):
                seen.setdefault(p.track_id, []).append((t, p.label))
    out = {}
    for track, labels in seen.items():
        changes = sum(a[1] != b[1] for a, b in zip(labels, labels[1:]))
        out[track] = (changes, labels[-1][0] - labels[0][0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    model = load_model(args.model)
    base = LiveSettings(detector=VIDEO_DETECTOR, asynchronous=False)
    runs = {"before (no hysteresis)": replace(base, label_margin=0.0, label_dwell=0.0),
            f"after (margin {LABEL_MARGIN}, dwell {LABEL_DWELL_S} s)": base}
    print(f"{args.video}, model {model.name} (runtime {getattr(model, 'runtime', '?')})")
    for name, settings in runs.items():
        per_track = measure(args.video, model, settings)
        long = {k: v for k, v in per_track.items() if v[1] >= 1.0}
        changes, seconds = sum(c for c, _ in long.values()), sum(s for _, s in long.values())
        rates = ", ".join(f"#{k}: {c} in {s:.1f} s = {60 * c / s:.1f}/min" for k, (c, s) in sorted(long.items()))
        print(f"{name}: {changes} changes in {seconds:.1f} s of labelled tracks = "
              f"{60 * changes / max(seconds, 1e-9):.1f} per minute per track ({rates})")


if __name__ == "__main__":
    main()
