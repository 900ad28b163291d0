"""The runtime check and `auto`'s choice on a tiny pure-torch encoder (fast: no CLIP, no export): what
`candidates_for` offers, `AccuracyCheck` and its failure result, `check_runtimes`, a shipped reference
batch's `stale_reason`, and which runtime `auto` picks and why. The mutation run of these functions
uses this file (README, Development)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fer_app import runtimes
from fer_app.encoders.base import Encoder, to_grey
from fer_app.runtimes import (
    AUTO,
    ONNX_FP32,
    ONNX_INT8,
    ONNX_INT8_STATIC,
    RUNTIMES,
    SHIPPED_RUNTIMES,
    TORCH,
    TORCH_INT8,
    AccuracyCheck,
    CheckCrops,
    Reference,
    RuntimeUnavailable,
    candidates_for,
    check_runtimes,
    runtime_choice,
    runtime_name,
    select_runtime,
    tensors_digest,
)


class Tiny(Encoder):
    """8x8 grey pixels through one linear layer, plus `shift` (a runtime that drifts by it), as `runtime`."""

    embed_dim = 16

    def __init__(self, encoder_id: str = "tiny", runtime: str = TORCH, shift: torch.Tensor | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.encoder_id, self.runtime, self.shift = encoder_id, runtime, shift
        self.linear = nn.Linear(64, self.embed_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.embed_dim, 64, generator=torch.Generator().manual_seed(seed)))
            self.linear.bias.fill_(3.0)  # a common part, as real embeddings of faces have
        self.calls = 0

    def preprocess(self, crops):
        grey = [cv2.resize(to_grey(c), (8, 8), interpolation=cv2.INTER_AREA) for c in crops]
        return torch.from_numpy(np.stack(grey).astype(np.float32) / 255).reshape(-1, 1, 8, 8)

    def config(self) -> dict:
        return {"type": self.encoder_id}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(pixels.reshape(len(pixels), -1))
        return out if self.shift is None else out + self.shift


def _twin(base: Tiny, runtime: str, shift: torch.Tensor | None = None) -> Tiny:
    """`base`'s weights in another "runtime", optionally drifting by `shift`."""
    twin = Tiny(base.encoder_id, runtime, shift)
    twin.load_state_dict(base.state_dict())
    return twin


@pytest.fixture(scope="module")
def crops() -> CheckCrops:
    rng = np.random.default_rng(0)
    return CheckCrops([rng.integers(0, 256, (20, 20), dtype=np.uint8) for _ in range(40)], "random crops")


