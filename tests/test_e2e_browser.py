"""The live page end to end: headless Chromium with a fake camera <-> `streamlit run app.py` over WebRTC.

The camera is a clip made here from real faces at known places on a plain grey background:
the astronaut's face (assets/astronaut.png), and FER-2013 validation faces with their labels when
../shared/data/fer2013-trainval.npz is present. The test clicks START in the component, waits
for processed frames, then checks that
- the server found a face at each known place and labelled it (the page's stats file, below),
- the video that came back has the server's annotation colours around each of those faces, and
  none on the empty background; each face's box is drawn in the colour of the class the server
  gave it (classified, not only pending),
- with the bundled model, the labels make sense and are not constant: the astronaut is happy, and
  the FER-2013 faces (picked among those the model gets right offline) mostly get their own labels,
- the page shows the live stats (metrics such as "FPS"), and they are the overlay's: faces and labels/s agree
  between the page, the stats the overlay was drawn from and the overlay's text,
- the on-frame stats overlay lies in a corner clear of every face and its label strip (the server's box for
  it against the faces' boxes, and the darkened panel in the returned video),
- the page lays out without cut or overflowing text at 1920, 1024 and 390 px wide (element widths, no
  screenshots), and Streamlit's own "Running / Stop" indicator stays off while the stream plays,
and prints the server's FPS, page-to-START and START-to-first-frame times; and that two tabs
streaming at once both get annotated video with every face classified (and, with the bundled model,
not all alike) and their own stats (one pipeline per session, one shared model). The page writes its
stats and predictions to the file named by FER_APP_STATS_FILE (its test hook).

Network: the test must keep its traffic on loopback, so it runs inside a private network namespace
with only `lo` (plus 127.0.0.2, which aiortc's ICE needs besides 127.0.0.1). Started normally, the
test re-runs this file under `unshare -n` (as root; `unshare -rn` otherwise) and reports each
inner test's outcome as its own. Where that is impossible, or Chromium or Playwright are missing,
it skips with the reason, except when the environment variable CI is set: then it fails.
Chromium is Debian's (`make browser`); Playwright never downloads a browser here.
See ../shared/docs/webrtc-e2e.md (the recipe) for the flags and pitfalls.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import cv2
import numpy as np
import pytest

from fer_app.bench_footage import read_frames
from fer_app.config import CLASSES, DEFAULT_MODEL, MODELS_DIR, DetectorConfig
from fer_app.detection import FaceDetector
from fer_app.draw import CLASS_COLOURS, PENDING_COLOUR
from fer_app.types import Face

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
FER_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013-trainval.npz"
ASTRONAUT = ROOT / "assets" / "astronaut.png"
REAL_CLIP = ROOT.parent / "shared" / "media" / "videos" / "woman2.mp4"
CHROMIUM = Path("/usr/bin/chromium")
#: Set (to "1") in the environment of the run inside the private network namespace.
INSIDE_ENV = "FER_APP_E2E_NETNS"
INSIDE = os.environ.get(INSIDE_ENV) == "1"
NAMESPACE_SETUP = "ip link set lo up && ip addr add 127.0.0.2/8 dev lo"

WIDTH, HEIGHT, CLIP_FPS, CLIP_SECONDS = 640, 480, 15, 3
#: Seconds to wait for the page (its first run loads the model) and for the processed frames: generous,
#: for a machine busy with other work.
PAGE_TIMEOUT, FRAMES_TIMEOUT = 180, 180
#: Processed frames before the checks (tracks settled, smoothing converged).
MIN_FRAMES = 30
#: Seconds of streaming the real clip's FPS is measured over, once its face is labelled (the page's FPS: the
#: last 120 frames).
MEASURE_S = 10
#: Seconds to wait, after that, for a returned frame on which every face is drawn (a face may be missed
#: now and then on a frame that video coding has damaged).
SETTLE_TIMEOUT = 30
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # two tabs stream at once: neither may be throttled as a background tab (its <video> would stall)
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
]
#: Colours the server draws: one per class, and the box of a face not classified yet.
DRAWN_COLOURS = np.array([*CLASS_COLOURS.values(), PENDING_COLOUR], np.int16)
#: A pixel "has a drawn colour" within this distance (max over B, G, R) of one of DRAWN_COLOURS.
COLOUR_TOLERANCE = 40


# ---------------------------------------------------------------- the outer run: re-run inside `unshare -n`


def _unavailable(reason: str) -> None:
    """Skip, or fail when CI is set (there the browser test must run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def _namespace_command() -> list[str] | None:
    """`unshare -n` (root) or `unshare -rn` (an unprivileged user namespace), whichever works here."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run([*command, "bash", "-c", NAMESPACE_SETUP], capture_output=True, timeout=30,
                               check=False)
        if probe.returncode == 0:
            return command
    return None


@dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, skipped
    message: str
    output: str


@pytest.fixture(scope="module")
def namespace_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run this file once inside a private network namespace; each inner test's outcome by test name."""
    missing = [what for what, ok in [(f"Chromium ({CHROMIUM}; `make browser` installs Debian's)", CHROMIUM.exists()),
                                     ("the playwright package", _has_playwright())] if not ok]
    if missing:
        _unavailable(f"browser test needs {' and '.join(missing)}")
    unshare = _namespace_command()
    if unshare is None:
        _unavailable("browser test needs a private network namespace with only loopback: `unshare -n` (root) "
                     "or `unshare -rn` and `ip` are not available or not permitted here")
    report = tmp_path_factory.mktemp("netns") / "junit.xml"
    command = [*unshare, "bash", "-c", f'{NAMESPACE_SETUP} && exec "$@"', "netns",
               sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
               f"--junitxml={report}", f"--basetemp={report.parent / 'inner'}", "-o", "junit_logging=all",
               "-o", "junit_family=xunit2"]
    started = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, INSIDE_ENV: "1"}, capture_output=True, text=True,
                         timeout=1800, check=False)
    print(f"inner run in a private network namespace ({' '.join(unshare)}): {time.monotonic() - started:.0f} s")
    if not report.exists():
        pytest.fail(f"the run inside the namespace produced no report (exit {run.returncode}):\n"
                    f"{(run.stdout + run.stderr)[-4000:]}", pytrace=False)
    return _read_junit(report)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _read_junit(path: Path) -> dict[str, Outcome]:
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                status = "skipped" if kind == "skipped" else "failed"
                message = node.get("message", "") if kind == "skipped" else \
                    f"{node.get('message', '')}\n{node.text or ''}".strip()
                break
        output = "\n".join(n.text or "" for n in case.iter() if n.tag in ("system-out", "system-err"))
        outcomes[case.get("name", "")] = Outcome(status, message, output)
    return outcomes


