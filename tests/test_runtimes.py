"""CPU runtimes of the encoder on the tiny random CLIP: agreement with torch, the export cache, `auto`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_app import runtimes
from fer_app.encoders.clip import ClipEncoder, load_clip_encoder
from fer_app.heads import Head
from fer_app.model import Classifier, load_model, save_model
from fer_app.runtimes import (
    AUTO,
    ONNX_FP32,
    ONNX_INT8,
    RUNTIMES,
    TORCH,
    AccuracyCheck,
    CheckCrops,
    CheckResult,
    ExportCache,
    RuntimeUnavailable,
    astronaut_crops,
    available_runtimes,
    check_crops,
    default_threads,
    fer_crops,
    load_runtime,
    runtime_name,
    select_runtime,
)

#: Least mean cosine to torch fp32 on the tiny random CLIP: fp32 runtimes are exact up to rounding;
#: int8 and bf16 are looser on a 32-wide random network than on the real one.
MIN_COSINE = {"torch-int8": 0.9, "onnx-int8": 0.9, "openvino-bf16": 0.95}


@pytest.fixture(scope="module")
def crops() -> CheckCrops:
    """A few real face crops: the astronaut's variants and, when the dev data is here, FER-2013 faces."""
    faces = astronaut_crops()[::4] + fer_crops(count=10)
    return CheckCrops(faces, "test crops")


@pytest.fixture(scope="module")
def tiny_encoder(tiny_clip_dir: Path) -> ClipEncoder:
    return load_clip_encoder(tiny_clip_dir)