@pytest.fixture(autouse=True)
def no_pinned_runtime(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(runtimes.ENV_RUNTIME, raising=False)


# ------------------------------------------------------------------------------ candidates_for

def test_candidates_put_torch_first_and_offer_shipped_runtimes_only_with_their_file():
    assert candidates_for(Tiny("compact")) == (TORCH,)  # its int8 file is shipped, and none is here
    assert candidates_for(Tiny("compact"), {ONNX_INT8_STATIC: Path("x.onnx")}) == (TORCH, ONNX_INT8_STATIC)
    clip = candidates_for(Tiny("clip-vit-b32"))
    assert clip[0] == TORCH and set(clip) == set(runtimes.CANDIDATES["clip-vit-b32"])
    unknown = candidates_for(Tiny("something-new"))  # every runtime this module builds
    assert unknown == RUNTIMES and not set(unknown) & set(SHIPPED_RUNTIMES)
    assert candidates_for(Tiny("x"), {ONNX_INT8_STATIC: Path("x.onnx")}) == RUNTIMES  # not a candidate of "x"


def test_candidates_move_torch_to_the_front(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(runtimes.CANDIDATES, "odd", (ONNX_INT8, TORCH, ONNX_FP32))
    assert candidates_for(Tiny("odd")) == (TORCH, ONNX_INT8, ONNX_FP32)


# ------------------------------------------------------------------------------ AccuracyCheck

def test_the_reference_passes_against_itself_without_running_again(crops: CheckCrops):
    reference = Tiny()
    check = AccuracyCheck(reference, crops)
    calls = reference.calls
    result = check(reference)
    assert reference.calls == calls  # its embeddings are the check's own
    assert result.passed and result.cosine_mean == pytest.approx(1.0) and result.cosine_min == pytest.approx(1.0)
    assert result.top1_agreement == 1.0 and result.n == 40 and result.runtime == TORCH
    assert result.labels_seen == int(check.labels.unique().numel()) > 1 and result.crops == "random crops"
    assert result.error is None and "passes" in result.summary() and "40 crops" in result.summary()
    same = check(_twin(reference, ONNX_FP32))  # another object with the same numbers: embedded, passes
    assert same.passed and same.runtime == ONNX_FP32 and same.seconds >= 0


def test_a_check_needs_crops():
    with pytest.raises(ValueError, match="at least one face crop"):
        AccuracyCheck(Tiny(), CheckCrops([], "none"))


def test_failure_result_of_a_runtime_that_could_not_be_built(crops: CheckCrops):
    check = AccuracyCheck(Tiny(), crops)
    result = check.failure(ONNX_INT8, "onnxruntime is not installed")
    assert not result.passed and result.runtime == ONNX_INT8 and result.n == 0
    assert result.cosine_mean is None and result.cosine_min is None and result.top1_agreement is None
    assert result.error == "onnxruntime is not installed" and result.seconds == 0.0
    assert result.labels_seen == int(check.labels.unique().numel()) and result.head == check.head_name
    assert result.crops == "random crops"
    assert result.summary() == f"{ONNX_INT8}: not checked (onnxruntime is not installed)"
    assert result.to_dict()["error"] == "onnxruntime is not installed"


def test_a_check_with_the_models_head_reads_its_labels(crops: CheckCrops):
    reference = Tiny()
    head = nn.Linear(16, 7)
    check = AccuracyCheck(reference, crops, head=head)
    assert check.head_name == "the model's head" and check.head is head
    with torch.no_grad():
        expected = head(runtimes.embed(reference, crops.crops)).argmax(1)
    assert torch.equal(check.labels, expected)


# ------------------------------------------------------------------------------ check_runtimes

def test_check_runtimes_checks_each_in_order_and_reports_what_could_not_be_built(crops, monkeypatch):
    reference = Tiny()
    loaded = []

    def load(encoder, runtime, **kwargs):
        loaded.append((runtime, kwargs["threads"], kwargs["cache_dir"]))
        if runtime == ONNX_INT8:
            raise RuntimeUnavailable("no int8 here")
        shift = torch.full((16,), 50.0) if runtime == TORCH_INT8 else None
        return _twin(encoder, runtime, shift)

    monkeypatch.setattr(runtimes, "load_runtime", load)
    results = check_runtimes(reference, [ONNX_FP32, ONNX_INT8, TORCH_INT8], crops=crops, threads=3,
                             cache_dir=Path("c"), progress=None)
    assert [r.runtime for r in results] == [ONNX_FP32, ONNX_INT8, TORCH_INT8]
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].error == "no int8 here" and results[1].n == 0
    assert results[2].error is None and results[2].cosine_mean < runtimes.COSINE_MIN  # drifted: checked, fails
    assert loaded == [(ONNX_FP32, 3, Path("c")), (ONNX_INT8, 3, Path("c")), (TORCH_INT8, 3, Path("c"))]
    with pytest.raises(ValueError, match="unknown runtime"):
        check_runtimes(reference, ["tensorrt"], crops=crops)


# ------------------------------------------------------------------------------ Reference.stale_reason

def _reference(encoder: Tiny, crops: CheckCrops, embeddings: torch.Tensor | None = None) -> Reference:
    stored = runtimes.embed(encoder, crops.crops) if embeddings is None else embeddings
    return Reference(crops, stored, tensors_digest(encoder), Path("m/reference.safetensors"))


def test_a_reference_of_these_weights_is_fresh(crops: CheckCrops):
    encoder = Tiny()
    ref = _reference(encoder, crops)
    assert ref.stale_reason(encoder) is None
    assert ref.stale_reason(encoder, runtimes.embed(encoder, crops.crops)) is None


def test_a_reference_of_other_weights_is_stale(crops: CheckCrops):
    ref = _reference(Tiny(seed=0), crops)
    reason = ref.stale_reason(Tiny(seed=1))
    assert reason is not None and "other weights" in reason and "m/reference.safetensors" in reason


def test_a_reference_whose_embeddings_torch_no_longer_gives_is_stale(crops: CheckCrops):
    encoder = Tiny()
    here = runtimes.embed(encoder, crops.crops)
    turned = here.clone()
    turned[0] = turned[0] + 0.05 * turned[0].norm() * torch.nn.functional.normalize(torch.randn(16), dim=0)
    cosine = float(torch.nn.functional.cosine_similarity(turned[0], here[0], dim=0))
    assert 0.99 < cosine < 0.9999  # one crop off by a little: below the reference's 0.9999
    reason = _reference(encoder, crops, turned).stale_reason(encoder, here)
    assert reason is not None and "differs from the stored embeddings" in reason and f"{cosine:.5f}" in reason
    assert _reference(encoder, crops, turned).stale_reason(encoder) is None  # without embeddings: weights only
    fewer = _reference(encoder, crops, here[:-1])
    assert fewer.stale_reason(encoder, here[:-1]) is None
    with pytest.raises(RuntimeError):  # a batch of another size cannot even be compared row by row
        fewer.stale_reason(encoder, here)


# ------------------------------------------------------------------------------ auto's choice

@pytest.fixture()
def fake_runtimes(monkeypatch: pytest.MonkeyPatch):
    """Runtimes built from the reference's weights: {runtime: (ms per face, shift or None, error or None)}."""
    table: dict[str, tuple[float, torch.Tensor | None, Exception | None]] = {}

    def load(encoder, runtime, **kwargs):
        ms, shift, error = table[runtime]
        if error is not None:
            raise error
        return _twin(encoder, runtime, shift)

    monkeypatch.setattr(runtimes, "load_runtime", load)
    monkeypatch.setattr(runtimes, "unavailable_reason", lambda runtime: None)
    monkeypatch.setattr(runtimes, "speed_score", lambda encoder, pixels, repeats=5: table[runtime_name(encoder)][0])
    return table


def _auto(reference: Tiny, crops: CheckCrops, tmp_path: Path, candidates, messages: list[str] | None = None,
          reference_batch: Reference | None = None):
    return select_runtime(reference, AUTO, cache_dir=tmp_path, check_crops=crops, candidates=candidates, threads=1,
                          progress=(messages.append if messages is not None else None), reference=reference_batch)


def test_auto_picks_the_fastest_runtime_that_passes(fake_runtimes, crops, tmp_path):
    drift = torch.full((16,), 50.0)
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (3.0, None, None),
                          ONNX_INT8: (1.0, drift, None), TORCH_INT8: (2.0, None, None)})
    messages: list[str] = []
    chosen = _auto(Tiny(), crops, tmp_path, [TORCH, ONNX_FP32, ONNX_INT8, TORCH_INT8], messages)
    choice = runtime_choice(chosen)
    assert runtime_name(chosen) == TORCH_INT8 and choice.how == "auto"  # int8 was faster, but failed its check
    assert "refused: onnx-int8" in choice.reason and "torch-int8 2.00" in choice.reason
    assert set(choice.candidates) == {TORCH, ONNX_FP32, ONNX_INT8, TORCH_INT8}
    assert choice.candidates[ONNX_INT8]["check"]["passed"] is False and "ms_per_face" not in choice.candidates[ONNX_INT8]
    assert choice.candidates[TORCH_INT8]["ms_per_face"] == 2.0
    assert any("refusing onnx-int8" in m for m in messages) and any("chose torch-int8" in m for m in messages)
    decision = json.loads(next(tmp_path.rglob("auto-*.json")).read_text())
    assert decision["runtime"] == TORCH_INT8 and decision["threads"] == 1 and decision["reason"] == choice.reason