def _relay(request: pytest.FixtureRequest) -> None:
    """The outer test: take the outcome of the same test inside the namespace."""
    outcomes: dict[str, Outcome] = request.getfixturevalue("namespace_run")
    outcome = outcomes.get(request.node.name)
    if outcome is None:
        pytest.fail(f"{request.node.name} did not run inside the namespace (ran: {', '.join(outcomes)})",
                    pytrace=False)
    print(outcome.output)
    if outcome.status == "skipped":
        pytest.skip(outcome.message.removeprefix("Skipped: ") or "skipped inside the namespace")
    if outcome.status == "failed":
        pytest.fail(f"inside the private network namespace:\n{outcome.message}", pytrace=False)


# ---------------------------------------------------------------- the clip


@dataclass(frozen=True)
class Placed:
    """A face put into the clip: its box in clip pixels, and its FER-2013 label (None for the astronaut)."""

    box: Face
    label: str | None


@dataclass(frozen=True)
class Scene:
    frame: np.ndarray  # BGR, all grey: anything coloured in the returned video was drawn by the server
    faces: list[Placed]


def _background(seed: int = 0) -> np.ndarray:
    """Smooth dark-grey texture, no face, darker than the grey the server draws (neutral / pending boxes)."""
    noise = np.random.default_rng(seed).integers(0, 256, (HEIGHT // 16, WIDTH // 16)).astype(np.float32)
    smooth = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.5), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    smooth = (smooth - smooth.min()) / max(1e-6, float(np.ptp(smooth)))
    return cv2.cvtColor((40 + 50 * smooth).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def astronaut_scene() -> Scene:
    """The astronaut's head twice (plain and mirrored); her face is at (60, 55, 97, 97) in the head crop."""
    from fer_app.imageio import load_image

    head = _grey(load_image(ASTRONAUT)[10:259, 116:333])
    frame = _background()
    faces = []
    for patch, (x, y) in [(head, (40, 130)), (head[:, ::-1], (380, 130))]:
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        faces.append(Placed(Face(x + 60, y + 55, 97, 97), None))
    return Scene(frame, faces)


def fer_scene() -> Scene:
    """Four FER-2013 validation faces (48 -> 130 px) with different labels: the first ones in the split's order
    that the detector finds in their place, and only there, also after lossy coding (as in the video), and
    (when models/ has the bundled model) that the model labels right, offline, on the coded frame."""
    data = np.load(FER_NPZ)
    images, labels, names = data["val_x"], data["val_y"], [str(c) for c in data["classes"]]
    # Boxes up to 1.6x the face (see _near) stay clear of the bottom strip, the control of _drawn_around.
    side, slots = 130, [(30, 45), (340, 45), (30, 205), (340, 205)]
    detector = FaceDetector(DetectorConfig())
    frame, faces, used = _background(), [], set()
    candidates = iter(range(len(images)))
    for x, y in slots:
        for index in candidates:
            if names[labels[index]] in used:
                continue
            trial = frame.copy()
            face = cv2.resize(images[index], (side, side), interpolation=cv2.INTER_CUBIC)
            trial[y : y + side, x : x + side] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
            placed = [*faces, Placed(Face(x, y, side, side), names[labels[index]])]
            boxes = [p.box for p in placed]
            degraded = _degraded(trial)
            if (all(_matches(detector.detect(version), boxes) for version in (trial, degraded))
                    and _model_gets_right(detector, degraded, placed[-1])):
                frame, faces = trial, placed
                used.add(names[labels[index]])
                break
    assert len(faces) == len(slots), "not enough FER-2013 faces the detector finds"
    return Scene(frame, faces)


@functools.lru_cache(maxsize=1)
def _shipped_model():
    """The bundled default model in torch when models/ has it (then the server runs it too), else None."""
    if not (MODELS_DIR / DEFAULT_MODEL / "config.json").exists():
        return None
    from fer_app.model import load_model

    return load_model(DEFAULT_MODEL, models_dir=MODELS_DIR, runtime="torch")


def _model_gets_right(detector: FaceDetector, frame: np.ndarray, placed: Placed) -> bool:
    """The bundled model gives the placed face its FER-2013 label with at least 65% (True without the model)."""
    model = _shipped_model()
    if model is None:
        return True
    found = [f for f in detector.detect(frame) if _near(f, placed.box)]
    probs = model.predict_proba(detector.crop(frame, found[:1]))[0]
    return CLASSES[int(probs.argmax())] == placed.label and float(probs.max()) >= 0.65


def _assert_sensible(scene: Scene, labels: list[str]) -> int:
    """With the bundled model: the labels are right and not all alike. Returns how many agree with FER-2013's."""
    agree = sum(label == placed.label for placed, label in zip(scene.faces, labels))
    if _shipped_model() is None:
        return agree
    if any(placed.label for placed in scene.faces):
        assert agree >= len(scene.faces) - 1 and len(set(labels)) >= len(scene.faces) - 1, (
            f"live labels {labels} for FER-2013 faces {[p.label for p in scene.faces]} (which the model gets right "
            f"offline): constant or wrong")
    else:
        assert labels == ["happy"] * len(scene.faces), f"the smiling astronaut is not happy: {labels}"
    return agree


def _degraded(frame: np.ndarray) -> np.ndarray:
    """The frame after strong JPEG coding: roughly what the server gets from the browser's video encoder."""
    return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR)


def _near(found: Face, expected: Face) -> bool:
    """Same face: centres within a third of the expected side, sides within a factor 1.6."""
    dx = found.x + found.w / 2 - (expected.x + expected.w / 2)
    dy = found.y + found.h / 2 - (expected.y + expected.h / 2)
    return max(abs(dx), abs(dy)) <= expected.w / 3 and 1 / 1.6 <= found.w / expected.w <= 1.6


def _matches(found: list[Face], expected: list[Face]) -> bool:
    """Exactly one found face near each expected one, and no other."""
    return len(found) == len(expected) and all(sum(_near(f, e) for f in found) == 1 for e in expected)


def write_y4m(path: Path, frames: Sequence[np.ndarray], fps: int = CLIP_FPS) -> Path:
    """A plain 4:2:0 y4m clip of BGR frames of one size, even sides (Chromium's fake camera loops it at `fps`)."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        f.writelines(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes() for frame in frames)
    return path


SCENES = {"astronaut": astronaut_scene, "fer2013": fer_scene}


# ---------------------------------------------------------------- the server and the browser (inside)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ (or $FER_APP_MODELS) when it has the default model, else a folder with a tiny model trained here."""
    if (MODELS_DIR / DEFAULT_MODEL / "config.json").exists():
        return MODELS_DIR
    from conftest import TINY_COMPACT, make_faces

    from fer_app.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("e2e") / "models"
    train(TrainConfig(**TINY_COMPACT), {"train": make_faces(24, seed=1), "val": make_faces(8, seed=2)},
          name="tiny", workdir=folder.parent / "run", models_dir=folder)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    stats_file: Path
    log: Path


@pytest.fixture()
def server(models_root: Path, tmp_path: Path) -> Iterator[Server]:
    """`python -m streamlit run app.py` on a free loopback port, with the page's stats file hook on."""
    port, log, stats_file = _free_port(), tmp_path / "streamlit.log", tmp_path / "stats.json"
    env = {**os.environ, "FER_APP_MODELS": str(models_root), "FER_APP_STATS_FILE": str(stats_file)}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not _healthy(url):
            assert process.poll() is None, f"streamlit exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"streamlit not healthy after {PAGE_TIMEOUT} s"
            time.sleep(0.2)
        yield Server(url, stats_file, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def _read_stats(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


_GRAB_VIDEO = """(video) => {
    if (!video.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return canvas.toDataURL("image/png");
}"""


def _decode(data_url: str) -> np.ndarray:
    png = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def _new_drawing(returned: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Mask of pixels the server drew: near one of its colours in the returned frame while the source pixel
    was far from that colour (video coding moves pixels by far less than the margin between the two)."""
    drawn = np.zeros(returned.shape[:2], bool)
    for colour in DRAWN_COLOURS:
        near = np.abs(returned.astype(np.int16) - colour).max(axis=2) <= COLOUR_TOLERANCE
        far_before = np.abs(source.astype(np.int16) - colour).max(axis=2) > 2 * COLOUR_TOLERANCE
        drawn |= near & far_before
    return drawn


def _outline(mask_shape: tuple[int, int], box: Face, inner: int, outer: int) -> np.ndarray:
    """Mask of the band from `inner` px inside to `outer` px outside a box's border, plus its label strip above."""
    band = np.zeros(mask_shape, bool)
    height, width = mask_shape
    band[max(0, box.y - outer - 30) : min(height, box.y + box.h + outer),
         max(0, box.x - outer) : min(width, box.x + box.w + outer)] = True
    band[box.y + inner : box.y + box.h - inner, box.x + inner : box.x + box.w - inner] = False
    return band


def _scaled(face: Face, scale: float) -> Face:
    return Face(round(face.x * scale), round(face.y * scale), round(face.w * scale), round(face.h * scale))


# ---------------------------------------------------------------- the tests


@dataclass(frozen=True)
class Observed:
    returned: np.ndarray  # a frame of the video that came back, BGR
    stats: dict  # the page's stats file after the frames
    page_fps: str  # the "FPS" metric as the page shows it
    first_frame_s: float  # from the click on START to the first processed frame (to a stats refresh)
    start_s: float = 0.0  # from opening the page to START shown
    running_seen: int = 0  # samples (of `running_samples`) in which Streamlit's Running / Stop showed
    running_samples: int = 0
    layout: dict | None = None  # per window width: texts cut or overflowing (none expected)


START, STOP = re.compile(r"^start$", re.IGNORECASE), re.compile(r"^stop$", re.IGNORECASE)


@pytest.mark.parametrize("scene_name", list(SCENES))
def test_live_page_in_browser(scene_name: str, request: pytest.FixtureRequest) -> None:
    """Faces at known places come back boxed and labelled; the page shows the stats; prints the server FPS."""
    if not INSIDE:
        _relay(request)
        return
    _check_isolated()
    if scene_name == "fer2013" and not FER_NPZ.exists():
        pytest.skip(f"no FER-2013 faces: {FER_NPZ} is absent")
    started = time.monotonic()
    scene = SCENES[scene_name]()
    tmp: Path = request.getfixturevalue("tmp_path")
    clip = write_y4m(tmp / "camera.y4m", [scene.frame] * (CLIP_FPS * CLIP_SECONDS))
    server: Server = request.getfixturevalue("server")
    def check(returned: np.ndarray, stats: dict) -> tuple[list[str], int]:
        """Assert what came back; a line per face for the report, and the labels agreeing with FER-2013's."""
        scale = returned.shape[1] / WIDTH
        predicted = [(Face(*p["box"]), p) for p in stats["predictions"]]
        matched = []
        for placed in scene.faces:
            found = [(face, p) for face, p in predicted if _near(face, _scaled(placed.box, scale))]
            assert len(found) == 1, f"face at {placed.box} not found once by the server: {stats['predictions']}"
            assert found[0][1]["label"] in CLASSES and 0 < found[0][1]["confidence"] <= 1, found[0][1]
            matched.append(found[0])
        assert len(predicted) == len(scene.faces), f"faces where there are none: {stats['predictions']}"
        boxes = [face for face, _ in matched]
        drawn = _drawn_around(returned, scene, boxes, 4, tmp)
        labels = [p["label"] for _, p in matched]
        shown = _box_colours(returned, scene, boxes, 4)
        _assert_overlay_clear(returned, scene, stats, tmp)
        assert shown == labels, f"the video shows {shown} for the server's labels {labels} ({tmp})"
        if len(matched) > 1 and any(placed.label for placed in scene.faces):  # different faces, different outputs
            assert len({json.dumps(p["probabilities"]) for _, p in matched}) == len(matched), matched
        agree = _assert_sensible(scene, labels)
        lines = [f"  face at {placed.box.box}: server box {face.box}, {p['label']} ({p['confidence']:.0%})"
                 + (f", FER-2013 says {placed.label}" if placed.label else "")
                 + f"; {around} px in the server's colours around it"
                 for placed, (face, p), around in zip(scene.faces, matched, drawn)]
        return lines, agree

    seen = _stream_in_browser(server, clip, tmp / "profile", len(scene.faces), lambda r, s: _passes(check, r, s))
    cv2.imwrite(str(tmp / "camera.png"), scene.frame)
    cv2.imwrite(str(tmp / "returned.png"), seen.returned)  # to look at when a check fails
    lines, agree = check(seen.returned, seen.stats)
    assert float(seen.page_fps) > 0 and seen.stats["fps"] > 0
    assert seen.layout is not None and not any(seen.layout.values()), f"cut or overflowing text: {seen.layout}"
    assert seen.running_seen == 0, (f"Streamlit's Running / Stop showed in {seen.running_seen} of "
                                    f"{seen.running_samples} samples while streaming")

    stats = seen.stats
    print(f"[{scene_name}] model {stats['model']}; returned video {seen.returned.shape[1]}x{seen.returned.shape[0]}; "
          f"first processed frame "
          f"{seen.first_frame_s:.1f} s after START; server FPS {stats['fps']:.1f} after {stats['frames']} frames "
          f"(median ms: detect {stats['detect_ms'][0]:.1f}, classify {stats['classify_ms'][0]:.1f} "
          f"{'in the worker' if stats['asynchronous'] else 'in the video thread'}, draw {stats['draw_ms'][0]:.1f}, "
          f"frame {stats['frame_ms'][0]:.1f}); the page shows FPS {seen.page_fps}; page to START "
          f"{seen.start_s:.1f} s; overlay at {stats['overlay_box']}; no Running / Stop in "
          f"{seen.running_samples} samples; layout checked at {', '.join(seen.layout)} px; "
          f"{time.monotonic() - started:.0f} s")
    print("\n".join(lines))
    if any(p.label for p in scene.faces):
        print(f"  live labels agree with FER-2013's on {agree} of {len(scene.faces)} faces")


def test_two_tabs_stream_at_once(request: pytest.FixtureRequest) -> None:
    """Two tabs (two sessions, one pipeline each, one shared model) both get annotated video, every face
    classified (in the colour of a class, not only pending; sensible labels with the bundled model), and stats."""
    if not INSIDE:
        _relay(request)
        return
    _check_isolated()
    started = time.monotonic()
    scene = fer_scene() if FER_NPZ.exists() else astronaut_scene()  # different faces: labels that differ
    tmp: Path = request.getfixturevalue("tmp_path")
    clip = write_y4m(tmp / "camera.y4m", [scene.frame] * (CLIP_FPS * CLIP_SECONDS))
    server: Server = request.getfixturevalue("server")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, _browser(playwright, clip, tmp / "profile") as context:
        tabs = [context.pages[0] if context.pages else context.new_page(), context.new_page()]
        components = [_start(tab, server.url) for tab in tabs]
        for tab in tabs:  # each tab's own stats: its session's pipeline sees both faces
            _wait_for_metric(tab, "Faces", lambda value: value == str(len(scene.faces)), server)
        fps = [_wait_for_metric(tab, "FPS", lambda value: float(value) > 0, server) for tab in tabs]
        returned = []
        for tab, component in zip(tabs, components):
            tab.bring_to_front()  # the tab read is the one in front, as a person would look at it
            returned.append(_settled_frame(component, scene, tmp))
        for component in components:
            component.get_by_role("button", name=STOP).click(timeout=PAGE_TIMEOUT * 1000)
    labels = []
    for i, frame in enumerate(returned):
        cv2.imwrite(str(tmp / f"returned-{i}.png"), frame)
        labels.append(_labelled_known(frame, scene, tmp))
    print(f"[two tabs] FPS as both first showed their faces (warming up; steady state: the real-clip test) "
          f"{' and '.join(fps)} at once; labels shown {labels[0]} and {labels[1]}"
          + (f" (FER-2013: {[p.label for p in scene.faces]})" if scene.faces[0].label else "")
          + f"; {time.monotonic() - started:.0f} s")


@pytest.mark.parametrize("camera_fps", [CLIP_FPS, 30])
def test_real_clip_at_camera_rate(request: pytest.FixtureRequest, camera_fps: int) -> None:
    """Fed a real clip (../shared/media's woman2.mp4: one face on a stage, a real background) at `camera_fps`
    (15, and 30 as a laptop webcam gives), one tab and then two at once: each session labels the face and keeps
    streaming. Prints each session's server FPS in steady state (the model loaded, MEASURE_S s of streaming)
    against the fake camera's rate: the issue's figure, printed rather than asserted, as Chromium shares the 2
    cores and timing is the bench's job."""
    if not INSIDE:
        _relay(request)
        return
    _check_isolated()
    if not REAL_CLIP.exists():
        pytest.skip(f"no real clip: {REAL_CLIP} is absent")
    started = time.monotonic()
    tmp: Path = request.getfixturevalue("tmp_path")
    clip = write_y4m(tmp / "camera.y4m", read_frames(REAL_CLIP, 10 * camera_fps), camera_fps)  # 10 s, looped
    server: Server = request.getfixturevalue("server")
    from playwright.sync_api import sync_playwright

    def labelled(tab) -> None:
        _wait_for_metric(tab, "Faces", lambda value: value == "1", server)
        _wait_for_metric(tab, "Labels/s", lambda value: float(value) > 0, server)

    def fps(tab) -> float:
        return float(_wait_for_metric(tab, "FPS", lambda value: float(value) > 0, server))

    with sync_playwright() as playwright, _browser(playwright, clip, tmp / "profile") as context:
        first = context.pages[0] if context.pages else context.new_page()
        _start(first, server.url)
        labelled(first)
        time.sleep(MEASURE_S)
        alone = fps(first)
        second = context.new_page()
        _start(second, server.url)
        labelled(second)
        time.sleep(MEASURE_S)
        both = [fps(first), fps(second)]
        labels = [_wait_for_metric(tab, "Labels/s", lambda value: float(value) > 0, server)
                  for tab in (first, second)]
    print(f"[real clip] {REAL_CLIP.name} at {camera_fps} FPS: server FPS {alone:.1f} with one tab "
          f"({alone / camera_fps:.2f}x the camera's); two tabs at once {both[0]:.1f} and {both[1]:.1f} "
          f"(labels {labels[0]}/s and {labels[1]}/s); {time.monotonic() - started:.0f} s")


# ---------------------------------------------------------------- checks and browser helpers


def _drawn_around_known(returned: np.ndarray, scene: Scene, tmp: Path) -> list[int]:
    """`_drawn_around` the scene's own face boxes (in the returned video's pixels), with 10% slack for the
    detector's boxes."""
    scale = returned.shape[1] / WIDTH
    boxes = [_scaled(p.box, scale) for p in scene.faces]
    return _drawn_around(returned, scene, boxes, round(0.1 * min(b.w for b in boxes)), tmp)


def _labelled_known(returned: np.ndarray, scene: Scene, tmp: Path) -> list[str]:
    """`_drawn_around_known`, and each face's box in a class colour (`_box_colours`), the labels sensible
    (`_assert_sensible`); the labels the video shows."""
    _drawn_around_known(returned, scene, tmp)
    scale = returned.shape[1] / WIDTH
    boxes = [_scaled(p.box, scale) for p in scene.faces]
    labels = _box_colours(returned, scene, boxes, round(0.1 * min(b.w for b in boxes)))
    _assert_sensible(scene, labels)
    return labels


def _box_colours(returned: np.ndarray, scene: Scene, boxes: list[Face], slack: int) -> list[str]:
    """The class whose colour the server drew most around each box (the box and its label: the class it
    shows), away from the other boxes and their labels, asserting that there is enough of it: a face only
    awaiting classification is drawn in white."""
    height, width = returned.shape[:2]
    source = cv2.resize(scene.frame, (width, height), interpolation=cv2.INTER_AREA).astype(np.int16)
    frame = returned.astype(np.int16)
    masks = {c: (np.abs(frame - np.array(colour, np.int16)).max(axis=2) <= COLOUR_TOLERANCE)
             & (np.abs(source - np.array(colour, np.int16)).max(axis=2) > 2 * COLOUR_TOLERANCE)
             for c, colour in CLASS_COLOURS.items()}
    overlay = _overlay_rect(frame, source)  # its white text is no class colour; labels keep off it
    shown = []
    for i, box in enumerate(boxes):
        band = _outline(frame.shape[:2], box, slack, slack)
        if overlay is not None:
            ox, oy, ow, oh = overlay
            band[max(0, oy - 3) : oy + oh + 3, max(0, ox - 3) : ox + ow + 3] = False
        for other in boxes[:i] + boxes[i + 1:]:  # not a neighbour's box or label (a label may sit inside the box)
            band &= ~_outline(frame.shape[:2], other, other.w, slack)
        counts = {c: int(mask[band].sum()) for c, mask in masks.items()}
        best = max(counts, key=counts.__getitem__)
        assert counts[best] >= 2 * box.w, f"the face at {box} is not drawn in a class colour: {counts}"
        shown.append(best)
    return shown


def _overlay_rect(frame: np.ndarray, source: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the stats overlay's panel, which the server darkens to a quarter in one of the frame's
    corners (None without one): the mostly dark region (a 9 px box filter over "darker than half the source", so
    its white text and video coding don't break it up) that holds a point 4 px in from a corner; the largest."""
    dark = (frame.max(axis=2) < 0.5 * source.max(axis=2)).astype(np.float32)
    mostly = (cv2.blur(dark, (9, 9)) > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mostly, connectivity=4)
    height, width = mostly.shape
    best = None
    for y, x in [(4, 4), (4, width - 5), (height - 5, 4), (height - 5, width - 5)]:
        label = labels[y, x]
        if label == 0:
            continue
        bx, by, bw, bh, _ = stats[label]
        if bw > 10 and bh > 10 and (best is None or bw * bh > best[2] * best[3]):
            best = (int(bx), int(by), int(bw), int(bh))
    return best


def _assert_overlay_clear(returned: np.ndarray, scene: Scene, stats: dict, tmp: Path) -> None:
    """The server's overlay box (its stats file) meets no face's box or label strip, lies in a corner, and the
    returned video has the darkened panel there."""
    from fer_app.draw import Rect, face_clearance

    box = stats["overlay_box"]
    assert box is not None and stats["overlay"], f"no overlay drawn: {stats}"
    rect = Rect(*box)
    for p in stats["predictions"]:
        assert not rect.intersects(face_clearance(Face(*p["box"]), WIDTH)), f"overlay {box} over the face {p['box']}"
    assert rect.x in (0, WIDTH - rect.w) and rect.y in (0, HEIGHT - rect.h), f"overlay {box} not in a corner"
    scale = returned.shape[1] / WIDTH
    source = cv2.resize(scene.frame, (returned.shape[1], returned.shape[0]), interpolation=cv2.INTER_AREA)
    found = _overlay_rect(returned.astype(np.int16), source.astype(np.int16))
    assert found is not None, f"no darkened overlay panel in the returned video ({tmp})"
    expected = _scaled(Face(*box), scale)
    assert abs(found[0] - expected.x) <= 6 and abs(found[1] - expected.y) <= 6, (found, expected.box)


def _settled_frame(component, scene: Scene, tmp: Path) -> np.ndarray:
    """A returned frame with every known face drawn and classified (the last one after SETTLE_TIMEOUT)."""
    video, deadline = component.locator("video").first, time.monotonic() + SETTLE_TIMEOUT
    while True:
        frame = _grab_video(video)
        if _passes(_labelled_known, frame, scene, tmp) or time.monotonic() > deadline:
            return frame
        time.sleep(0.5)


def _check_isolated() -> None:
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's (not /sys: the host's)
    assert interfaces == ["lo"], f"{INSIDE_ENV} is set but this namespace has interfaces {interfaces}"


def _drawn_around(returned: np.ndarray, scene: Scene, boxes: list[Face], slack: int, tmp: Path) -> list[int]:
    """Pixels in the server's colours near the border (within `slack` px) and in the label strip of each box
    of a returned frame, asserting there are enough; and asserting there are none in the empty bottom strip."""
    height, width = returned.shape[:2]
    assert abs(height - HEIGHT * width / WIDTH) <= 2, f"returned video {width}x{height} is not 4:3 ({tmp})"
    drawn = _new_drawing(returned, cv2.resize(scene.frame, (width, height), interpolation=cv2.INTER_AREA))
    counts = []
    for box in boxes:
        around = int(drawn[_outline(drawn.shape, box, slack, slack)].sum())
        # The 2 px box alone is 8 px per pixel of side; ask for a quarter (video coding blurs thin lines).
        assert around >= 2 * box.w, f"no box drawn around the face at {box}: {around} px ({tmp})"
        counts.append(around)
    overlay = _overlay_rect(returned.astype(np.int16), cv2.resize(scene.frame, (width, height),
                                                                  interpolation=cv2.INTER_AREA).astype(np.int16))
    if overlay is not None:  # the stats overlay may sit in a bottom corner: its white text is no face's drawing
        ox, oy, ow, oh = overlay
        drawn[max(0, oy - 3) : oy + oh + 3, max(0, ox - 3) : ox + ow + 3] = False
    bottom = drawn[round(0.9 * height) :]  # no face there, so no box, label or bars
    assert bottom.mean() < 0.01, f"the server's colours where nothing was drawn ({tmp})"
    return counts


@contextmanager
def _browser(playwright, clip: Path, profile: Path) -> Iterator:
    """Headless Debian Chromium with `clip` as its camera (a persistent context on a fresh profile)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"])
    try:
        yield context
    finally:
        context.close()


def _start(page, url: str, timings: dict | None = None):
    """Open the app in `page` and press START in the webrtc component; the component's frame locator.
    `timings` gets "start_s": seconds from opening the page to START shown."""
    opened = time.monotonic()
    page.goto(url, timeout=PAGE_TIMEOUT * 1000)
    component = page.frame_locator('iframe[title*="webrtc_streamer"]')
    start = component.get_by_role("button", name=START)
    start.wait_for(state="visible", timeout=PAGE_TIMEOUT * 1000)
    if timings is not None:
        timings["start_s"] = time.monotonic() - opened
    start.click(timeout=PAGE_TIMEOUT * 1000)
    return component


#: Window sizes the layout is checked at: wide, a small laptop, a phone.
VIEWPORTS = {1920: 1080, 1024: 768, 390: 844}
_LAYOUT = """() => {
    const bad = [];
    const vw = document.documentElement.clientWidth;
    const sw = document.documentElement.scrollWidth;
    if (sw > vw + 1) bad.push(`page scrolls sideways: ${sw} > ${vw}`);
    const sel = ['[data-testid="stMetricLabel"]', '[data-testid="stMetricValue"]',
                 '[data-testid="stMarkdownContainer"] table', '[data-testid="stCaptionContainer"]'].join(', ');
    for (const el of document.querySelectorAll(sel)) {
        if (el.closest('[data-testid="stSidebar"]')) continue;  // folded away on a phone; not the live page's
        const r = el.getBoundingClientRect();
        if (!r.width) continue;
        const inner = el.querySelector('p, div') || el;
        const cut = el.scrollWidth > el.clientWidth + 1 || inner.scrollWidth > inner.clientWidth + 1;
        if (cut || r.right > vw + 1 || r.left < -1) {
            bad.push(`${el.dataset.testid || el.tagName}: "${el.innerText.slice(0, 40)}" `
                     + `${Math.round(r.left)}..${Math.round(r.right)} of ${vw}, `
                     + `scroll ${el.scrollWidth} > ${el.clientWidth}`);
        }
    }
    return bad;
}"""


def _check_layout(page, shots: Path | None) -> dict:
    """Per window width, the page's texts that are cut or overflow (element widths, no screenshots; these are
    only saved, to look at, where FER_APP_E2E_SHOTS names a folder)."""
    out = {}
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        time.sleep(1.5)  # the layout settles, the stats refresh at the new width
        out[str(width)] = page.evaluate(_LAYOUT)
        if shots is not None:
            page.screenshot(path=str(shots / f"live-{width}.png"))
            page.get_by_text("Emotion timeline").first.scroll_into_view_if_needed()
            time.sleep(0.5)
            page.screenshot(path=str(shots / f"live-{width}-stats.png"))
            page.locator('iframe[title*="webrtc_streamer"]').first.scroll_into_view_if_needed()
    page.set_viewport_size({"width": 1280, "height": 900})
    return out


def _running_indicator(page, seconds: float = 4.0) -> tuple[int, int]:
    """Samples over `seconds` of Streamlit's own status widget while the stream plays: (showing Running / a Stop
    button, samples)."""
    seen = samples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        widget = page.locator('[data-testid="stStatusWidget"]')
        text = " ".join(widget.all_inner_texts()) if widget.count() and widget.first.is_visible() else ""
        stop = page.get_by_role("button", name=re.compile(r"^stop$", re.IGNORECASE)).count()  # outside the iframe
        seen += bool(re.search(r"running|stop", text, re.IGNORECASE) or stop)
        samples += 1
        time.sleep(0.2)
    return seen, samples


def _counters_agree(page, server: Server, faces: int) -> dict:
    """The page's Faces and Labels/s equal the stats the overlay was drawn from (the stats file, written in the
    same refresh) and the overlay's own text; retried until a refresh where both were read in between."""
    deadline, last = time.monotonic() + FRAMES_TIMEOUT / 3, None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            before = _read_stats(server.stats_file)
            values = {label: page.locator('[data-testid="stMetric"]', has_text=label).first.locator(
                '[data-testid="stMetricValue"]').inner_text(timeout=1000).strip() for label in ("Faces", "Labels/s")}
            after = _read_stats(server.stats_file)
            if before and after and before["time"] == after["time"]:
                shown = after["shown"]
                last = (values, shown, after["overlay"])
                if (values["Faces"] == str(shown["faces"]) == str(faces)
                        and values["Labels/s"] == f"{shown['label_refresh_hz']:.1f}"
                        and after["overlay"][0].startswith(f"{shown['fps']:.1f} FPS  faces {faces}  "
                                                           f"labels {shown['label_refresh_hz']:.1f}/s")):
                    return values
        time.sleep(0.2)
    pytest.fail(f"the page's counters and the overlay's never agreed: {last}")


def _wait_for_metric(page, label: str, ok, server: Server) -> str:
    """The value of the page's metric `label` once `ok(value)` holds; a failure shows the server's log (where
    streamlit-webrtc reports a processing thread that died) and the last stats the page wrote."""
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first.locator('[data-testid="stMetricValue"]')
    deadline, value = time.monotonic() + FRAMES_TIMEOUT, None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not rendered yet, re-rendered while read, or not a number yet
            value = metric.inner_text(timeout=1000).strip()
            if ok(value):
                return value
        time.sleep(0.25)
    pytest.fail(f"metric {label!r} never got a good value within {FRAMES_TIMEOUT} s (last: {value!r}); last stats "
                f"{_read_stats(server.stats_file)}; server log:\n{server.log.read_text()[-3000:]}")


def _stream_in_browser(server: Server, clip: Path, profile: Path, faces: int,
                       settled: Callable[[np.ndarray, dict], bool]) -> Observed:
    """Open the page with `clip` as the camera, START, wait for the processed frames (`faces` labelled), read
    the returned video and the stats until `settled(frame, stats)` (or SETTLE_TIMEOUT), the page's FPS, STOP."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, _browser(playwright, clip, profile) as context:
        page = context.pages[0] if context.pages else context.new_page()
        timings: dict = {}
        component = _start(page, server.url, timings)
        clicked = time.monotonic()
        first_frame = _wait_for_frames(server, faces)
        video, deadline = component.locator("video").first, time.monotonic() + SETTLE_TIMEOUT
        while True:
            returned, stats = _grab_video(video), _read_stats(server.stats_file)
            if settled(returned, stats) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        page_fps = _wait_for_metric(page, "FPS", lambda value: float(value) > 0, server)
        _counters_agree(page, server, faces)
        running, samples = _running_indicator(page)
        shots = Path(os.environ["FER_APP_E2E_SHOTS"]) if os.environ.get("FER_APP_E2E_SHOTS") else None
        layout = _check_layout(page, shots)
        component.get_by_role("button", name=STOP).click(timeout=PAGE_TIMEOUT * 1000)
    return Observed(returned, stats, page_fps, first_frame - clicked, timings["start_s"], running, samples, layout)


def _passes(check: Callable[..., object], *args: object) -> bool:
    try:
        check(*args)
    except AssertionError:
        return False
    return True


def _wait_for_frames(server: Server, faces: int) -> float:
    """Wait until MIN_FRAMES frames are processed with `faces` faces labelled; when the first frame was seen."""
    deadline, first = time.monotonic() + FRAMES_TIMEOUT, None
    while time.monotonic() < deadline:
        stats = _read_stats(server.stats_file)
        if stats and stats["frames"] > 0:
            first = first or time.monotonic()
            if stats["frames"] >= MIN_FRAMES and len(stats["predictions"]) >= faces:
                return first
        time.sleep(0.25)
    pytest.fail(f"no {MIN_FRAMES} processed frames with {faces} labelled faces within {FRAMES_TIMEOUT} s; last "
                f"stats {_read_stats(server.stats_file)}; server log:\n{server.log.read_text()[-3000:]}")


def _grab_video(video) -> np.ndarray:
    """A frame of the returned video, drawn into a canvas inside the component's frame."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while time.monotonic() < deadline:
        data = video.evaluate(_GRAB_VIDEO)
        if data:
            return _decode(data)
        time.sleep(0.25)
    pytest.fail(f"the returned <video> showed no frame within {PAGE_TIMEOUT} s")
