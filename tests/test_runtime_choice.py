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
from fer_app.encoders.base import Encoder
from fer_app.imageio import to_grey
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
    """8x8 grey pixels through one linear layer, then `shift` added or `transform` applied (a runtime that
    drifts on purpose), as `runtime`."""

    embed_dim = 16

    def __init__(self, encoder_id: str = "tiny", runtime: str = TORCH, shift: torch.Tensor | None = None,
                 seed: int = 0, transform=None) -> None:
        super().__init__()
        self.encoder_id, self.runtime, self.shift, self.transform = encoder_id, runtime, shift, transform
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
        out = out if self.shift is None else out + self.shift
        return out if self.transform is None else self.transform(out)


def _twin(base: Tiny, runtime: str, shift: torch.Tensor | None = None, transform=None) -> Tiny:
    """`base`'s weights in another "runtime", optionally drifting by `shift` or `transform`."""
    twin = Tiny(base.encoder_id, runtime, shift, transform=transform)
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
    assert result.error is None and result.head == check.head_name and 0 <= result.seconds < 1  # 40 tiny crops
    assert result.summary().startswith(f"{TORCH}: passes (cosine mean 1.0000") and "40 crops" in result.summary()
    assert check.head_name.startswith("a fixed random linear head")
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
        assert kwargs["progress"] is say and kwargs["shipped"] == {ONNX_INT8_STATIC: Path("s.onnx")}
        if runtime == ONNX_INT8:
            raise RuntimeUnavailable("no int8 here")
        shift = torch.full((16,), 50.0) if runtime == TORCH_INT8 else None
        return _twin(encoder, runtime, shift)

    def say(message: str) -> None:
        pass

    monkeypatch.setattr(runtimes, "load_runtime", load)
    head = nn.Linear(16, 7)
    results = check_runtimes(reference, [ONNX_FP32, ONNX_INT8, TORCH_INT8], crops=crops, head=head, threads=3,
                             cache_dir=Path("c"), progress=say, shipped={ONNX_INT8_STATIC: Path("s.onnx")})
    assert all(r.head == "the model's head" and r.crops == "random crops" for r in results)
    assert results[0].n == len(crops.crops)
    assert [r.runtime for r in results] == [ONNX_FP32, ONNX_INT8, TORCH_INT8]
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].error == "no int8 here" and results[1].n == 0
    assert results[2].error is None and results[2].cosine_mean < runtimes.COSINE_MIN  # drifted: checked, fails
    assert results[2].summary().startswith(f"{TORCH_INT8}: FAILS (cosine mean")
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
    assert (choice.candidates[ONNX_INT8]["check"]["passed"] is False
            and "ms_per_face" not in choice.candidates[ONNX_INT8])
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


# ------------------------------------------------------------------------------ the check's two conditions

READ = 7  # the check head below reads the first 7 embedding dimensions; a large common part sits in the last


def _reading_head(reference: Tiny, crops: CheckCrops) -> nn.Linear:
    """A head reading the first READ dimensions, centred on the reference's mean (so its labels vary)."""
    mean = runtimes.embed(reference, crops.crops)[:, :READ].mean(0)
    head = nn.Linear(16, 7)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :READ] = torch.eye(READ)
        head.bias.copy_(-mean)
    return head


def _common(e: torch.Tensor) -> torch.Tensor:
    return torch.cat([e[:, :-1], e[:, -1:] + 300.0], 1)  # what every face shares dominates the cosine


def _flipped(e: torch.Tensor) -> torch.Tensor:
    """Every label changed (the read part reversed around its mean), the cosine barely moved."""
    e = _common(e)
    read = e[:, :READ]
    return torch.cat([2 * read.mean(0, keepdim=True) - read, e[:, READ:]], 1)


def _drifted(e: torch.Tensor) -> torch.Tensor:
    """Every label kept, the cosine lost: a large part where the head does not read."""
    e = _common(e)
    return torch.cat([e[:, :-2], e[:, -2:-1] + 900.0, e[:, -1:]], 1)