def test_auto_keeps_torch_unless_another_is_clearly_faster(fake_runtimes, crops, tmp_path):
    gain = runtimes.AUTO_MIN_GAIN
    fake_runtimes.update({TORCH: (10.0, None, None), ONNX_FP32: (10.0 * (1 - gain / 2), None, None)})
    assert runtime_name(_auto(Tiny(), crops, tmp_path / "a", [TORCH, ONNX_FP32])) == TORCH  # within the noise
    fake_runtimes[ONNX_FP32] = (10.0 * (1 - 2 * gain), None, None)
    assert runtime_name(_auto(Tiny(), crops, tmp_path / "b", [TORCH, ONNX_FP32])) == ONNX_FP32
    # the order of the candidates decides nothing but ties: a later, faster one still wins
    fake_runtimes.update({ONNX_INT8: (9.0, None, None), TORCH_INT8: (5.0, None, None)})
    assert runtime_name(_auto(Tiny(), crops, tmp_path / "c", [TORCH, ONNX_INT8, ONNX_FP32, TORCH_INT8])) == TORCH_INT8


def test_auto_skips_a_runtime_that_breaks_and_says_why(fake_runtimes, crops, tmp_path):
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (1.0, None, OSError("disk full"))})
    messages: list[str] = []
    chosen = _auto(Tiny(), crops, tmp_path, [TORCH, ONNX_FP32], messages)
    assert runtime_name(chosen) == TORCH
    skipped = runtime_choice(chosen).candidates[ONNX_FP32]
    assert skipped == {"skipped": "OSError: disk full"} and any("skipping onnx-fp32: disk full" in m for m in messages)


def test_auto_with_no_runtime_passing_is_an_error(fake_runtimes, crops, tmp_path, monkeypatch):
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (1.0, torch.full((16,), 50.0), None)})
    check = runtimes.AccuracyCheck.__call__

    def broken(self, encoder):  # a reference that fails against itself: only a broken check does that
        result = check(self, encoder)
        result.passed = False
        return result

    monkeypatch.setattr(runtimes.AccuracyCheck, "__call__", broken)
    with pytest.raises(RuntimeUnavailable, match="not even torch"):
        _auto(Tiny(), crops, tmp_path, [TORCH, ONNX_FP32])
    assert not list(tmp_path.rglob("auto-*.json"))  # nothing stored


def test_auto_says_when_the_shipped_reference_is_stale(fake_runtimes, crops, tmp_path):
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (4.0, None, None)})
    stale = _reference(Tiny(seed=1), crops)
    messages: list[str] = []
    chosen = _auto(Tiny(seed=0), crops, tmp_path, [TORCH, ONNX_FP32], messages, stale)
    assert runtime_name(chosen) == TORCH
    assert any("made for other weights" in m and "checking against torch fp32 here" in m for m in messages)
    fresh: list[str] = []
    _auto(Tiny(seed=0), crops, tmp_path / "fresh", [TORCH, ONNX_FP32], fresh, _reference(Tiny(seed=0), crops))
    assert not any("other weights" in m or "differs" in m for m in fresh)