@pytest.fixture()
def messages() -> list[str]:
    return []


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch: pytest.MonkeyPatch):
    """Choosing a torch runtime sets torch's process-wide thread count: restore it after each test.
    (Also: no runtime pinned by the environment.)"""
    monkeypatch.delenv(runtimes.ENV_RUNTIME, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _fresh_encoder(tiny_clip_dir: Path) -> ClipEncoder:
    return load_clip_encoder(tiny_clip_dir)


# ------------------------------------------------------------------------------ each runtime

#: Fingerprint of each runtime's encoder module, across the parametrised test below.
fingerprints: dict[str, str] = {}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_agrees_with_torch(runtime: str, tiny_encoder: ClipEncoder, crops: CheckCrops,
                                   tmp_path: Path) -> None:
    reason = runtimes.unavailable_reason(runtime)
    if reason:
        pytest.skip(reason)
    encoder = load_runtime(tiny_encoder, runtime, threads=1, cache_dir=tmp_path, progress=None)
    assert runtime_name(encoder) == runtime
    assert encoder.encoder_id == tiny_encoder.encoder_id and encoder.embed_dim == tiny_encoder.embed_dim
    assert encoder.config() == tiny_encoder.config()
    if isinstance(encoder, runtimes.RuntimeEncoder):  # module fingerprints (embedding caches) differ per runtime
        assert runtimes.tensors_digest(encoder) != runtimes.tensors_digest(tiny_encoder)
        fingerprints.setdefault(runtimes.tensors_digest(encoder), runtime)
        assert fingerprints[runtimes.tensors_digest(encoder)] == runtime
    result = AccuracyCheck(tiny_encoder, crops)(encoder)
    assert result.runtime == runtime and result.n == len(crops.crops)
    assert result.cosine_mean >= MIN_COSINE.get(runtime, 0.9999), result.summary()
    head = Head(tiny_encoder.embed_dim, 7)
    for batch in (1, 5):  # the batch axis is dynamic
        probs = Classifier(encoder, head, tta_flip=True).predict_proba(crops.crops[:batch])
        assert probs.shape == (batch, 7)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_onnx_encoder_reproduces_torch_closely(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    encoder = load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=None)
    pixels = tiny_encoder.preprocess(crops.crops[:6])
    with torch.inference_mode():
        np.testing.assert_allclose(encoder(pixels).numpy(), tiny_encoder(pixels).numpy(), rtol=1e-4, atol=1e-5)


def test_unknown_runtime_is_an_error(tiny_encoder: ClipEncoder) -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        select_runtime(tiny_encoder, "tensorrt")


# ------------------------------------------------------------------------------ the export cache

def test_export_cache_is_reused(tiny_encoder: ClipEncoder, tmp_path: Path, messages: list[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    load_runtime(tiny_encoder, ONNX_INT8, threads=1, cache_dir=tmp_path, progress=messages.append)
    assert any("exporting" in m for m in messages) and any("quantizing" in m for m in messages)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert [f.split("-onnx-")[1].split("-")[0] for f in folders] == ["fp32", "int8"]
    manifest = json.loads((tmp_path / folders[0] / "manifest.json").read_text())
    assert manifest["weights_sha256"] == runtimes.tensors_digest(tiny_encoder)
    assert manifest["exporter"] in ("dynamo", "torchscript") and manifest["opset"] >= 17

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(runtimes, "export_onnx", no_export)
    monkeypatch.setattr(runtimes, "quantize_onnx_dynamic", no_export)
    messages.clear()
    for runtime in (ONNX_FP32, ONNX_INT8):
        load_runtime(tiny_encoder, runtime, threads=1, cache_dir=tmp_path, progress=messages.append)
    assert messages == []
    assert sorted(p.name for p in tmp_path.iterdir()) == folders


# ------------------------------------------------------------------------- int8 that cannot saturate

def _matmul_onnx(path: Path, weights: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = weights.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_weight_range_of_a_file_without_int8_weights_is_zero(tmp_path: Path) -> None:
    _matmul_onnx(tmp_path / "plain.onnx", np.ones((4, 4), np.float32))
    assert runtimes.weight_range(tmp_path / "plain.onnx") == (0, 0)


def test_the_dynamic_int8_export_keeps_its_weights_within_the_safe_range(tiny_encoder: ClipEncoder,
                                                                        tmp_path: Path) -> None:
    """The onnx-int8 file of an encoder stores 7-bit weights: a u8 x s8 pair sum stays below int16's limit."""
    pytest.importorskip("onnxruntime")
    load_runtime(tiny_encoder, ONNX_INT8, threads=1, cache_dir=tmp_path, progress=None)
    (path,) = tmp_path.glob("*-onnx-int8-*/model.onnx")
    low, high = runtimes.weight_range(path)
    assert low < 0 < high, "no int8 weights found"
    assert -runtimes.SAFE_WEIGHT_MAX <= low and high <= runtimes.SAFE_WEIGHT_MAX
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["quantization"] == runtimes.QUANTIZATION and "reduce_range" in manifest["quantization"]


def test_dynamic_int8_gets_a_worst_case_matmul_right(tmp_path: Path) -> None:
    """Activations at the top of uint8 against weights at the top of int8, pairs of the same sign: with 8-bit
    weights, x86 kernels without VNNI (VPMADDUBSW) saturate their int16 pair sums (measured on an AVX2-only AMD
    EPYC Zen 3: off by 45% of the largest output). On VNNI CPUs this checks plain int8 accuracy."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = (rng.choice([-1.0, 1.0], (256, 64)) * rng.uniform(0.8, 1.0, (256, 64))).astype(np.float32)
    _matmul_onnx(tmp_path / "fp32.onnx", weights)
    runtimes.quantize_onnx_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    x = rng.uniform(0.9, 1.0, (8, 256)).astype(np.float32)
    x[:, 0] = -0.05  # the uint8 zero point at 1 or 2: every other activation near 255
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"x": x})[0], x @ weights
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()


def test_dynamic_int8_refuses_weights_beyond_the_safe_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    _matmul_onnx(tmp_path / "fp32.onnx", np.eye(8, dtype=np.float32))
    monkeypatch.setattr(runtimes, "weight_range", lambda path: (-90, 127))  # as 8-bit weights would span
    with pytest.raises(RuntimeUnavailable, match=f"beyond \\+-{runtimes.SAFE_WEIGHT_MAX} they can saturate"):
        runtimes.quantize_onnx_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


def test_cache_rebuilt_when_weights_change(tiny_clip_dir: Path, tmp_path: Path, messages: list[str]) -> None:
    pytest.importorskip("onnxruntime")
    encoder = _fresh_encoder(tiny_clip_dir)
    load_runtime(encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=None)
    with torch.no_grad():
        encoder.vision.visual_projection.weight.mul_(-1)
    changed = load_runtime(encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=messages.append)
    assert any("exporting" in m for m in messages)
    assert len(list(tmp_path.iterdir())) == 2  # one export per weights
    pixels = encoder.preprocess(astronaut_crops()[:2])
    with torch.inference_mode():
        np.testing.assert_allclose(changed(pixels).numpy(), encoder(pixels).numpy(), rtol=1e-4, atol=1e-5)


def test_stale_artifacts_of_the_same_weights_are_removed(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    stale, other = tmp_path / "clip-vit-b32-onnx-fp32-0ldversi0n", tmp_path / "clip-vit-b32-onnx-fp32-0therweights"
    for folder, weights in ((stale, runtimes.tensors_digest(tiny_encoder)), (other, "f" * 64)):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"weights_sha256": weights, "key": "old"}))
    load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=None)
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "manifest-garbage", "manifest-missing", "other-key"])
def test_corrupt_cache_is_rebuilt(damage: str, tiny_encoder: ClipEncoder, tmp_path: Path,
                                  messages: list[str]) -> None:
    pytest.importorskip("onnxruntime")
    load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=None)
    folder = ExportCache(tiny_encoder, tmp_path).folder(ONNX_FP32)
    model_file, manifest = folder / "model.onnx", folder / "manifest.json"
    data = bytearray(model_file.read_bytes())
    if damage == "flip-bytes":
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
        model_file.write_bytes(bytes(data))
    elif damage == "truncate":
        model_file.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "manifest-garbage":
        manifest.write_text("{not json")
    elif damage == "manifest-missing":
        manifest.unlink()
    else:
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), key="0" * 64)))
    assert runtimes.validate_artifact(folder, ExportCache(tiny_encoder, tmp_path).key(ONNX_FP32)) is not None
    encoder = load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=messages.append)
    assert any("unusable" in m for m in messages) and any("exporting" in m for m in messages)
    assert runtimes.validate_artifact(folder, ExportCache(tiny_encoder, tmp_path).key(ONNX_FP32)) is None
    assert AccuracyCheck(tiny_encoder, CheckCrops(astronaut_crops()[:4], "astronaut"))(encoder).cosine_mean > 0.9999


def test_file_that_hashes_right_but_does_not_load_is_rebuilt(tiny_encoder: ClipEncoder, tmp_path: Path,
                                                             messages: list[str]) -> None:
    pytest.importorskip("onnxruntime")
    load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=None)
    folder = ExportCache(tiny_encoder, tmp_path).folder(ONNX_FP32)
    garbage = b"not an onnx model"
    (folder / "model.onnx").write_bytes(garbage)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(size=len(garbage), file_sha256=runtimes.file_digest(folder / "model.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    load_runtime(tiny_encoder, ONNX_FP32, threads=1, cache_dir=tmp_path, progress=messages.append)
    assert any("discarding" in m for m in messages) and any("exporting" in m for m in messages)


# ------------------------------------------------------------------------------ auto

def test_auto_picks_a_runtime_that_passes(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path,
                                          messages: list[str]) -> None:
    encoder = select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                             progress=messages.append)
    chosen = runtime_name(encoder)
    assert chosen in available_runtimes()
    decision = json.loads(next(tmp_path.glob("auto-*.json")).read_text())
    assert decision["runtime"] == chosen and decision["candidates"][chosen]["check"]["passed"]
    assert any(f"chose {chosen}" in m for m in messages)


def test_auto_reuses_its_stored_choice(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path,
                                       messages: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first = runtime_name(select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                                        progress=None))

    def no_check(*args: object, **kwargs: object) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(runtimes, "AccuracyCheck", no_check)
    again = select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                           progress=messages.append)
    assert runtime_name(again) == first and runtimes.runtime_choice(again).how == "stored"
    assert "chosen on this machine" in runtimes.runtime_choice(again).reason and not messages
    torch.set_num_threads(2)  # a stored verdict sets torch's thread count as the check did (it runs the head)
    select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops, progress=None)
    assert torch.get_num_threads() == 1
    # Another thread count is another decision.
    monkeypatch.undo()
    select_runtime(tiny_encoder, AUTO, threads=2, cache_dir=tmp_path, check_crops=crops, progress=None)
    assert len(list(tmp_path.glob("auto-*.json"))) == 2


def test_auto_falls_back_to_torch_without_onnxruntime(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path,
                                                      messages: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert ONNX_FP32 not in available_runtimes() and ONNX_INT8 not in available_runtimes()
    with pytest.raises(RuntimeUnavailable, match="onnxruntime is not installed"):
        select_runtime(tiny_encoder, ONNX_FP32, cache_dir=tmp_path)
    encoder = select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                             candidates=(ONNX_FP32, ONNX_INT8), progress=messages.append)
    assert encoder is tiny_encoder and runtime_name(encoder) == TORCH
    assert not list(tmp_path.glob("*onnx*"))


def test_auto_refuses_a_runtime_failing_its_check(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path,
                                                  messages: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    real_call = AccuracyCheck.__call__

    def failing_onnx(self: AccuracyCheck, encoder: torch.nn.Module) -> CheckResult:
        result = real_call(self, encoder)
        if runtime_name(encoder).startswith("onnx"):
            return CheckResult(**dict(result.to_dict(), cosine_mean=0.5, passed=False))
        return result

    monkeypatch.setattr(AccuracyCheck, "__call__", failing_onnx)
    encoder = select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                             candidates=(ONNX_FP32, ONNX_INT8), progress=messages.append)
    assert runtime_name(encoder) == TORCH
    assert any("refusing onnx-fp32" in m for m in messages) and any("refusing onnx-int8" in m for m in messages)


def test_auto_skips_a_runtime_that_cannot_be_built(tiny_encoder: ClipEncoder, crops: CheckCrops, tmp_path: Path,
                                                   messages: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")

    def broken_export(encoder: torch.nn.Module, path: Path) -> dict:
        raise RuntimeUnavailable("ONNX export failed: simulated")

    monkeypatch.setattr(runtimes, "export_onnx", broken_export)
    encoder = select_runtime(tiny_encoder, AUTO, threads=1, cache_dir=tmp_path, check_crops=crops,
                             candidates=(ONNX_FP32,), progress=messages.append)
    assert runtime_name(encoder) == TORCH
    assert any("skipping onnx-fp32" in m and "simulated" in m for m in messages)


def test_env_pins_what_auto_means(tiny_encoder: ClipEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_selection(*args: object, **kwargs: object) -> None:
        raise AssertionError("auto selection ran")

    monkeypatch.setattr(runtimes, "AccuracyCheck", no_selection)
    monkeypatch.setenv(runtimes.ENV_RUNTIME, TORCH)
    assert select_runtime(tiny_encoder, AUTO, cache_dir=tmp_path) is tiny_encoder
    monkeypatch.setenv(runtimes.ENV_RUNTIME, "fastest")
    with pytest.raises(ValueError, match="unknown runtime 'fastest'"):
        select_runtime(tiny_encoder, AUTO, cache_dir=tmp_path)


def test_auto_leaves_a_compact_encoder_without_a_shipped_file_in_torch() -> None:
    from fer_app.encoders.compact import CompactEncoder

    encoder = CompactEncoder((8, 16), 1)
    chosen = select_runtime(encoder, AUTO)
    assert chosen is encoder and runtimes.runtime_choice(chosen).reason.startswith("torch fp32, the only candidate")


# ------------------------------------------------------------------------------ check crops, threads

def test_check_crops_are_real_faces(tmp_path: Path) -> None:
    astronaut = astronaut_crops()
    assert len(astronaut) == 60 and all(c.dtype == np.uint8 and c.ndim == 3 for c in astronaut)
    faces = np.random.default_rng(0).integers(0, 256, (50, 48, 48), dtype=np.uint8)
    np.savez(tmp_path / "fer.npz", val_x=faces, val_y=np.zeros(50, np.uint8))
    picked = fer_crops(tmp_path / "fer.npz", 5)
    assert len(picked) == 5 and np.array_equal(picked[0], faces[0]) and np.array_equal(picked[-1], faces[-1])
    assert fer_crops(tmp_path / "missing.npz", 5) == []
    both = check_crops(5, tmp_path / "fer.npz")
    assert len(both.crops) == 65 and "5 FER-2013 val faces" in both.source


def test_random_head_names_itself(tiny_encoder: ClipEncoder, crops: CheckCrops) -> None:
    check = AccuracyCheck(tiny_encoder, crops)
    result = check(tiny_encoder)
    assert "random linear head" in result.head and result.passed and result.cosine_min > 0.99999
    assert result.labels_seen > 1  # centred on the crops: the labels vary, so agreement means something
    assert "model's head" in AccuracyCheck(tiny_encoder, crops, head=Head(16, 7)).head_name


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtimes.ENV_THREADS, raising=False)
    for cores, expected in ((1, 1), (2, 2), (3, 3), (4, 3), (16, 15)):
        monkeypatch.setattr(runtimes, "physical_cores", lambda cores=cores: cores)
        assert default_threads() == expected
    monkeypatch.setenv(runtimes.ENV_THREADS, "5")
    assert default_threads() == 5
    monkeypatch.setenv(runtimes.ENV_THREADS, "zero")
    with pytest.raises(ValueError, match="FER_APP_THREADS"):
        default_threads()


def test_torch_threads_are_the_inference_threads_only_where_torch_runs_the_encoder(tiny_encoder: ClipEncoder,
                                                                                    tmp_path: Path) -> None:
    assert runtimes.torch_threads(tiny_encoder, 3) == 3
    assert runtimes.torch_threads(tiny_encoder, None) is None  # a torch model given no count: the caller's
    pytest.importorskip("onnxruntime")
    outside = load_runtime(tiny_encoder, ONNX_FP32, threads=2, cache_dir=tmp_path, progress=None)
    assert runtimes.torch_threads(outside, 2) == runtimes.torch_threads(outside, None) == 1
    runtimes.use_torch_threads(3)
    assert torch.get_num_threads() == 3


# ------------------------------------------------------------------------------ model loading

def test_load_model_runs_clip_in_the_chosen_runtime(models_dir: Path, tiny_clip_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    encoder = load_clip_encoder(tiny_clip_dir)
    torch.manual_seed(0)
    model = Classifier(encoder, Head(encoder.embed_dim, 7), name="clip-head", tta_flip=True).eval()
    save_model(model, "clip-head")
    faces = astronaut_crops()[:3]
    onnx = load_model("clip-head", clip_source=tiny_clip_dir, runtime=ONNX_FP32, threads=1)
    assert runtime_name(onnx.encoder) == ONNX_FP32
    np.testing.assert_allclose(onnx.predict_proba(faces), model.predict_proba(faces), atol=1e-4)
    assert (models_dir / ".onnx-cache").is_dir()
    plain = load_model("clip-head", clip_source=tiny_clip_dir, runtime="torch")
    assert runtime_name(plain.encoder) == TORCH
    auto = load_model("clip-head", clip_source=tiny_clip_dir, threads=1)
    assert runtime_name(auto.encoder) in available_runtimes()
    np.testing.assert_allclose(auto.predict_proba(faces), model.predict_proba(faces), atol=0.05)


# ------------------------------------------------------------------------------ diverging encoders

from fer_app.encoders.base import Encoder  # noqa: E402


class _Mapped(Encoder):
    """The tiny CLIP with its embeddings passed through `transform`: a runtime that drifts on purpose."""

    def __init__(self, base: ClipEncoder, transform, runtime: str) -> None:
        super().__init__()
        self.base, self.transform, self.runtime = base, transform, runtime
        self.encoder_id, self.embed_dim = base.encoder_id, base.embed_dim

    def preprocess(self, crops):
        return self.base.preprocess(crops)

    def config(self) -> dict:
        return self.base.config()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.transform(self.base(pixels))


@pytest.fixture(scope="module")
def diverging(tiny_encoder: ClipEncoder, crops: CheckCrops) -> dict[str, torch.nn.Module]:
    """A reference encoder and three drifting ones, with the check's head (the random one, as `auto` uses).

    The reference's embeddings share a large common part (as real CLIP's do on faces), so a runtime can
    keep the cosine above COSINE_MIN and still flip every top-1 label by mirroring the embeddings in the
    few directions the head reads; or keep every label and lose the cosine by adding a large part the
    head does not read.
    """
    base = runtimes.embed(tiny_encoder, crops.crops)
    scale = 40 * float(base.norm(dim=1).max())
    common = torch.zeros(base.shape[1])
    common[0] = scale
    reference = _Mapped(tiny_encoder, lambda e: e + common, TORCH)
    embeddings = runtimes.embed(reference, crops.crops)
    head = runtimes.random_head(embeddings)
    mean = embeddings.mean(dim=0)
    rows = torch.linalg.qr(head.weight.detach().T).Q  # an orthonormal basis of what the head reads
    read = rows @ rows.T
    unread = torch.linalg.svd(torch.eye(base.shape[1]) - read).U[:, 0]  # a direction the head ignores
    return {
        "reference": reference,
        "head": head,
        # every label flips (the head's logits are negated), cosine stays close to 1
        "flips_top1": _Mapped(tiny_encoder, lambda e: (e + common) - 2 * ((e + common - mean) @ read), "flip"),
        # every label stays, cosine drops to about 0.7
        "drifts": _Mapped(tiny_encoder, lambda e: e + common + scale * unread, "drift"),
        # both fine: a tiny shift along an unread direction
        "close": _Mapped(tiny_encoder, lambda e: e + common + 1e-3 * scale * unread, "close"),
    }


def test_accuracy_check_fails_a_runtime_that_flips_top1_with_a_high_cosine(diverging: dict, crops: CheckCrops,
                                                                           ) -> None:
    check = AccuracyCheck(diverging["reference"], crops, head=diverging["head"])
    assert check.labels.unique().numel() > 1  # the labels vary, so agreement means something
    result = check(diverging["flips_top1"])
    assert result.cosine_mean >= runtimes.COSINE_MIN  # the cosine alone would pass it...
    assert result.top1_agreement < runtimes.TOP1_MIN  # ...the labels do not
    assert not result.passed and "FAILS" in result.summary()


def test_accuracy_check_fails_a_runtime_with_a_low_cosine_and_the_same_top1(diverging: dict, crops: CheckCrops,
                                                                            ) -> None:
    check = AccuracyCheck(diverging["reference"], crops, head=diverging["head"])
    result = check(diverging["drifts"])
    assert result.top1_agreement == 1.0  # the labels alone would pass it...
    assert result.cosine_mean < runtimes.COSINE_MIN  # ...the cosine does not
    assert not result.passed and result.runtime == "drift"


def test_accuracy_check_passes_a_close_runtime_at_the_thresholds(diverging: dict, crops: CheckCrops,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    check = AccuracyCheck(diverging["reference"], crops, head=diverging["head"])
    result = check(diverging["close"])
    assert result.passed and result.top1_agreement == 1.0 and result.cosine_mean > 0.9999
    # the thresholds are inclusive: a runtime exactly at both passes, one just below either fails
    monkeypatch.setattr(runtimes, "COSINE_MIN", result.cosine_mean)
    assert check(diverging["close"]).passed
    monkeypatch.setattr(runtimes, "COSINE_MIN", result.cosine_mean + 1e-4)
    assert not check(diverging["close"]).passed


def test_auto_refuses_a_diverging_runtime_through_the_real_check(diverging: dict, crops: CheckCrops,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    """No patched result: `auto` loads onnx-fp32 as a runtime that flips every label, and refuses it."""
    reference = diverging["reference"]
    real_load = runtimes.load_runtime

    def load(encoder, runtime, **kwargs):
        if runtime == ONNX_FP32:
            return diverging["flips_top1"]
        return real_load(encoder, runtime, **kwargs)

    monkeypatch.setattr(runtimes, "load_runtime", load)
    monkeypatch.setattr(runtimes, "unavailable_reason", lambda runtime: None)
    chosen = select_runtime(reference, AUTO, cache_dir=tmp_path, check_crops=crops, head=diverging["head"],
                            candidates=[TORCH, ONNX_FP32], threads=1, progress=None)
    assert runtime_name(chosen) == TORCH
    decision = json.loads(next(tmp_path.rglob("auto-*.json")).read_text())
    assert decision["runtime"] == TORCH and decision["candidates"][ONNX_FP32]["check"]["passed"] is False


def test_cpu_text_names_the_flags_or_says_there_are_none() -> None:
    assert runtimes.cpu_text({"model": "EPYC", "cores": 2, "flags": ["avx2", "avx512f"]}) == (
        "EPYC, 2 physical cores (avx2, avx512f)")
    none = "none of AVX2, AVX-512, AMX"
    assert runtimes.cpu_text({"model": "Old", "cores": 4, "flags": []}) == f"Old, 4 physical cores ({none})"
    assert runtimes.cpu_text({}) == f"?, ? physical cores ({none})"