def test_the_check_needs_both_the_cosine_and_the_labels(crops):
    reference = Tiny(transform=_common)
    check = AccuracyCheck(reference, crops, head=_reading_head(reference, crops))
    assert check.labels.unique().numel() > 2
    flipped = check(_twin(reference, "flip", transform=_flipped))
    assert flipped.cosine_mean >= runtimes.COSINE_MIN and flipped.top1_agreement < runtimes.TOP1_MIN
    assert not flipped.passed  # the cosine alone would pass it
    drifted = check(_twin(reference, "drift", transform=_drifted))
    assert drifted.top1_agreement == 1.0 and drifted.cosine_mean < runtimes.COSINE_MIN
    assert not drifted.passed  # the labels alone would pass it


def test_the_check_thresholds_are_inclusive(crops, monkeypatch):
    reference = Tiny()
    near = _twin(reference, ONNX_FP32, shift=torch.full((16,), 0.3))
    check = AccuracyCheck(reference, crops)
    result = check(near)
    exact = float(torch.nn.functional.cosine_similarity(runtimes.embed(near, crops.crops), check.reference,
                                                        dim=1).mean())  # the check's own figure, unrounded
    monkeypatch.setattr(runtimes, "COSINE_MIN", exact)
    monkeypatch.setattr(runtimes, "TOP1_MIN", result.top1_agreement)
    assert check(near).passed  # exactly at both
    monkeypatch.setattr(runtimes, "TOP1_MIN", result.top1_agreement + 1e-3)
    assert not check(near).passed
    monkeypatch.setattr(runtimes, "TOP1_MIN", result.top1_agreement)
    monkeypatch.setattr(runtimes, "COSINE_MIN", result.cosine_mean + 1e-6)
    assert not check(near).passed


# ------------------------------------------------------------------------------ explicit and pinned runtimes

@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def load(encoder, runtime, **kwargs):
        calls.append((encoder, runtime, kwargs))
        return _twin(encoder, runtime)

    monkeypatch.setattr(runtimes, "load_runtime", load)
    return calls


def test_an_explicit_runtime_is_built_as_asked_and_not_checked(loads, tmp_path):
    encoder = Tiny()
    say = [].append
    chosen = select_runtime(encoder, ONNX_INT8, threads=3, cache_dir=tmp_path, progress=say,
                            shipped={ONNX_INT8_STATIC: Path("s.onnx")})
    assert loads == [(encoder, ONNX_INT8, {"threads": 3, "cache_dir": tmp_path, "progress": say,
                                           "shipped": {ONNX_INT8_STATIC: Path("s.onnx")}})]
    choice = runtime_choice(chosen)
    assert runtime_name(chosen) == ONNX_INT8 and (choice.runtime, choice.how) == (ONNX_INT8, "asked")
    assert choice.reason == "asked for; not checked" and choice.candidates == {}
    assert not list(tmp_path.rglob("auto-*.json"))


def test_the_environment_pins_what_auto_means_and_nothing_else(loads, tmp_path, monkeypatch):
    monkeypatch.setenv(runtimes.ENV_RUNTIME, f" {ONNX_FP32} ")
    choice = runtime_choice(select_runtime(Tiny(), AUTO, cache_dir=tmp_path))
    assert (choice.runtime, choice.how) == (ONNX_FP32, "pinned")
    assert choice.reason == f"pinned by {runtimes.ENV_RUNTIME}={ONNX_FP32}"
    asked = runtime_choice(select_runtime(Tiny(), TORCH_INT8, cache_dir=tmp_path))  # an explicit one wins
    assert (asked.runtime, asked.how, asked.reason) == (TORCH_INT8, "asked", "asked for; not checked")
    monkeypatch.setenv(runtimes.ENV_RUNTIME, "tensorrt")
    with pytest.raises(ValueError, match="tensorrt"):
        select_runtime(Tiny(), AUTO, cache_dir=tmp_path)


def test_auto_in_the_environment_is_auto(fake_runtimes, crops, tmp_path, monkeypatch):
    monkeypatch.setenv(runtimes.ENV_RUNTIME, AUTO)
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (1.0, None, None)})
    choice = runtime_choice(_auto(Tiny(), crops, tmp_path, [TORCH, ONNX_FP32]))
    assert (choice.runtime, choice.how) == (ONNX_FP32, "auto")


# ------------------------------------------------------------------------------ more of auto's choice

