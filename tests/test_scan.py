"""Detect-and-track (`fer_app.scan`, `FaceDetector.detect_near`) on real photos of a face."""

from __future__ import annotations

import pytest

from fer_app.config import ScanConfig
from fer_app.detection import FaceDetector
from fer_app.scan import Scanner
from fer_app.tracking import FaceTracker
from fer_app.types import Face
from test_live import DETECTOR, moving, scene


def _near(a: Face, b: Face, tolerance: float = 0.25) -> bool:
    return abs(a.x - b.x) <= tolerance * b.w and abs(a.y - b.y) <= tolerance * b.h and \
        abs(a.w - b.w) <= tolerance * b.w


def test_detect_near_finds_the_face_in_its_window_only():
    detector = FaceDetector(DETECTOR)
    frame = scene((100, 80), (420, 250))
    left, right = sorted(detector.detect(frame), key=lambda f: f.x)
    (found,) = detector.detect_near(frame, [left])  # the other face is outside the window
    assert _near(found, left, 0.1)
    assert detector.detect_near(scene((420, 250)), [left]) == []  # the face left its window: not found
    moved = scene((112, 83), (420, 250))
    (again,) = detector.detect_near(moved, [left])
    assert again.x > found.x  # followed the move
    assert detector.detect_near(frame, []) == []