def test_auto_checks_on_the_shipped_reference_crops_with_the_models_head(fake_runtimes, crops, tmp_path):
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (1.0, None, None)})
    own = CheckCrops(crops.crops[:10], "the model's own crops")
    batch = _reference(Tiny(), own)
    head = nn.Linear(16, 7)
    chosen = select_runtime(Tiny(), AUTO, cache_dir=tmp_path, check_crops=crops, head=head, threads=1,
                            candidates=[TORCH, ONNX_FP32], progress=None, reference=batch)
    check = runtime_choice(chosen).candidates[ONNX_FP32]["check"]
    assert check["n"] == 10 and check["crops"] == "the model's own crops" and check["head"] == "the model's head"


def test_auto_goes_on_past_what_it_cannot_use(fake_runtimes, crops, tmp_path, monkeypatch):
    drift = torch.full((16,), 50.0)
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (0.5, None, OSError("disk full")),
                          TORCH_INT8: (0.5, drift, None), ONNX_INT8: (9.0, None, None),
                          "openvino-fp32": (1.0, None, None), "openvino-bf16": (0.2, drift, None)})
    monkeypatch.setattr(runtimes, "unavailable_reason",
                        lambda r: "openvino is not installed" if r == ONNX_INT8 else None)
    timed: list[tuple[str, tuple]] = []

    def score(encoder, pixels, repeats=5):
        timed.append((runtime_name(encoder), tuple(pixels.shape)))
        return fake_runtimes[runtime_name(encoder)][0]

    monkeypatch.setattr(runtimes, "speed_score", score)
    messages: list[str] = []
    order = [TORCH, ONNX_FP32, ONNX_INT8, TORCH_INT8, "openvino-fp32", "openvino-bf16"]
    chosen = _auto(Tiny(), crops, tmp_path, order, messages)
    choice = runtime_choice(chosen)
    assert choice.runtime == runtime_name(chosen) == "openvino-fp32"  # after a break, a skip and a refusal
    assert choice.candidates[ONNX_INT8] == {"skipped": "openvino is not installed"}
    assert choice.candidates[ONNX_FP32] == {"skipped": "OSError: disk full"}
    assert [name for name, _ in timed] == [TORCH, "openvino-fp32"]  # a refused runtime is never timed
    assert all(shape == (8, 1, 8, 8) for _, shape in timed)  # on the first 8 crops
    assert messages[0].startswith(f"runtime auto: checking and timing {', '.join(order)} on 40 face crops")
    assert f"runtime auto: {ONNX_INT8} is not available (openvino is not installed)" in messages
    assert choice.reason.endswith("ms per face torch 4.00, openvino-fp32 1.00; refused: torch-int8, openvino-bf16")
    decision = json.loads(next(tmp_path.rglob("auto-*.json")).read_text())
    assert decision["candidates"] == json.loads(json.dumps(choice.candidates))


def test_auto_needs_the_full_gain_not_a_hair_less(fake_runtimes, crops, tmp_path):
    at_gain = 10.0 * (1 - runtimes.AUTO_MIN_GAIN)  # exactly the least gain that would count... is not enough
    fake_runtimes.update({TORCH: (10.0, None, None), ONNX_FP32: (at_gain, None, None)})
    choice = runtime_choice(_auto(Tiny(), crops, tmp_path, [TORCH, ONNX_FP32]))
    assert choice.runtime == TORCH and "refused" not in choice.reason
    assert choice.reason.endswith(f"ms per face torch 10.00, onnx-fp32 {at_gain:.2f}")
    assert choice.reason.startswith("fastest passing the accuracy check here: cosine 1.0000, top-1 100.0%")


def test_auto_compares_the_shipped_reference_with_torch_here(fake_runtimes, crops, tmp_path):
    fake_runtimes.update({TORCH: (4.0, None, None), ONNX_FP32: (4.0, None, None)})
    encoder = Tiny()
    here = runtimes.embed(encoder, crops.crops)
    moved = _reference(encoder, crops, here + torch.randn(here.shape, generator=torch.Generator().manual_seed(3)))
    messages: list[str] = []
    _auto(encoder, crops, tmp_path, [TORCH, ONNX_FP32], messages, moved)  # the same weights, other embeddings
    assert any("differs from the stored embeddings" in m for m in messages)