def test_detect_near_keeps_to_the_scale_range():
    detector = FaceDetector(DETECTOR)
    frame = scene((100, 80))
    (face,) = detector.detect(frame)
    half = Face(face.x + face.w // 4, face.y + face.h // 4, face.w // 2, face.h // 2)
    assert detector.detect_near(frame, [half], scale_range=1.2) == []  # the face is 2x the size looked for
    assert len(detector.detect_near(frame, [half], window=1.0, scale_range=2.5)) == 1


def test_scanner_scans_whole_frames_every_n_and_after_a_new_or_lost_track():
    detector = FaceDetector(DETECTOR)
    scanner, tracker = Scanner(detector, ScanConfig(full_every=4)), FaceTracker()
    kinds = []

    def step(frame):
        result = scanner.detect(frame, tracker.tracks)
        scanner.after(tracker.update(result.faces))
        kinds.append("F" if result.full else "w")
        return result.faces

    assert step(scene()) == [] and step(scene()) == []  # no track: every frame is a full scan
    for i in range(9):
        assert len(step(scene(moving(i)))) == 1
    # new track -> full scan on the next frame too; then windows, a full scan every 4th frame
    assert "".join(kinds) == "FF" + "FF" + "www" + "F" + "www"
    assert len(step(scene(moving(9)))) == 1 and kinds[-1] == "F"  # the 4th frame since the last full scan
    step(scene())  # the face is gone: its window finds nothing...
    assert kinds[-1] == "w"
    step(scene())  # ...so the next frame is scanned whole
    assert kinds[-1] == "F"
    assert scanner.full_scans == kinds.count("F") and scanner.window_scans == kinds.count("w")


def test_full_every_1_is_a_full_scan_each_frame():
    detector = FaceDetector(DETECTOR)
    scanner, tracker = Scanner(detector, ScanConfig(full_every=1)), FaceTracker()
    for i in range(4):
        result = scanner.detect(scene(moving(i)), tracker.tracks)
        scanner.after(tracker.update(result.faces))
        assert result.full


@pytest.mark.parametrize("bad", [dict(full_every=0), dict(window=-0.1), dict(scale_range=0.9)])
def test_scan_config_is_validated(bad):
    with pytest.raises(ValueError):
        ScanConfig(**bad)


def test_detect_near_uses_the_detectors_settings_and_frame_mapping():
    from dataclasses import replace

    frame = scene((100, 80), (420, 250))
    for width in (320, 640):  # downscaled or not, the window's face maps back to the full scan's box
        detector = FaceDetector(replace(DETECTOR, detection_width=width))
        for face in detector.detect(frame):
            (near,) = detector.detect_near(frame, [face])
            assert _near(near, face, 0.08), (width, near, face)
    base = FaceDetector(DETECTOR)
    faces = base.detect(frame)
    strict = FaceDetector(replace(DETECTOR, min_neighbors=60))  # as in `detect`: too strict to find anything
    assert strict.detect(frame) == [] and strict.detect_near(frame, faces) == []
    big = FaceDetector(replace(DETECTOR, min_face=400))  # faces under the minimum size are not looked for
    assert big.detect_near(frame, faces) == []
    tight = base.detect_near(frame, faces[:1], window=0.0, scale_range=1.05)
    assert len(tight) <= 1 and all(_near(f, faces[0], 0.15) for f in tight)


def test_window_scans_cannot_make_a_box_creep():
    """Sizes are looked for around the track's size at its last full scan, not its last box."""
    detector = FaceDetector(DETECTOR)
    config = ScanConfig(full_every=40, scale_range=1.3)
    scanner, tracker = Scanner(detector, config), FaceTracker()
    sides = []
    for i in range(30):
        result = scanner.detect(scene(moving(i % 3)), tracker.tracks)
        matched = tracker.update(result.faces)
        scanner.after(matched)
        sides += [(result.full, m.face.w) for m in matched]
    full_side = next(w for full, w in sides if full)
    assert all(full_side / 1.3 <= w <= full_side * 1.3 for _, w in sides), sides


# --- full scans in the background (the live page) ------------------------------------------------------------


def _gated(scanner: Scanner):
    """Hold the scanner's background full scans at a gate; the frames they were given."""
    import threading

    gate, given = threading.Event(), []
    detect = scanner._background_detector.detect

    def held(frame, **kwargs):
        given.append(frame)
        assert gate.wait(30)
        return detect(frame, **kwargs)

    scanner._background_detector.detect = held
    return gate, given


def _wait_idle(scanner: Scanner) -> None:
    import time

    deadline = time.monotonic() + 30
    while scanner._background is not None and scanner._background.busy:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_background_full_scans_never_hold_the_frame_and_join_when_done():
    detector = FaceDetector(DETECTOR)
    scanner, tracker = Scanner(detector, ScanConfig(full_every=3), background=True), FaceTracker()
    gate, given = _gated(scanner)
    kinds = []

    def step(frame):
        result = scanner.detect(frame, tracker.tracks)
        matched = tracker.update(result.faces)
        scanner.after(matched)
        kinds.append("F" if result.full else "w")
        return matched

    (first,) = step(scene(moving(0)))  # nothing tracked: the full scan runs here, the face is found at once
    assert kinds == ["F"] and given == []
    for i in range(1, 6):  # a second face comes in: the windows follow the first, the full scan waits at the gate
        matched = step(scene(moving(i), (420, 250)))
        assert [m.id for m in matched] == [first.id] and kinds[-1] == "w"
    assert len(given) == 1 and scanner._background.busy  # one full scan in flight, none queued behind it
    gate.set()
    _wait_idle(scanner)
    matched = step(scene(moving(6), (420, 250)))  # the full scan's faces join this frame's
    assert kinds[-1] == "F" and len(matched) == 2
    ours = next(m for m in matched if m.id == first.id)
    assert _near(ours.face, detector.detect(scene(moving(6)))[0], 0.1)  # the window's fresh box, not the scan's
    assert given[0].flags.owndata  # the scan works on its own copy of the frame
    (scanned,) = [f for f in detector.detect(given[0]) if f.x < 300]
    assert scanner._sides[first.id] == max(scanned.w, scanned.h)  # its size anchored to the full scan's
    thread = scanner._background.thread
    scanner.close()
    assert not thread.is_alive()


def test_a_background_scan_older_than_a_full_scan_made_here_is_dropped():
    detector = FaceDetector(DETECTOR)
    scanner, tracker = Scanner(detector, ScanConfig(full_every=2), background=True), FaceTracker()
    gate, given = _gated(scanner)
    for i in range(3):  # found here, then windows; the due full scan goes to the background (held)
        scanner.after(tracker.update(scanner.detect(scene(moving(i), (420, 250)), tracker.tracks).faces))
    assert len(given) == 1
    for _ in range(12):  # both faces leave; their tracks end; with nothing tracked the scans run here
        scanner.after(tracker.update(scanner.detect(scene(), tracker.tracks).faces))
    assert tracker.tracks == []
    gate.set()
    _wait_idle(scanner)
    found = scanner.detect(scene(moving(9)), tracker.tracks)  # nothing tracked: a full scan here
    assert found.full and len(found.faces) == 1
    scanner.after(tracker.update(found.faces))
    result = scanner.detect(scene(moving(10)), tracker.tracks)  # the held scan (two faces) ended long ago:
    assert len(result.faces) == 1 and not result.full  # dropped, no ghost of the face at (420, 250)
    scanner.close()


def test_close_stops_the_background_thread_and_a_later_scan_starts_another():
    scanner, tracker = Scanner(FaceDetector(DETECTOR), ScanConfig(full_every=2), background=True), FaceTracker()
    for i in range(3):
        scanner.after(tracker.update(scanner.detect(scene(moving(i)), tracker.tracks).faces))
    thread = scanner._background.thread
    scanner.close()
    assert not thread.is_alive() and scanner._background is None
    scanner.close()  # twice is fine
    for i in range(3, 6):
        scanner.after(tracker.update(scanner.detect(scene(moving(i)), tracker.tracks).faces))
    assert scanner._background is not None and scanner._background.thread.is_alive()
    scanner.close()


def test_the_live_pipeline_scans_in_the_background_unless_all_is_synchronous():
    from dataclasses import replace

    from test_live import SYNC, FakeModel

    from fer_app.live import LivePipeline

    for asynchronous, background in ((False, False), (None, True), (True, True)):
        with LivePipeline(FakeModel(), replace(SYNC, asynchronous=asynchronous)) as pipeline:
            assert (pipeline._scanner._background_detector is not None) is background
            assert pipeline._scanner._background_detector is not pipeline._scanner.detector
